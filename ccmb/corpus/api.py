"""The curation API: every command is one function here, the only module that puts steps and engines together.

=====================  ==========================================================================
``ccmb filter``        :func:`filter_samples` (``filter_table`` returns the table, nothing written)
``ccmb dedup``         :func:`dedup_samples` (``dedup_table``)
``ccmb decontaminate`` :func:`decontaminate` (``decontamination_table``)
``ccmb build-shards``  :func:`build_shards`
``--scores``           :func:`apply_scores`
=====================  ==========================================================================

``engine="local"`` runs in this process within ``memory_gb`` (:class:`~ccmb.corpus.engines.local.LocalEngine`),
``engine="spark"`` on a Spark session (:class:`~ccmb.corpus.engines.spark.SparkEngine`); the steps
(:mod:`ccmb.corpus.steps`) are the same functions on both, so the tables are the same.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from .. import outdir, storage
from .. import shards as fmt
from ..blocklist import Blocklist, BlocklistError
from ..types import PathLike
from .engines.local import LocalEngine
from .engines.spark import SparkEngine, session
from .primitives.spill import DEFAULT_MEMORY_GB
from .steps import build as build_step
from .steps import combine as combine_step
from .steps import decontaminate as decon_step
from .steps import dedup as dedup_step
from .steps import filter as filter_step
from .steps import neardup
from .steps import scores as score_step
from .primitives.phash import VARIANTS
from .steps.levels import DedupConfig
from .steps.levels import caption as caption_level
from .steps.levels import phash as phash_level
from .tables.decisions import check_source, open_table, read_marker_and_fingerprint
from .tables.folder import DownloadFolder
from .tables.dataflow import Fn
from .tables.schema import CurationError
from .tables.writer import Summary, check_output, table_lock

logger = logging.getLogger(__name__)

ENGINES = ("local", "spark")


def make_engine(kind: str, folder: DownloadFolder, near: PathLike, *, spark=None,
                memory_gb: Optional[float] = None, workers: int = 1, progress: bool = False,
                buckets: Optional[int] = None):
    """The engine a command runs on: in-process within ``memory_gb`` (spill next to ``near``) or Spark."""
    if kind == "local":
        return LocalEngine(near, DEFAULT_MEMORY_GB if memory_gb is None else memory_gb, rows=folder.rows(),
                           buckets=buckets, workers=workers, progress=progress)
    if kind == "spark":
        return SparkEngine(spark if spark is not None else session(), input_bytes=folder.bytes(), progress=progress)
    raise ValueError(f"engine must be one of {ENGINES}, got {kind!r}")


def spark_session(master: Optional[str] = None, conf: Optional[Dict[str, Any]] = None):
    """The Spark session of ``--engine spark`` (``--spark-master``, ``--spark-conf``)."""
    return session(master, conf)


def _collect_sorted(engine, ds) -> pa.Table:
    table = engine.collect(ds)
    return table.sort_by([("key", "ascending")]) if table.num_rows else table


# ----------------------------------------------------------------------------------------------------- filter

def filter_table(input_dir: PathLike, config: filter_step.FilterConfig, engine: str = "local", spark=None) -> pa.Table:
    """The filter's decision table over a download folder, in memory (small folders; nothing written)."""
    folder = DownloadFolder(input_dir)
    with tempfile.TemporaryDirectory(prefix="ccmb-filter-") as tmp, \
            make_engine(engine, folder, Path(tmp) / "x", spark=spark) as eng:
        return _collect_sorted(eng, filter_step.filter_dataset(eng, folder, config))


def filter_samples(input_dir: PathLike, output: PathLike, *, min_side: int = 200, max_ratio: float = 3.0,
                   min_text_len: int = 2, max_text_len: int = 512, min_chinese_share: float = 0.3,
                   blocklist=None, text_field: str = "caption", engine: str = "local", spark=None,
                   memory_gb: Optional[float] = None, spill_buckets: Optional[int] = None, parts: int = 0,
                   progress: bool = False) -> Summary:
    """Filter a download folder; write the decision table to ``output`` and return the drop counts.

    ``blocklist`` is a file (one term per line) or a list of terms."""
    start = time.time()
    folder = DownloadFolder(input_dir)
    config = filter_step.make_config(min_side=min_side, max_ratio=max_ratio, min_text_len=min_text_len,
                                     max_text_len=max_text_len, min_chinese_share=min_chinese_share,
                                     blocklist=blocklist, text_field=text_field)
    check_output(output, [input_dir])
    logger.info("filter %s with %s", input_dir, config)
    with table_lock(output), make_engine(engine, folder, output, spark=spark, memory_gb=memory_gb,
                                         buckets=spill_buckets, progress=progress) as eng:
        summary = eng.write_table(filter_step.filter_dataset(eng, folder, config), output, kind="filter",
                                  source=folder.source(), parts=parts, desc="filter")
    summary.seconds = time.time() - start
    logger.info("filter: %s", "; ".join(summary.lines()))
    return summary


# ----------------------------------------------------------------------------------------------------- dedup

def _keep_tables(folder: DownloadFolder, keep_tables: Sequence[PathLike]):
    """The ``--keep`` tables opened and checked (readable, decision columns, made from this folder)."""
    tables = [open_table(t) for t in keep_tables]
    for t in tables:
        check_source(t, folder)  # a table of another download folder is refused, naming both
    return tables


def dedup_config(levels: Sequence[str] = (), params: Optional[Dict[str, Any]] = None, workers: int = 1,
                 progress: bool = False, **level_params: Any) -> DedupConfig:
    """A :class:`~ccmb.corpus.steps.levels.DedupConfig` from level names and parameters (the levels' option
    names, e.g. ``phash_threshold``, ``caption_threshold``, ``semantic_scores``)."""
    merged = {**(params or {}), **{k: v for k, v in level_params.items() if v is not None}}
    return DedupConfig(levels=tuple(levels), params=merged, workers=workers, progress=progress)


def dedup_table(input_dir: PathLike, config: DedupConfig, keep_tables: Sequence[PathLike] = (),
                engine: str = "local", spark=None, memory_gb: Optional[float] = None,
                buckets: Optional[int] = None) -> pa.Table:
    """The dedup decision table over a download folder, in memory (small folders; nothing written)."""
    folder = DownloadFolder(input_dir)
    tables = _keep_tables(folder, keep_tables)
    with tempfile.TemporaryDirectory(prefix="ccmb-dedup-") as tmp, \
            make_engine(engine, folder, Path(tmp) / "x", spark=spark, memory_gb=memory_gb, buckets=buckets,
                        workers=config.workers) as eng:
        return _collect_sorted(eng, dedup_step.dedup_dataset(eng, folder, config, tables))


def dedup_samples(input_dir: PathLike, output: PathLike, *, levels: Sequence[str] = (),
                  keep_tables: Sequence[PathLike] = (), workers: int = 1, engine: str = "local", spark=None,
                  progress: bool = False, params: Optional[Dict[str, Any]] = None, memory_gb: Optional[float] = None,
                  spill_buckets: Optional[int] = None, parts: int = 0, **level_params: Any) -> Summary:
    """Dedup a download folder; write the decision table to ``output`` and return the drop counts.

    In-process, memory follows ``memory_gb`` (default :data:`~ccmb.corpus.primitives.spill.DEFAULT_MEMORY_GB`),
    not the row count; ``spill_buckets`` overrides the number of on-disk buckets. Level parameters by name
    (``phash_threshold=6``) or in ``params``."""
    start = time.time()
    folder = DownloadFolder(input_dir)
    config = dedup_config(levels, params, workers, progress, **level_params)
    tables = _keep_tables(folder, keep_tables)
    check_output(output, [input_dir])
    logger.info("dedup %s: levels %s, %s", input_dir, ", ".join(config.levels), config.params)
    with table_lock(output), make_engine(engine, folder, output, spark=spark, memory_gb=memory_gb, workers=workers,
                                         progress=progress, buckets=spill_buckets) as eng:
        summary = eng.write_table(dedup_step.dedup_dataset(eng, folder, config, tables), output, kind="dedup",
                                  info=json.dumps(config.describe(), ensure_ascii=False), source=folder.source(),
                                  parts=parts, desc="dedup")
    summary.seconds = time.time() - start
    logger.info("dedup: %s", "; ".join(summary.lines()))
    return summary


def _near_reps(members: pa.Table, value_type, items, verify, n: int) -> np.ndarray:
    """Run a near-duplicate level's pipeline on an in-memory table of members (key = zero-padded row)."""
    with tempfile.TemporaryDirectory(prefix="ccmb-groups-") as tmp, \
            LocalEngine(Path(tmp) / "x", rows=members.num_rows) as eng:
        drops = eng.collect(neardup.near_duplicate_drops(eng, eng.from_arrow(members), value_type, items, verify,
                                                         "duplicate"))
    reps = np.full(n, -1, np.int64)
    ids = members.column("_id").to_numpy()
    reps[ids] = ids
    for key, dup in zip(drops.column("key").to_pylist(), drops.column("duplicate_of").to_pylist()):
        reps[int(key)] = int(dup)
    return reps


def _member_table(rows: np.ndarray, values: pa.Array) -> pa.Table:
    rows = np.asarray(rows, np.int64)
    keys = pa.array([f"{r:020d}" for r in rows.tolist()], pa.string())
    return pa.table({"key": keys, "_id": rows, "v": values})


def caption_reps(texts, rows: np.ndarray, n: int, params, threshold: float) -> np.ndarray:
    """In memory (tests, perf): per row of ``n`` its representative under the caption level's rule (exact
    n-gram Jaccard >= ``threshold`` of the normalised ``texts`` of ``rows``, MinHash candidates, star
    groups); -1 outside ``rows`` or without text. Runs the level's own pipeline."""
    valid = np.fromiter((bool(t) for t in texts), bool, len(texts))
    members = _member_table(np.asarray(rows)[valid], pa.array([t for t, ok in zip(texts, valid) if ok], pa.string()))
    return _near_reps(members, pa.string(), Fn(partial(caption_level.band_items, params), neardup.ITEMS),
                      partial(caption_level.exact_check, params.ngram, float(threshold)), n)


def phash_reps(hashes: np.ndarray, rows: np.ndarray, n: int, threshold: int, bands: int) -> np.ndarray:
    """In memory (tests, perf): per row its representative under the pHash level's distance rule alone
    (variant distance <= ``threshold``; ``hashes`` (len(rows), VARIANTS) or (len(rows),) for a single hash).
    Without images there is no second image check: the level as wired runs on a download folder."""
    hashes = np.asarray(hashes).view(np.int64)
    if hashes.ndim == 1:
        hashes = np.repeat(hashes[:, None], VARIANTS, axis=1)
    members = _member_table(rows, phash_level.packed(hashes))
    return _near_reps(members, pa.binary(), Fn(partial(phash_level.band_items, bands), neardup.ITEMS),
                      partial(phash_level.exact_check, int(threshold)), n)


# ----------------------------------------------------------------------------------------------------- decontaminate

def decontamination_table(input_dir: PathLike, index, config: Optional[decon_step.DecontaminationConfig] = None,
                          engine: str = "local", spark=None):
    """The decontamination decision table and report over a download folder, in memory (nothing written)."""
    config = config or decon_step.DecontaminationConfig()
    folder = DownloadFolder(input_dir)
    with tempfile.TemporaryDirectory(prefix="ccmb-decon-") as tmp, \
            make_engine(engine, folder, Path(tmp) / "x", spark=spark, workers=config.workers) as eng:
        ds, report = decon_step.decontamination_dataset(eng, folder, index, config)
        return decon_step.DecontaminationResult(_collect_sorted(eng, ds), report)


def decontaminate(input_dir: PathLike, against: Sequence[str], root: PathLike, output: PathLike, *,
                  split: Optional[str] = None, report_path: Optional[PathLike] = None,
                  config: Optional[decon_step.DecontaminationConfig] = None, engine: str = "local", spark=None,
                  memory_gb: Optional[float] = None, spill_buckets: Optional[int] = None, parts: int = 0):
    """Index ``against`` under ``root``, scan ``input_dir``, write the decision table (and the report);
    returns (summary, report)."""
    start = time.time()
    config = config or decon_step.DecontaminationConfig()
    if not against:
        raise CurationError("decontaminate: name at least one evaluation set (--against)")
    folder = DownloadFolder(input_dir)
    check_output(output, [input_dir])
    if report_path:
        outdir.refuse_inside(report_path, [input_dir])
    index = decon_step.build_index(against, root, split=split, progress=config.progress)
    with table_lock(output), make_engine(engine, folder, output, spark=spark, memory_gb=memory_gb,
                                         buckets=spill_buckets, workers=config.workers,
                                         progress=config.progress) as eng:
        ds, report = decon_step.decontamination_dataset(eng, folder, index, config)
        info = json.dumps({"against": report["against"], "report": report}, ensure_ascii=False)
        summary = eng.write_table(ds, output, kind="decontaminate", info=info, source=folder.source(), parts=parts,
                                  desc="decontaminate")
    if report_path:
        storage.write_json(report_path, report)
    summary.seconds = time.time() - start
    logger.info("decontaminate: %s", "; ".join(summary.lines()))
    return summary, report


# ----------------------------------------------------------------------------------------------------- build-shards

def _is_old_shard_output(folder: Path) -> bool:
    """A folder build-shards wrote before output folders carried an owner marker."""
    return storage.isdir(storage.join(folder, build_step.BUILD_DIR))


def _build_params(folder: DownloadFolder, keep_tables: Sequence[PathLike], samples_per_shard: int, shuffle: bool,
                  seed: int, blocklist=None) -> Dict[str, Any]:
    params = {"plan_version": build_step.PLAN_VERSION, "input": folder.resolved(),
              "keep_tables": [str(t) if storage.is_url(t) else str(Path(t).resolve()) for t in keep_tables],
              "samples_per_shard": samples_per_shard, "shuffle": bool(shuffle), "seed": int(seed)}
    if blocklist is not None:  # the SHA-256 of its entries: a rerun with another list is refused
        params["blocklist_sha256"] = blocklist.digest
    return params


def _load_blocklist(blocklist):
    """A :class:`ccmb.blocklist.Blocklist` from one, or from list files (errors name the file and line)."""
    if blocklist is None or isinstance(blocklist, Blocklist):
        return blocklist
    files = [blocklist] if isinstance(blocklist, (str, Path)) else list(blocklist)
    if not files:
        return None
    try:
        return Blocklist.load(files)
    except BlocklistError as exc:
        raise CurationError(str(exc)) from exc


def _build_plan(eng, folder: DownloadFolder, build_dir: PathLike, tables, samples_per_shard: int, shuffle: bool,
                seed: int, allow_empty: bool, progress: bool, blocklist=None, new: bool = False) -> Dict[str, Any]:
    """Decide (combine the tables and the blocklist) and write the plan; returns the plan.json document
    (without params). ``new``: ``build_dir`` was not there when the locked output was listed."""
    combined = combine_step.combine(eng, folder, tables, blocklist)
    samples = eng.count(combined.kept)
    if not samples and not allow_empty:
        counts = ", ".join(f"{r} {n}" for r, n in combined.dropped.items()) or "no rows"
        raise CurationError(f"build-shards: 0 samples to write, every row is dropped ({counts}); pass "
                            "--allow-empty to write an empty shard set")
    plan = build_step.plan_dataset(eng, folder, combined.kept, samples_per_shard, shuffle, seed)
    plan_dir = storage.join(build_dir, build_step.PLAN_DIR)
    eng.write_table(plan, plan_dir, kind="plan", sort_by=["pos"], schema=build_step.PLAN_SCHEMA,
                    parts=max(1, -(-samples // build_step.PLAN_PART_ROWS)), desc="build: plan", new=new)
    marker, fingerprint = read_marker_and_fingerprint(plan_dir)
    return {"samples": samples, "shards": -(-samples // samples_per_shard), "dropped": combined.dropped,
            "restored": combined.restored, "provenance": combined.provenance,
            "plan": fingerprint, "_parts": marker["parts"]}


def build_shards(input_dir: PathLike, output_dir: PathLike, *, keep_tables: Sequence[PathLike] = (),
                 samples_per_shard: int = 10000, shuffle: bool = False, seed: int = 0, engine: str = "local",
                 spark=None, workers: int = 1, progress: bool = False, command: Optional[str] = None,
                 memory_gb: Optional[float] = None, spill_buckets: Optional[int] = None,
                 allow_empty: bool = False, blocklist=None) -> build_step.BuildSummary:
    """Write the kept samples of ``input_dir`` as a finished shard set in ``output_dir`` (restartable).

    Without ``keep_tables`` the default filter and dedup run first (their tables saved under ``_build/``).
    ``blocklist`` (list files of MD5/SHA-256 hashes, URLs and domains, or a :class:`ccmb.blocklist.Blocklist`)
    drops the rows it matches (a takedown applied to an existing download), counted by reason.
    The output folder is claimed (never a folder ccmb did not make for a shard set, never inside the
    download folder) and locked for the run; a rerun with other settings is refused. On object storage the
    small objects it reads (the download folder's parquets, the decision tables, its own markers) are fetched
    once per run (:func:`ccmb.storage.read_cache`)."""
    with storage.read_cache():
        return _build_shards(input_dir, output_dir, keep_tables=keep_tables, samples_per_shard=samples_per_shard,
                             shuffle=shuffle, seed=seed, engine=engine, spark=spark, workers=workers,
                             progress=progress, command=command, memory_gb=memory_gb,
                             spill_buckets=spill_buckets, allow_empty=allow_empty, blocklist=blocklist)


def _build_shards(input_dir: PathLike, output_dir: PathLike, *, keep_tables: Sequence[PathLike], samples_per_shard: int,
                  shuffle: bool, seed: int, engine: str, spark, workers: int, progress: bool, command: Optional[str],
                  memory_gb: Optional[float], spill_buckets: Optional[int], allow_empty: bool,
                  blocklist) -> build_step.BuildSummary:
    start = time.time()
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    outdir.refuse_inside(output_dir, [input_dir])
    cmd = command or shlex.join(sys.argv)
    # on object storage the output's claim, lock and listing (a few round trips) go out while the input is checked
    opening = None
    if storage.is_url(output_dir):
        pool = ThreadPoolExecutor(1, thread_name_prefix="ccmb-open-output")
        opening = pool.submit(_claim_and_lock, output_dir, cmd)
        pool.shutdown(wait=False)  # the one task runs on; the thread ends with it
    try:
        folder = DownloadFolder(input_dir)
        if storage.is_url(folder.path):  # small source tars read ahead (tar index, then the copy) meanwhile
            storage.warm(build_step.source_tars(folder.path, folder.listing or {}))
        tables = _keep_tables(folder, keep_tables)
        blocklist = _load_blocklist(blocklist)
        if blocklist is not None:
            combine_step.blocklist_columns(folder, blocklist)  # an MD5 list on a folder without md5: refused now
    except BaseException:
        if opening is not None:  # the input is refused: the output's lock (if taken) is let go
            with contextlib.suppress(Exception):
                opening.result()[1].release()
        raise
    out, lock, names = opening.result() if opening is not None else _claim_and_lock(output_dir, cmd)
    with ExitStack() as held:
        held.callback(lock.release)
        if not (storage.is_url(out) and outdir.created_here(out)):  # claimed new now: no killed run wrote there
            storage.remove_stale_temporaries(out, names=names)  # temporaries and unfinished uploads of a killed run
        build_dir = storage.join(out, build_step.BUILD_DIR)
        plan_dir = storage.join(build_dir, build_step.PLAN_DIR)
        plan_json = storage.join(build_dir, "plan.json")
        params = _build_params(folder, keep_tables, samples_per_shard, shuffle, seed, blocklist)
        saved, parts = None, None
        fresh = build_step.BUILD_DIR not in names  # listed under the lock: no plan, no shard record yet
        if not fresh and storage.isfile(plan_json):
            saved = json.loads(storage.read_text(plan_json))
            if saved.get("params") != params:
                raise CurationError(f"{plan_json}: {out} holds a build with other settings ({saved.get('params')}); "
                                    "use a new output folder")
            marker, fingerprint = read_marker_and_fingerprint(plan_dir)
            if fingerprint != saved.get("plan"):
                raise CurationError(f"{plan_dir}: the plan changed after it was written; use a new output folder")
            parts = marker["parts"]
            logger.info("resuming the plan in %s", plan_json)
        with make_engine(engine, folder, storage.join(build_dir, "x"), spark=spark, memory_gb=memory_gb, workers=workers,
                         progress=progress, buckets=spill_buckets) as eng:
            if saved is None:
                storage.makedirs(build_dir)
                if not tables:  # the default filter and dedup, the same steps as the commands
                    tables = _default_tables(eng, folder, build_dir)
                saved = _build_plan(eng, folder, build_dir, tables, samples_per_shard, shuffle, seed, allow_empty,
                                    progress, blocklist, new=fresh)
                parts = saved.pop("_parts")  # the marker just written and read back (checked)
                saved["params"] = params
                storage.write_json(plan_json, saved)  # written last: its presence means a complete plan
            # no shard's _stats.json is written between the listing above and the jobs (the folder is locked)
            job = partial(build_step.write_shards, str(folder.path), str(out), samples_per_shard, saved["plan"],
                          parts=parts, done=frozenset() if fresh else build_step.done_names(out),
                          existing=frozenset(names))
            groups = build_step.shard_groups(int(saved["shards"]), _job_slots(eng))
            results = [r for group in eng.run(job, groups, desc="build-shards") for r in group]
    summary = build_step.BuildSummary(output=str(out), samples=saved["samples"], shards=saved["shards"],
                                      dropped=saved.get("dropped", {}), restored=saved.get("restored", {}),
                                      rows=saved["samples"] + sum(saved.get("dropped", {}).values()),
                                      blocklist=(saved.get("provenance") or {}).get("blocklist"))
    known: Dict[str, Any] = {}
    for name, entry, written in sorted(results, key=lambda r: r[0]):
        (summary.written if written else summary.skipped).append(name)
        known[f"{name}.tar"] = entry
    # the listing under the lock plus what the jobs wrote (no one else writes there): no listing more
    tars = [storage.join(out, n) for n in sorted(set(known) | {n for n in names if fmt.SHARD_NAME_RE.match(n)})]
    extra = [storage.name(p) for p in tars if storage.name(p) not in known]
    if extra:
        raise CurationError(f"{out}: shards {extra[:5]} are not in the plan; use a new output folder")
    fmt.finalize_shard_set(out, command=cmd, extra={"build": saved["params"], "dropped": summary.dropped,
                                                    "restored": saved.get("restored", {}),
                                                    "provenance": saved.get("provenance")}, known=known, tars=tars)
    summary.seconds = time.time() - start
    logger.info("build-shards: %s", "; ".join(summary.lines()))
    return summary


def _claim_and_lock(output_dir: PathLike, cmd: str) -> Tuple[storage.Location, outdir.FolderLock, List[str]]:
    """The claimed output folder, its lock (held) and its listing under the lock."""
    out = outdir.claim(output_dir, "shard set", legacy=_is_old_shard_output)
    lock = outdir.FolderLock(out, cmd).acquire()
    try:
        try:
            names = storage.listdir(out)
        except FileNotFoundError:
            names = []
    except BaseException:
        lock.release()
        raise
    return out, lock, names


def _job_slots(eng) -> int:
    """How many jobs ``eng.run`` runs at once (local worker processes, or Spark's default parallelism)."""
    spark = getattr(eng, "spark", None)
    if spark is not None:
        return max(1, int(spark.sparkContext.defaultParallelism))
    return max(1, int(getattr(eng, "workers", 1)))


def _default_tables(eng, folder: DownloadFolder, build_dir: PathLike):
    """``_build/filter.parquet`` and ``_build/dedup.parquet`` (dedup after the filter) on ``eng``."""
    f_path, d_path = storage.join(build_dir, "filter.parquet"), storage.join(build_dir, "dedup.parquet")
    eng.write_table(filter_step.filter_dataset(eng, folder, filter_step.FilterConfig()), f_path, kind="filter",
                    source=folder.source(), desc="build: filter")
    config = DedupConfig()
    eng.write_table(dedup_step.dedup_dataset(eng, folder, config, [open_table(f_path)]), d_path, kind="dedup",
                    source=folder.source(), desc="build: dedup")
    return [open_table(f_path), open_table(d_path)]


def apply_scores(table_path: PathLike, scores_path: PathLike, *, min_score: Optional[float] = None,
                 keep_top_percent: Optional[float] = None, field: str = "score", output: Optional[PathLike] = None,
                 engine: str = "local", spark=None, memory_gb: Optional[float] = None,
                 spill_buckets: Optional[int] = None) -> Summary:
    """Add ``low_agreement`` to a decision table: rows it keeps whose ``field`` score is below the threshold
    (``min_score``, or the ``keep_top_percent`` threshold over every scored sample); a kept row without a
    score gets ``not_scored``; earlier reasons win. Writes ``output`` (default: the table itself)."""
    threshold = score_step.threshold_of(scores_path, field, min_score, keep_top_percent)
    table = open_table(table_path)
    output = storage.location(output or table_path)
    source = table.source or {}
    inputs = [source.get("path")] if source.get("path") else []
    check_output(output, inputs)
    near = output
    with ExitStack() as stack:
        stack.enter_context(table_lock(output))
        if engine == "local":
            eng = stack.enter_context(LocalEngine(near, DEFAULT_MEMORY_GB if memory_gb is None else memory_gb,
                                                  rows=table.rows or 0, buckets=spill_buckets))
        else:
            eng = stack.enter_context(SparkEngine(spark if spark is not None else session()))
        ds = score_step.scored_dataset(eng, table, scores_path, field, threshold)
        info = score_step.scores_table_info(scores_path, field, threshold, min_score, keep_top_percent)
        summary = eng.write_table(ds, output, kind=table.kind or "filter", info=info, source=table.source)
    logger.info("%s: %s threshold %.4f: %s", output, field, threshold, "; ".join(summary.lines()))
    summary.threshold = threshold  # type: ignore[attr-defined]
    return summary
