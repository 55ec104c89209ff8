"""``ccmb dedup``: drop duplicates at switchable levels, keeping one sample per group.

Levels are a table (:data:`LEVELS`: name -> in-process function, Spark function, CLI flag, reason code,
metadata columns); they run in table order, each over the samples the earlier levels kept:

1. ``url``      equal normalised URL (:mod:`ccmb.corpus.urlnorm`)                 -> ``duplicate_url``
2. ``sha256``   equal SHA-256 of the downloaded image bytes (parquet ``sha256``)   -> ``duplicate_sha256``
3. ``phash``    pHash variants within Hamming distance ``phash_threshold``       -> ``duplicate_phash``
4. ``caption``  exact Jaccard of character n-grams >= ``caption_threshold``        -> ``duplicate_caption``

An unknown level raises. Registering a level is one :func:`register_level` call (one entry).

Near-duplicate candidates come from LSH banding, never from all pairs: pHash bits are cut into
``phash_threshold + 1`` bands (by pigeonhole two hashes within the threshold agree on a whole band, so no
true pair is missed); MinHash signatures into ``bands`` bands of rows. EVERY candidate is verified with the
exact measure (Hamming distance of the hashes; Jaccard of the two n-gram sets) before two samples are
grouped. Equal values (exact levels) group transitively; near-duplicate groups are stars
(:func:`ccmb.corpus.groups.star_reps`): a dropped sample is within the threshold of the sample it is marked
a duplicate of, never linked through an intermediate.

Rule: in every group the sample with the LOWEST KEY is kept (keys are the download order); every dropped
sample records in ``duplicate_of`` the kept sample it stands for (when a later level drops that sample,
the pointer follows to the finally kept one: one verified step per level). Only downloaded samples take
part (``not_downloaded`` otherwise); samples that earlier decision tables (``keep_tables``, e.g. the
filter's) drop keep that table's reason and take no part, so representatives are always samples those
tables keep; images that fail to decode for pHash are dropped as ``undecodable_image``.
"""
from __future__ import annotations

import importlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import groups, minhash
from .phash import VARIANT_COLUMNS, VARIANTS, compute_phashes, variant_distance
from .table import (ENGINES, check_source, REASON_NOT_DOWNLOADED, Decisions, Summary, check_unique_keys, list_parquets,
                    load_metadata, ReasonCodes, as_numpy_bool, prior_reason_codes, sha256_to_binary,
                    write_decisions)
from .urlnorm import normalize_urls

logger = logging.getLogger(__name__)

REASON_UNDECODABLE = "undecodable_image"


@dataclass
class LevelDrops:
    """Rows a level drops and, for each, the row it duplicates (-1 for non-duplicate drops)."""

    reason: str
    rows: np.ndarray
    reps: np.ndarray


#: (input_dir, metadata, eligible rows mask, config) -> the level's drops
LocalLevel = Callable[[Path, pa.Table, np.ndarray, "DedupConfig"], List[LevelDrops]]


@dataclass(frozen=True)
class DedupLevel:
    """One row of the level table.

    ``local`` runs in-process; ``spark`` is ``"module:function"`` (imported only with ``--engine spark``)
    with the signature ``(spark, input_dir, meta, eligible, config) -> List[LevelDrops]``; ``columns`` are
    the parquet columns the level reads; ``flag`` the CLI switch ``--NAME/--no-NAME``; ``exact`` says the
    relation is an equivalence (equal values), so build-shards may re-point duplicates within a group."""

    name: str
    reason: str
    local: LocalLevel
    spark: Optional[str]
    columns: Tuple[str, ...]
    help: str
    exact: bool = False
    default: bool = True

    @property
    def flag(self) -> str:
        return f"--{self.name}/--no-{self.name}"


#: The level table, in run order (filled below and by :func:`register_level`).
LEVELS: "OrderedDict[str, DedupLevel]" = OrderedDict()


def register_level(level: DedupLevel, before: Optional[str] = None) -> None:
    """Add a dedup level to the table (at the end, or before the level ``before``)."""
    if level.name in LEVELS:
        raise ValueError(f"dedup level {level.name!r} is already registered")
    items = list(LEVELS.items())
    at = len(items) if before is None else [k for k, _ in items].index(before)
    items.insert(at, (level.name, level))
    LEVELS.clear()
    LEVELS.update(items)


def get_level(name: str) -> DedupLevel:
    try:
        return LEVELS[name]
    except KeyError:
        raise ValueError(f"unknown dedup level {name!r}; choose from {tuple(LEVELS)}") from None


def duplicate_reasons(exact: Optional[bool] = None) -> List[str]:
    """Reason codes of the registered levels (only exact or only near ones when ``exact`` is given)."""
    return [lv.reason for lv in LEVELS.values() if exact is None or lv.exact == exact]


@dataclass
class DedupConfig:
    """Switches and thresholds of :func:`dedup_samples`."""

    levels: Tuple[str, ...] = ()
    phash_threshold: int = 4
    phash_bands: Optional[int] = None  # default phash_threshold + 1 (exact recall)
    caption_threshold: float = 0.8
    minhash: minhash.MinHashParams = field(default_factory=minhash.MinHashParams)
    text_field: str = "caption"
    workers: int = 1
    progress: bool = False
    params: Dict[str, Any] = field(default_factory=dict)  # settings of registered extra levels

    def __post_init__(self) -> None:
        if not self.levels:
            self.levels = tuple(name for name, lv in LEVELS.items() if lv.default)
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise ValueError(f"unknown dedup levels {bad}; choose from {tuple(LEVELS)}")
        self.levels = tuple(lv for lv in LEVELS if lv in self.levels)
        if not 0 <= self.phash_threshold < 64:
            raise ValueError("phash_threshold must be in [0, 63]")
        if not 0.0 < self.caption_threshold <= 1.0:
            raise ValueError("caption_threshold must be in (0, 1]")

    @property
    def bands(self) -> int:
        return self.phash_bands or (self.phash_threshold + 1)

    def columns(self) -> List[str]:
        out = ["key", "status"]
        for name in self.levels:
            out += [c for c in LEVELS[name].columns if c not in out]
        return out


def caption_texts(meta: pa.Table, text_field: str):
    text = meta.column(text_field)
    if text_field == "caption":
        text = pc.coalesce(text, meta.column("title"))
    return text


def drops_from_reps(reps: np.ndarray, reason: str) -> LevelDrops:
    rows = np.flatnonzero((reps >= 0) & (reps != np.arange(len(reps))))
    return LevelDrops(reason, rows, reps[rows])


def phash_bands_of_variants(uniq: np.ndarray, bands: int) -> Tuple[np.ndarray, np.ndarray]:
    """Band values of every hash variant of every node: (items x bands, node of each item)."""
    m, v = uniq.shape
    items = np.concatenate([groups.phash_bands(np.ascontiguousarray(uniq[:, j]), bands) for j in range(v)])
    return items, np.tile(np.arange(m, dtype=np.int64), v)


def phash_reps(hashes: np.ndarray, rows: np.ndarray, n: int, threshold: int, bands: int) -> np.ndarray:
    """Group rows by pHash variants within ``threshold`` bits (star groups, exact check of every candidate);
    per row its representative (-1 outside ``rows``). ``hashes`` is (len(rows), VARIANTS) or (len(rows),)."""
    hashes = hashes.view(np.uint64)
    if hashes.ndim == 1:
        hashes = np.repeat(hashes[:, None], VARIANTS, axis=1)
    uniq, node = groups.unique_nodes(hashes, rows, n)
    items, node_of_item = phash_bands_of_variants(uniq, bands)
    edges = groups.candidate_edges(items, lambda a, b: variant_distance(uniq[a], uniq[b]) <= threshold,
                                   node_of_item=node_of_item)
    return groups.star_reps(node, len(uniq), edges)


def caption_reps(texts: List[Optional[str]], rows: np.ndarray, n: int, params: minhash.MinHashParams,
                 threshold: float) -> np.ndarray:
    """Group rows whose normalised texts have exact n-gram Jaccard >= ``threshold`` (MinHash LSH proposes
    candidates; star groups); per row its representative (-1 outside ``rows`` or without text)."""
    valid = np.fromiter((bool(t) for t in texts), bool, len(texts))
    rows = rows[valid]
    if not len(rows):
        return np.full(n, -1, np.int64)
    enc = pa.array([t for t, ok in zip(texts, valid) if ok], pa.string()).dictionary_encode()
    uniq = enc.dictionary.to_pylist()  # distinct texts: equal texts are one node
    node = np.full(n, -1, np.int64)
    node[rows] = enc.indices.to_numpy(zero_copy_only=False)
    sig, _ = minhash.signatures(uniq, params)
    edges = groups.candidate_edges(minhash.band_values(sig, params),
                                   lambda a, b: minhash.jaccard(uniq, a, b, params.ngram) >= threshold)
    return groups.star_reps(node, len(uniq), edges)


def _url_level(input_dir: Path, meta: pa.Table, eligible: np.ndarray, config: DedupConfig) -> List[LevelDrops]:
    # URLs were normalised shard by shard as they were read (dedup_table)
    return [drops_from_reps(groups.first_occurrence_strings(meta.column("url"), eligible), "duplicate_url")]


def _sha256_level(input_dir: Path, meta: pa.Table, eligible: np.ndarray, config: DedupConfig
                  ) -> List[LevelDrops]:
    return [drops_from_reps(groups.first_occurrence_fixed(meta.column("sha256"), eligible), "duplicate_sha256")]


def eligible_by_tar(meta: pa.Table, eligible: np.ndarray) -> Dict[str, List[str]]:
    rows = np.flatnonzero(eligible)
    by_tar: Dict[str, List[str]] = {}
    for k, s in zip(meta.column("key").take(pa.array(rows)).to_pylist(),
                    meta.column("shard").take(pa.array(rows)).to_pylist()):
        by_tar.setdefault(s, []).append(k)
    return by_tar


def _phash_level(input_dir: Path, meta: pa.Table, eligible: np.ndarray, config: DedupConfig
                 ) -> List[LevelDrops]:
    n = meta.num_rows
    by_tar = eligible_by_tar(meta, eligible)
    tars = [input_dir / s for s in sorted(by_tar)]
    ph = compute_phashes(tars, by_tar, workers=config.workers, progress=config.progress)
    idx = pc.index_in(ph.column("key"), value_set=meta.column("key")).to_numpy(zero_copy_only=False)
    idx = idx.astype(np.int64)
    has = ph.column("phash").is_valid().to_numpy(zero_copy_only=False)
    bad = np.sort(idx[~has])
    hashes = np.zeros((n, VARIANTS), np.int64)
    good = ph.filter(pa.array(has))
    for j, col in enumerate(VARIANT_COLUMNS):
        hashes[idx[has], j] = good.column(col).to_numpy()
    present = np.zeros(n, bool)
    present[idx[has]] = True
    missing = np.setdiff1d(np.flatnonzero(eligible & ~present), bad)
    if len(missing):
        raise_missing(meta, missing)
    prow = np.flatnonzero(present)
    reps = phash_reps(hashes[prow], prow, n, config.phash_threshold, config.bands)
    return [LevelDrops(REASON_UNDECODABLE, bad, np.full(len(bad), -1, np.int64)),
            drops_from_reps(reps, "duplicate_phash")]


def _caption_level(input_dir: Path, meta: pa.Table, eligible: np.ndarray, config: DedupConfig
                   ) -> List[LevelDrops]:
    rows = np.flatnonzero(eligible)
    texts = minhash.normalize_texts(caption_texts(meta, config.text_field)).take(pa.array(rows))
    reps = caption_reps(texts.to_pylist(), rows, meta.num_rows, config.minhash, config.caption_threshold)
    return [drops_from_reps(reps, "duplicate_caption")]


for _level in (
    DedupLevel("url", "duplicate_url", _url_level, "ccmb.corpus.engine_spark:spark_url_level", ("url",),
               "Level 1: normalised URL.", exact=True),
    DedupLevel("sha256", "duplicate_sha256", _sha256_level, "ccmb.corpus.engine_spark:spark_sha256_level",
               ("sha256",), "Level 2: exact image bytes.", exact=True),
    DedupLevel("phash", "duplicate_phash", _phash_level, "ccmb.corpus.engine_spark:spark_phash_level", (),
               "Level 3: perceptual near-duplicates (reads the tars)."),
    DedupLevel("caption", "duplicate_caption", _caption_level, "ccmb.corpus.engine_spark:spark_caption_level",
               ("caption", "title", "content", "query"), "Level 4: caption near-duplicates (n-gram Jaccard)."),
):
    register_level(_level)


def spark_function(level: DedupLevel) -> Callable:
    if not level.spark:
        raise ValueError(f"dedup level {level.name!r} has no Spark implementation; use --engine local")
    module, _, name = level.spark.partition(":")
    return getattr(importlib.import_module(module), name)


def run_levels(input_dir: Path, meta: pa.Table, eligible: np.ndarray, config: DedupConfig, engine: str = "local",
               spark=None) -> List[LevelDrops]:
    """Run the enabled levels in table order, each over the rows the earlier ones kept."""
    eligible = eligible.copy()
    if engine == "spark":
        from .engine_spark import _session

        spark = _session(spark)
    out: List[LevelDrops] = []
    for name in config.levels:
        level = get_level(name)
        t0 = time.time()
        if engine == "spark":
            drops = spark_function(level)(spark, input_dir, meta, eligible, config)
        else:
            drops = level.local(input_dir, meta, eligible, config)
        for d in drops:
            eligible[d.rows] = False
        out.extend(drops)
        logger.info("dedup level %s: %s in %.1fs", name,
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
    for t in keep_tables:
        check_source(t, input_dir)  # a table of another download folder is refused, naming both
    columns = config.columns()
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
    drops = run_levels(input_dir, meta, eligible, config, engine=engine, spark=spark)
    return assemble(meta, reasons, drops)


def dedup_samples(input_dir: PathLike, output: PathLike, *, levels: Sequence[str] = (),
                  phash_threshold: int = 4, phash_bands: Optional[int] = None, caption_threshold: float = 0.8,
                  minhash_perm: int = 64, minhash_bands: int = 16, ngram: int = 3, text_field: str = "caption",
                  keep_tables: Sequence[PathLike] = (), workers: int = 1, engine: str = "local",
                  spark=None, progress: bool = False, params: Optional[Dict[str, Any]] = None,
                  memory_gb: Optional[float] = None, spill_buckets: Optional[int] = None) -> Summary:
    """Dedup a download folder; write the decision table to ``output`` and return the drop counts.

    In-process, memory is bounded by ``memory_gb`` (default :data:`ccmb.corpus.spill.DEFAULT_MEMORY_GB`;
    :mod:`ccmb.corpus.dedup_bounded`); ``spill_buckets`` overrides the number of on-disk buckets."""
    start = time.time()
    config = DedupConfig(levels=tuple(levels), phash_threshold=phash_threshold, phash_bands=phash_bands,
                         caption_threshold=caption_threshold,
                         minhash=minhash.MinHashParams(num_perm=minhash_perm, ngram=ngram, bands=minhash_bands),
                         text_field=text_field, workers=workers, progress=progress, params=dict(params or {}))
    if engine == "spark":  # every level on the executors, a partitioned table (ccmb.corpus.spark_dist)
        from .engine_spark import _session
        from .spark_dist import spark_dedup_to

        summary = spark_dedup_to(input_dir, config, output, _session(spark), keep_tables=keep_tables)
        logger.info("dedup: %s", "; ".join(summary.lines()))
        return summary
    if engine == "local":
        from .dedup_bounded import dedup_bounded
        from .spill import DEFAULT_MEMORY_GB

        for t in keep_tables:
            check_source(t, input_dir)  # a table of another download folder is refused, naming both
        summary = dedup_bounded(input_dir, config, output, DEFAULT_MEMORY_GB if memory_gb is None else memory_gb,
                                keep_tables=keep_tables, buckets=spill_buckets)
        if summary is not None:
            logger.info("dedup: %s", "; ".join(summary.lines()))
            return summary
    table = dedup_table(input_dir, config, keep_tables=keep_tables, engine=engine, spark=spark)
    write_decisions(output, table, kind="dedup", source=input_dir)
    summary = Summary.of(table, output, time.time() - start)
    logger.info("dedup: %s", "; ".join(summary.lines()))
    return summary

from . import semantic  # noqa: E402,F401  (registers the "semdedup" level: ccmb.corpus.semantic)
from ..types import PathLike
