"""Score a corpus with a benchmark model: image and text embeddings and their cosine per sample and text field.

Reads the ``NNNNN.tar`` files of a download folder or a shard set (the same reader as everywhere,
:func:`ccmb.shards.iter_tar_samples`), encodes the images and the texts (primary text, title, content, query)
through any :mod:`ccmb_bench.adapters` model, and writes per tar, into the embedding folder:

- ``NNNNN.image.npy`` / ``NNNNN.text.npy``: float16 ``[n, D]`` L2-normalised embeddings (image, primary text);
- ``NNNNN.parquet``: the shard's rows of the scores table (written last: its presence marks the shard done).

A rerun skips the shards already done (resumable per shard); the scores parquet is then the concatenation,
written atomically. A sample whose image does not decode is a row with null scores and its ``error``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ccmb import atomic
from ccmb import shards as fmt
from ccmb.corpus.tables.scores import SCORES_INFO, SCORES_SCHEMA
from ccmb.images import ImageDecodeError, open_image
from ccmb_bench.adapters import ModelAdapter

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
TEXT_FIELDS = fmt.TEXT_FIELDS  # title, content, query


class ScoringError(ValueError):
    """Bad input to ``ccmb score`` (the message names the folder or file)."""


@dataclass
class ScoreSummary:
    shards: int = 0
    shards_skipped: int = 0
    samples: int = 0
    errors: int = 0
    seconds: float = 0.0
    output: str = ""
    embeddings: str = ""
    per_shard: List[Dict[str, object]] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def lines(self) -> List[str]:
        return [f"{self.shards} shards ({self.shards_skipped} already done), {self.samples} samples scored "
                f"({self.errors} not scorable) in {self.seconds:.1f}s ({self.samples_per_s:.1f} samples/s)",
                f"wrote {self.output}; embeddings in {self.embeddings}"]


def list_tars(input_dir: PathLike) -> List[Path]:
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ScoringError(f"{input_dir}: not a folder (expected a download folder or a shard set of NNNNN.tar)")
    tars = fmt.list_shards(input_dir)
    if not tars:
        raise ScoringError(f"{input_dir}: no NNNNN.tar files (is it a download folder or a shard set?)")
    return tars


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def _encode_texts(adapter: ModelAdapter, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    parts = [adapter.encode_texts(list(texts[i:i + batch_size]))["embeds"] for i in range(0, len(texts), batch_size)]
    return _normalise(torch.cat(parts))


def input_size(adapter: ModelAdapter) -> Optional[int]:
    """The model's input side in pixels when the adapter tells it (for reduced-scale JPEG decoding)."""
    size = getattr(getattr(adapter, "transform", None), "image_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None


def decode(data: bytes, source: str, draft_size: Optional[int]):
    """RGB image; with ``draft_size`` a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose
    sides stay >= ``draft_size`` (PIL draft): the same crop, several times less decoding and resizing."""
    img = open_image(data, source=source, draft=("RGB", (draft_size, draft_size)) if draft_size else None)
    return img if img.mode == "RGB" else img.convert("RGB")


def score_shard(adapter: ModelAdapter, tar: Path, emb_dir: Path, batch_size: int = 64,
                draft: bool = True) -> Dict[str, object]:
    """Score one tar; writes its embeddings and its part parquet (last) into ``emb_dir``."""
    draft_size = input_size(adapter) if draft else None
    keys: List[str] = []
    errors: List[Optional[str]] = []
    primary: List[str] = []
    fields: Dict[str, List[str]] = {f: [] for f in TEXT_FIELDS}
    image_parts: List[torch.Tensor] = []
    pending: List = []
    pending_rows: List[int] = []
    dim = None

    def flush() -> None:
        if pending:
            image_parts.append(_normalise(adapter.encode_images(adapter.preprocess(pending))["embeds"]))
            pending.clear()

    for sample in fmt.iter_tar_samples(tar):
        keys.append(sample.key)
        primary.append(sample.text or "")
        for f in TEXT_FIELDS:
            v = sample.meta.get(f)
            fields[f].append(v if isinstance(v, str) else "")
        try:
            pending.append(decode(sample.image, f"{tar}:{sample.key}", draft_size))
            pending_rows.append(len(keys) - 1)
            errors.append(None)
        except ImageDecodeError as exc:
            errors.append(str(exc))
        if len(pending) >= batch_size:
            flush()
    flush()
    n = len(keys)
    ok_rows = np.asarray(pending_rows, np.int64)
    img_ok = torch.cat(image_parts) if image_parts else None
    if img_ok is not None:
        dim = img_ok.shape[1]
    # texts: every distinct non-empty text once (the primary text usually equals the title)
    named = (("score", primary), *((f"score_{f}", fields[f]) for f in TEXT_FIELDS))
    distinct = list(dict.fromkeys(t for _, values in named for t in values if t.strip()))
    index = {t: i for i, t in enumerate(distinct)}
    all_text = _encode_texts(adapter, distinct, batch_size) if distinct else None
    if dim is None and all_text is not None:
        dim = all_text.shape[1]
    text_emb: Dict[str, Optional[torch.Tensor]] = {}
    text_rows: Dict[str, np.ndarray] = {}
    for name, values in named:
        rows = np.asarray([i for i, t in enumerate(values) if t.strip()], np.int64)
        text_rows[name] = rows
        text_emb[name] = all_text[[index[values[i]] for i in rows]] if len(rows) else None
    dim = dim or 0
    image = np.zeros((n, dim), np.float32)
    if img_ok is not None:
        image[ok_rows] = img_ok.numpy()
    has_image = np.zeros(n, bool)
    has_image[ok_rows] = True
    cols: Dict[str, np.ndarray] = {}
    text_primary = np.zeros((n, dim), np.float32)
    for name, rows in text_rows.items():
        col = np.full(n, np.nan, np.float32)
        if len(rows):
            emb = text_emb[name].numpy()
            if name == "score":
                text_primary[rows] = emb
            col[rows] = (image[rows] * emb).sum(1)
        col[~has_image] = np.nan
        cols[name] = col
    stem = tar.stem
    for kind, arr in (("image", image), ("text", text_primary)):
        with atomic.atomic_open(emb_dir / f"{stem}.{kind}.npy", "wb") as fh:
            np.save(fh, arr.astype(np.float16), allow_pickle=False)
    arrays = [pa.array(keys, pa.string()), pa.array([tar.name] * n, pa.string()),
              pa.array(np.arange(n, dtype=np.int32))]
    arrays += [pa.array(cols[f], pa.float32(), mask=np.isnan(cols[f])) for f in SCORES_SCHEMA.names[3:7]]
    arrays.append(pa.array(errors, pa.string()))
    table = pa.Table.from_arrays(arrays, schema=SCORES_SCHEMA).replace_schema_metadata(
        {b"ccmb.dim": str(dim).encode()})
    with atomic.atomic_open(emb_dir / f"{stem}.parquet", "wb") as fh:
        pq.write_table(table, fh)
    return {"shard": tar.name, "samples": n, "errors": int(sum(e is not None for e in errors))}


def score_corpus(input_dir: PathLike, adapter: ModelAdapter, output: PathLike,
                 embeddings: Optional[PathLike] = None, batch_size: int = 64, progress: bool = False,
                 draft: bool = True) -> ScoreSummary:
    """Score every tar of ``input_dir`` (skipping the shards done by an earlier run) and write ``output``."""
    start = time.time()
    tars = list_tars(input_dir)
    output = Path(output)
    emb_dir = Path(embeddings) if embeddings else output.with_name(output.stem + "_embeddings")
    emb_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(emb_dir)
    marker = emb_dir / "model.json"
    desc = {"model": adapter.name, "fingerprint": adapter.fingerprint, "input": str(Path(input_dir).resolve())}
    if marker.exists():
        old = json.loads(marker.read_text(encoding="utf-8"))
        if old.get("fingerprint") != desc["fingerprint"] or old.get("model") != desc["model"]:
            raise ScoringError(f"{emb_dir}: embeddings of another model ({old.get('model')} {old.get('fingerprint')}); "
                               "choose another --embeddings folder or remove it")
    atomic.write_json(marker, desc)
    summary = ScoreSummary(output=str(output), embeddings=str(emb_dir))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tars), desc="score shards", unit="shard")
    scored = 0
    for tar in tars:
        part = emb_dir / f"{tar.stem}.parquet"
        if part.exists():
            summary.shards_skipped += 1
        else:
            t0 = time.time()
            row = score_shard(adapter, tar, emb_dir, batch_size=batch_size, draft=draft)
            row["seconds"] = round(time.time() - t0, 3)
            scored += int(row["samples"])
            summary.per_shard.append(row)
            log.info("scored %s: %s samples in %.1fs", tar.name, row["samples"], row["seconds"])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    parts = [pq.read_table(emb_dir / f"{t.stem}.parquet") for t in tars]
    dims = {int((p.schema.metadata or {}).get(b"ccmb.dim", b"0")) for p in parts} - {0}
    table = pa.concat_tables([p.replace_schema_metadata(None) for p in parts]).cast(SCORES_SCHEMA)
    try:
        rel = emb_dir.resolve().relative_to(output.resolve().parent)
    except ValueError:
        rel = emb_dir.resolve()
    info = dict(desc, embeddings=str(rel), dim=max(dims) if dims else 0, batch_size=batch_size, draft=draft)
    table = table.replace_schema_metadata({SCORES_INFO: json.dumps(info).encode()})
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_open(output, "wb") as fh:
        pq.write_table(table, fh)
    summary.shards = len(tars)
    summary.samples = table.num_rows
    summary.errors = table.num_rows - table.column("error").null_count
    summary.seconds = time.time() - start
    summary.samples_scored_now = scored  # type: ignore[attr-defined]
    return summary


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
