"""The scores parquet of ``ccmb score``: its format and reading it (thresholds and plots: :mod:`ccmb.corpus.steps.scores`).

The scores parquet has one row per scored sample: ``key``, ``shard``, ``row`` (its row in the shard's
float16 embedding files), ``score`` (cosine of the image and the sample's primary text), ``score_title``,
``score_content``, ``score_query`` (null where the field is empty) and ``error`` (why a sample could not be
scored; its scores are null). This module never imports a model: the corpus library reads only the parquet
and the ``.npy`` embedding shards.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import CurationError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

SCORE_FIELDS = ("score", "score_title", "score_content", "score_query")
#: Parquet metadata of a scores file: JSON {"model", "fingerprint", "embeddings", "dim", ...}.
SCORES_INFO = b"ccmb.scores"
SCORES_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("row", pa.int32()),
    *[(f, pa.float32()) for f in SCORE_FIELDS], ("error", pa.string())])


def read_scores(path: PathLike, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """The scores parquet (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: no such scores file (write it with `ccmb score`)")
    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=list(columns) if columns else None)
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable scores parquet: {exc}") from exc
    missing = [c for c in (columns or ("key", "score")) if c not in names]
    if missing:
        raise CurationError(f"{path}: not a scores file (missing columns {missing})")
    return table


def is_scores_file(path: PathLike) -> bool:
    """Whether ``path`` is a scores parquet ``ccmb score`` wrote (it carries :data:`SCORES_INFO`)."""
    try:
        return SCORES_INFO in (pq.read_schema(path).metadata or {})
    except (OSError, pa.ArrowException):
        return False


def scores_info(path: PathLike) -> Dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    try:
        return json.loads(meta.get(SCORES_INFO, b"{}").decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def embeddings_dir(scores_path: PathLike) -> Path:
    """The folder of a scores file's float16 embedding shards (recorded in its metadata, relative to it)."""
    emb_dir = Path(scores_info(scores_path).get("embeddings") or "")
    return emb_dir if emb_dir.is_absolute() else Path(scores_path).parent / emb_dir


def read_vectors(emb_dir: PathLike, shard: str, rows: np.ndarray, kind: str = "image") -> np.ndarray:
    """float32 L2-normalised embeddings of ``rows`` of one score shard (``NNNNN.{kind}.npy``)."""
    f = Path(emb_dir) / f"{Path(shard).stem}.{kind}.npy"
    if not f.is_file():
        raise CurationError(f"{f}: embedding shard missing (rerun `ccmb score`, it resumes)")
    emb = np.load(f, allow_pickle=False, mmap_mode="r")[np.asarray(rows, np.int64)].astype(np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def read_embeddings(scores_path: PathLike, kind: str = "image") -> tuple:
    """(keys, float32 [n, D] L2-normalised embeddings) of the scored samples without an error, in the
    scores file's order, from the float16 ``NNNNN.{kind}.npy`` shards next to it (small corpora: tests, perf)."""
    table = read_scores(scores_path, ["key", "shard", "row", "error"])
    table = table.filter(pc.is_null(table.column("error")))
    keys = table.column("key")
    if not table.num_rows:
        return keys, np.zeros((0, int(scores_info(scores_path).get("dim") or 0)), np.float32)
    emb_dir = embeddings_dir(scores_path)
    shards = np.asarray(table.column("shard").to_pylist(), object)
    rows = table.column("row").to_numpy(zero_copy_only=False)
    parts = []
    for name in dict.fromkeys(shards.tolist()):
        sel = np.flatnonzero(shards == name)
        parts.append((sel, read_vectors(emb_dir, name, rows[sel], kind)))
    dim = parts[0][1].shape[1]
    emb = np.zeros((len(shards), dim), np.float32)
    for sel, vec in parts:
        emb[sel] = vec
    return keys, emb
