"""``ccmb dedup``: drop duplicates at four switchable levels, keeping one sample per group.

Levels run in this order, each over the samples the earlier levels kept:

1. ``url``      equal normalised URL (:mod:`ccmb.corpus.urlnorm`)                 -> ``duplicate_url``
2. ``sha256``   equal SHA-256 of the downloaded image bytes (parquet ``sha256``)   -> ``duplicate_sha256``
3. ``phash``    64-bit pHash within Hamming distance ``phash_threshold``           -> ``duplicate_phash``
4. ``caption``  MinHash-estimated Jaccard of character n-grams >= threshold        -> ``duplicate_caption``

Near-duplicate candidates come from LSH banding, never from all pairs: pHash bits are cut into
``phash_threshold + 1`` bands (by pigeonhole two hashes within the threshold agree on a whole band, so no
true pair is missed); MinHash signatures into ``bands`` bands of rows. Candidates are verified exactly
(Hamming distance / signature agreement) and groups are the connected components of verified pairs.

Rule: in every group the sample with the LOWEST KEY is kept (keys are the download order); every dropped
sample records in ``duplicate_of`` the kept sample it stands for (chains across levels are followed to the
finally kept one). Only downloaded samples take part (``not_downloaded`` otherwise); samples that earlier
decision tables (``keep_tables``, e.g. the filter's) drop keep that table's reason and take no part;
images that fail to decode for pHash are dropped as ``undecodable_image``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import groups, minhash
from .phash import compute_phashes, hamming
from .table import (ENGINES, REASON_NOT_DOWNLOADED, Decisions, Summary, check_unique_keys, list_parquets,
                    load_metadata, ReasonCodes, as_numpy_bool, prior_reason_codes, sha256_to_binary,
                    write_decisions)
from .urlnorm import normalize_urls

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
LEVELS = ("url", "sha256", "phash", "caption")
REASON_UNDECODABLE = "undecodable_image"
DEDUP_COLUMNS = ["key", "status", "url", "sha256", "caption", "title", "content", "query"]


@dataclass
class DedupConfig:
    """Switches and thresholds of :func:`dedup_samples`."""

    levels: Tuple[str, ...] = LEVELS
    phash_threshold: int = 4
    phash_bands: Optional[int] = None  # default phash_threshold + 1 (exact recall)
    caption_threshold: float = 0.8
    minhash: minhash.MinHashParams = field(default_factory=minhash.MinHashParams)
    text_field: str = "caption"
    workers: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise ValueError(f"unknown dedup levels {bad}; choose from {LEVELS}")
        self.levels = tuple(lv for lv in LEVELS if lv in self.levels)
        if not 0 <= self.phash_threshold < 64:
            raise ValueError("phash_threshold must be in [0, 63]")
        if not 0.0 < self.caption_threshold <= 1.0:
            raise ValueError("caption_threshold must be in (0, 1]")

    @property
    def bands(self) -> int:
        return self.phash_bands or (self.phash_threshold + 1)


@dataclass
class LevelDrops:
    """Rows a level drops and, for each, the row it duplicates (-1 for non-duplicate drops)."""

    reason: str
    rows: np.ndarray
    reps: np.ndarray


def caption_texts(meta: pa.Table, text_field: str):
    text = meta.column(text_field)
    if text_field == "caption":
        text = pc.coalesce(text, meta.column("title"))
    return text


def drops_from_reps(reps: np.ndarray, reason: str) -> LevelDrops:
    rows = np.flatnonzero((reps >= 0) & (reps != np.arange(len(reps))))
    return LevelDrops(reason, rows, reps[rows])


def phash_reps(hashes: np.ndarray, rows: np.ndarray, n: int, threshold: int, bands: int) -> np.ndarray:
    """Group rows by pHash within ``threshold`` bits; per row its group's lowest row (-1 outside ``rows``)."""
    uniq, node = groups.unique_nodes(hashes.view(np.uint64), rows, n)
    edges = groups.candidate_edges(groups.phash_bands(uniq, bands),
                                   lambda a, b: hamming(uniq[a], uniq[b]) <= threshold)
    return groups.component_reps(node, len(uniq), edges)


def caption_reps(texts: List[Optional[str]], rows: np.ndarray, n: int, params: minhash.MinHashParams,
                 threshold: float) -> np.ndarray:
    """Group rows by MinHash similarity >= ``threshold``; per row its group's lowest row."""
    sig, valid = minhash.signatures(texts, params)
    rows = rows[valid]
    if not len(rows):
        return np.full(n, -1, np.int64)
    uniq, node = groups.unique_nodes(sig[valid], rows, n)
    edges = groups.candidate_edges(minhash.band_values(uniq, params),
                                   lambda a, b: minhash.similarity(uniq, a, b) >= threshold)
    return groups.component_reps(node, len(uniq), edges)


def _local_levels(input_dir: Path, meta: pa.Table, eligible: np.ndarray, config: DedupConfig) -> List[LevelDrops]:
    n = meta.num_rows
    out: List[LevelDrops] = []
    for level in config.levels:
        t0 = time.time()
        if level == "url":
            # URLs were normalised shard by shard as they were read (dedup_table)
            reps = groups.first_occurrence_strings(meta.column("url"), eligible)
            drops = [drops_from_reps(reps, "duplicate_url")]
        elif level == "sha256":
            reps = groups.first_occurrence_fixed(meta.column("sha256"), eligible)
            drops = [drops_from_reps(reps, "duplicate_sha256")]
        elif level == "phash":
            rows = np.flatnonzero(eligible)
            keys = meta.column("key").take(pa.array(rows)).to_pylist()
            shards = meta.column("shard").take(pa.array(rows)).to_pylist()
            by_tar: Dict[str, List[str]] = {}
            for k, s in zip(keys, shards):
                by_tar.setdefault(s, []).append(k)
            tars = [input_dir / s for s in sorted(by_tar)]
            ph = compute_phashes(tars, by_tar, workers=config.workers, progress=config.progress)
            idx = pc.index_in(ph.column("key"), value_set=meta.column("key")).to_numpy(zero_copy_only=False)
            idx = idx.astype(np.int64)
            has = ph.column("phash").is_valid().to_numpy(zero_copy_only=False)
            bad = np.sort(idx[~has])
            hashes = np.zeros(n, np.int64)
            hashes[idx[has]] = ph.column("phash").filter(pa.array(has)).to_numpy()
            present = np.zeros(n, bool)
            present[idx[has]] = True
            missing = np.setdiff1d(np.flatnonzero(eligible & ~present), bad)
            if len(missing):
                raise_missing(meta, missing)
            prow = np.flatnonzero(present)
            reps = phash_reps(hashes[prow], prow, n, config.phash_threshold, config.bands)
            drops = [LevelDrops(REASON_UNDECODABLE, bad, np.full(len(bad), -1, np.int64)),
                     drops_from_reps(reps, "duplicate_phash")]
        else:  # caption
            rows = np.flatnonzero(eligible)
            texts = minhash.normalize_texts(caption_texts(meta, config.text_field)).take(pa.array(rows))
            reps = caption_reps(texts.to_pylist(), rows, n, config.minhash, config.caption_threshold)
            drops = [drops_from_reps(reps, "duplicate_caption")]
        for d in drops:
            eligible[d.rows] = False
        out.extend(drops)
        logger.info("dedup level %s: %s in %.1fs", level,
                    ", ".join(f"{d.reason} {len(d.rows)}" for d in drops), time.time() - t0)
    return out


def raise_missing(meta: pa.Table, rows: np.ndarray) -> None:
    from .table import CurationError

    r = int(rows[0])
    raise CurationError(f"{meta.column('shard')[r].as_py()}: sample {meta.column('key')[r].as_py()} is in the "
                        f"parquet as downloaded but not in the tar ({len(rows)} such samples)")


def assemble(meta: pa.Table, reasons: ReasonCodes, drops: Sequence[LevelDrops]) -> pa.Table:
    """The decision table from base reasons (not downloaded / earlier tables) and the level drops."""
    n = meta.num_rows
    dup_of = np.full(n, -1, np.int64)
    for d in drops:
        reasons.set(d.rows, d.reason)
        dup_of[d.rows] = d.reps
    dup_of = groups.resolve_chains(dup_of)
    keys = meta.column("key")
    dup_keys = keys.take(pa.array(dup_of, mask=dup_of < 0)) if n else pa.array([], pa.string())
    return Decisions(keys, meta.column("shard"), reasons.array(), dup_keys).table()


def dedup_table(input_dir: PathLike, config: DedupConfig, keep_tables: Sequence[PathLike] = (),
                engine: str = "local", spark=None) -> pa.Table:
    """The decision table of dedup over a download folder (no file written)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    input_dir = Path(input_dir)
    list_parquets(input_dir)
    columns = ["key", "status"] + (["url"] if "url" in config.levels else []) \
        + (["sha256"] if "sha256" in config.levels else []) \
        + (["caption", "title", "content", "query"] if "caption" in config.levels else [])
    def pack(table: pa.Table, path: Path) -> pa.Table:
        """Per shard as read: status -> bool, shard name -> dictionary, URL -> normal form,
        sha256 -> 32 bytes (less memory, no raw columns kept)."""
        ok = pc.equal(pc.fill_null(table.column("status"), ""), "success")
        table = table.drop_columns(["status"]).append_column("ok", ok)
        table = table.set_column(table.column_names.index("shard"), "shard",
                                 pc.dictionary_encode(table.column("shard")))
        if "url" in table.column_names and engine == "local":  # Spark normalises on its side
            table = table.set_column(table.column_names.index("url"), "url", normalize_urls(table.column("url")))
        if "sha256" in table.column_names:
            i = table.column_names.index("sha256")
            table = table.set_column(i, "sha256", sha256_to_binary(table.column("sha256"), str(path)))
        return table

    meta = load_metadata(input_dir, columns, transform=pack)  # only what the enabled levels need
    check_unique_keys(meta.column("key"), str(input_dir))
    reasons = ReasonCodes(meta.num_rows)
    reasons.fill(~as_numpy_bool(meta.column("ok")), REASON_NOT_DOWNLOADED)
    if keep_tables:
        prior_reason_codes(meta.column("key"), keep_tables, reasons)
    eligible = reasons.kept & meta.column("key").is_valid().to_numpy(zero_copy_only=False)
    if engine == "spark":
        from .engine_spark import spark_dedup_levels

        drops = spark_dedup_levels(input_dir, meta, eligible, config, spark=spark)
    else:
        drops = _local_levels(input_dir, meta, eligible.copy(), config)
    return assemble(meta, reasons, drops)


def dedup_samples(input_dir: PathLike, output: PathLike, *, levels: Sequence[str] = LEVELS,
                  phash_threshold: int = 4, phash_bands: Optional[int] = None, caption_threshold: float = 0.8,
                  minhash_perm: int = 64, minhash_bands: int = 16, ngram: int = 3, text_field: str = "caption",
                  keep_tables: Sequence[PathLike] = (), workers: int = 1, engine: str = "local",
                  spark=None, progress: bool = False) -> Summary:
    """Dedup a download folder; write the decision table to ``output`` and return the drop counts."""
    start = time.time()
    config = DedupConfig(levels=tuple(levels), phash_threshold=phash_threshold, phash_bands=phash_bands,
                         caption_threshold=caption_threshold,
                         minhash=minhash.MinHashParams(num_perm=minhash_perm, ngram=ngram, bands=minhash_bands),
                         text_field=text_field, workers=workers, progress=progress)
    table = dedup_table(input_dir, config, keep_tables=keep_tables, engine=engine, spark=spark)
    write_decisions(output, table)
    summary = Summary.of(table, output, time.time() - start)
    logger.info("dedup: %s", "; ".join(summary.lines()))
    return summary
