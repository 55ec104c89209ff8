"""``ccmb build-shards``: rewrite the kept samples of a download folder into final shards.

Steps (all state under ``SHARDS_DIR/_build/``):

1. decide: with ``--keep`` tables a sample is kept when every table keeps it; without, the default
   filter and dedup run here (the same code as ``ccmb filter`` / ``ccmb dedup``) and their tables are
   saved as ``_build/filter.parquet`` and ``_build/dedup.parquet``;
2. plan: the kept keys in key order (or a seeded permutation with ``--shuffle``) cut into shards of
   ``samples_per_shard``; new keys follow img2dataset's layout, the source key is kept as ``source_key``
   in ``{key}.json``. The plan is written atomically (``_build/plan.parquet``, then ``_build/plan.json``)
   BEFORE any shard, so a restart reuses it instead of recomputing (settings must match);
3. write: each shard atomically (:class:`ccmb.shards.ShardWriter`, tar mtimes fixed so the bytes are
   deterministic); after each, ``_build/done/NNNNN.json`` records its checksum. A restart skips shards
   whose tar matches that checksum and rewrites the rest;
4. finalize: ``sizes.json`` and ``manifest.json`` (:func:`ccmb.shards.finalize_shard_set`).

Source members are read by offset (one header scan per source tar), never extracted to disk.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shlex
import sys
import tarfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import atomic
from .. import shards as fmt
from .dedup import DedupConfig, dedup_table
from .combine import combine_tables
from .filter import FilterConfig, filter_table
from .table import (CurationError, check_source, decision_metadata, list_parquets, read_decisions,
                    write_decisions)
from ..types import PathLike

logger = logging.getLogger(__name__)

BUILD_DIR = "_build"
PLAN_VERSION = 2  # 2: the shuffle is a seeded hash order (the same on Spark)


@dataclass
class BuildSummary:
    """What :func:`build_shards` did."""

    output: str
    samples: int = 0
    shards: int = 0
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    dropped: Dict[str, int] = field(default_factory=dict)
    restored: Dict[str, int] = field(default_factory=dict)
    rows: int = 0
    seconds: float = 0.0

    def lines(self) -> List[str]:
        out = [f"{self.samples} samples of {self.rows} rows in {self.shards} shards at {self.output} "
               f"({len(self.written)} written, {len(self.skipped)} already done)"]
        out += [f"  dropped {reason}: {count}" for reason, count in self.dropped.items()]
        out += [f"  restored {reason}: {count} (their kept copy was dropped by another table)"
                for reason, count in self.restored.items()]
        return out


def _decide(input_dir: Path, build_dir: Path, keep_tables: Sequence[PathLike], engine: str, spark,
            workers: int, progress: bool) -> Tuple[pa.Table, Dict[str, int], Dict[str, Any]]:
    """(kept rows: key, shard; drop counts per reason; {"restored": ..., "provenance": ...})."""
    if keep_tables:
        tables = list(keep_tables)
    else:
        ftab = filter_table(input_dir, FilterConfig(), engine=engine, spark=spark)
        write_decisions(build_dir / "filter.parquet", ftab, kind="filter", source=input_dir)
        dtab = dedup_table(input_dir, DedupConfig(workers=workers, progress=progress),
                           keep_tables=[build_dir / "filter.parquet"], engine=engine, spark=spark)
        write_decisions(build_dir / "dedup.parquet", dtab, kind="dedup", source=input_dir)
        tables = [build_dir / "filter.parquet", build_dir / "dedup.parquet"]
    combined = combine_tables(input_dir, tables)  # restores duplicates whose kept copy another table drops
    return combined.kept, combined.dropped, {"restored": combined.restored, "provenance": combined.provenance}


def shuffle_rank(keys, seed: int) -> np.ndarray:
    """The seeded shuffle order of keys: a 64-bit hash of (seed, key) (:func:`ccmb.corpus.groups.string_hashes`
    mixed with the seed by splitmix64). Sorting by (rank, key) is the shuffle; any engine computes it per row,
    so the Spark plan equals the in-process one."""
    from .groups import string_hashes
    from .minhash import splitmix64

    h = string_hashes(keys)
    with np.errstate(over="ignore"):
        return splitmix64(h ^ splitmix64(np.full(len(h), seed, np.uint64))).view(np.int64)


def make_plan(kept: pa.Table, samples_per_shard: int, shuffle: bool, seed: int) -> pa.Table:
    """Assign kept samples (sorted by key, or by their seeded shuffle rank) to output shards:
    (out_shard, out_key, key, shard)."""
    kept = kept.sort_by([("key", "ascending")])
    n = kept.num_rows
    if shuffle:
        rank = shuffle_rank(kept.column("key"), seed)
        order = np.lexsort((np.arange(n), rank))  # rank, then key (rows are key-sorted)
        kept = kept.take(pa.array(order))
    pos = np.arange(n)
    out_shard = pos // samples_per_shard
    out_keys = [fmt.make_key(int(s), int(i), samples_per_shard) for s, i in zip(out_shard, pos % samples_per_shard)]
    return pa.table({"out_shard": pa.array(out_shard, pa.int32()), "out_key": pa.array(out_keys, pa.string()),
                     "key": kept.column("key"), "shard": kept.column("shard")})


def _params(input_dir: Path, keep_tables: Sequence[PathLike], samples_per_shard: int, shuffle: bool,
            seed: int) -> Dict[str, Any]:
    return {"plan_version": PLAN_VERSION, "input": str(input_dir.resolve()),
            "keep_tables": [str(Path(t).resolve()) for t in keep_tables],
            "samples_per_shard": samples_per_shard, "shuffle": bool(shuffle), "seed": int(seed)}


def _load_or_make_plan(input_dir: Path, output_dir: Path, keep_tables, samples_per_shard, shuffle, seed,
                       engine, spark, workers, progress) -> Tuple[pa.Table, Dict[str, Any]]:
    build_dir = output_dir / BUILD_DIR
    plan_json, plan_pq = build_dir / "plan.json", build_dir / "plan.parquet"
    params = _params(input_dir, keep_tables, samples_per_shard, shuffle, seed)
    if plan_json.exists():
        with open(plan_json, encoding="utf-8") as fh:
            saved = json.load(fh)
        if saved.get("params") != params:
            raise CurationError(f"{plan_json}: {output_dir} holds a build with other settings "
                                f"({saved.get('params')}); use a new output folder")
        if engine == "spark":  # the executors read their shard's rows from the plan files
            return None, saved
        plan = pq.read_table(build_dir / saved.get("plan_file", "plan.parquet"))
        if saved.get("plan_file"):  # a plan folder written by Spark: parts in any order
            plan = plan.sort_by([("out_shard", "ascending"), ("out_key", "ascending")])
        if plan.num_rows != saved.get("samples"):
            raise CurationError(f"{plan_pq}: {plan.num_rows} rows, plan.json says {saved.get('samples')}")
        logger.info("resuming the plan in %s", plan_json)
        return plan, saved
    build_dir.mkdir(parents=True, exist_ok=True)
    if engine == "spark":
        from .build_spark import spark_plan

        tables = _spark_tables(input_dir, build_dir, keep_tables, spark)
        saved = spark_plan(spark, input_dir, build_dir, tables, samples_per_shard, shuffle, seed)
        saved["params"] = params
        atomic.write_json(plan_json, saved)  # written last: its presence means the plan is complete
        return None, saved
    kept, dropped, extra = _decide(input_dir, build_dir, keep_tables, engine, spark, workers, progress)
    plan = make_plan(kept, samples_per_shard, shuffle, seed)
    with atomic.atomic_open(plan_pq, "wb") as fh:
        pq.write_table(plan, fh)
    digest = hashlib.sha256("\n".join(plan.column("key").to_pylist()).encode()).hexdigest()
    saved = {"params": params, "samples": plan.num_rows, "dropped": dropped, "keys_sha256": digest, **extra,
             "shards": int(pc.max(plan.column("out_shard")).as_py() + 1) if plan.num_rows else 0}
    atomic.write_json(plan_json, saved)  # written last: its presence means the plan is complete
    return plan, saved


def _spark_tables(input_dir: Path, build_dir: Path, keep_tables: Sequence[PathLike], spark) -> List[PathLike]:
    """The decision tables of a Spark build: ``keep_tables``, or the default filter and dedup run on the
    executors (partitioned tables under ``_build/``)."""
    if keep_tables:
        return list(keep_tables)
    from .dedup import DedupConfig
    from .spark_dist import spark_dedup_to, spark_filter_to

    spark_filter_to(input_dir, FilterConfig(), build_dir / "filter.parquet", spark)
    spark_dedup_to(input_dir, DedupConfig(), build_dir / "dedup.parquet", spark,
                   keep_tables=[build_dir / "filter.parquet"])
    return [build_dir / "filter.parquet", build_dir / "dedup.parquet"]


class TarIndex:
    """Offsets of the members of source tars, read by seek (a few open files at a time)."""

    def __init__(self, input_dir: Path, max_open: int = 32) -> None:
        self.input_dir = input_dir
        self.members: Dict[str, Dict[str, Dict[str, Tuple[int, int]]]] = {}
        self.files: "OrderedDict[str, Any]" = OrderedDict()
        self.max_open = max_open

    def index(self, tar_name: str) -> Dict[str, Dict[str, Tuple[int, int]]]:
        if tar_name not in self.members:
            path = self.input_dir / tar_name
            out: Dict[str, Dict[str, Tuple[int, int]]] = {}
            try:
                with tarfile.open(path, mode="r:") as tar:
                    for m in tar.getmembers():
                        if not m.isfile():
                            continue
                        key, ext = fmt.split_member_name(m.name)
                        if key is None:
                            continue
                        parts = out.setdefault(key, {})
                        if ext in parts:  # as ccmb.shards.iter_tar_members and webdataset
                            raise CurationError(f"{path}: sample {key} has two .{ext} members ({m.name})")
                        parts[ext] = (m.offset_data, m.size)
            except (OSError, tarfile.TarError) as exc:
                raise CurationError(f"{path}: unreadable tar: {exc}") from exc
            self.members[tar_name] = out
        return self.members[tar_name]

    def read(self, tar_name: str, offset: int, size: int) -> bytes:
        fh = self.files.pop(tar_name, None)
        if fh is None:
            fh = open(self.input_dir / tar_name, "rb")
            if len(self.files) >= self.max_open:
                self.files.popitem(last=False)[1].close()
        self.files[tar_name] = fh
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise CurationError(f"{self.input_dir / tar_name}: truncated member at offset {offset}")
        return data

    def sample(self, tar_name: str, key: str) -> Tuple[bytes, str, Dict[str, Any], str]:
        parts = self.index(tar_name).get(key)
        where = f"{self.input_dir / tar_name}: sample {key}"
        if not parts:
            raise CurationError(f"{where} is not in the tar")
        members = {ext: self.read(tar_name, *parts[ext]) for ext in fmt.member_exts_used(parts)}
        try:  # the one reader of the sample layout (ccmb.shards)
            s = fmt.sample_from_members(key, members, source=str(self.input_dir / tar_name))
        except fmt.ShardFormatError as exc:
            raise CurationError(str(exc)) from exc
        return s.image, s.text, s.meta, s.image_ext

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        self.files.clear()


def _write_shard(output_dir: Path, index: int, rows: pa.Table, source: TarIndex) -> None:
    # fixed tar mtimes: the same plan gives byte-identical shards
    with fmt.ShardWriter(output_dir, index, mtime=0) as writer:
        for out_key, key, tar_name in zip(rows.column("out_key").to_pylist(), rows.column("key").to_pylist(),
                                          rows.column("shard").to_pylist()):
            image, text, meta, ext = source.sample(tar_name, key)
            meta = dict(meta)
            meta["source_key"] = key
            meta["key"] = out_key
            writer.write(out_key, image, text, meta, image_ext=ext)


def _done_path(output_dir: Path, name: str) -> Path:
    return output_dir / BUILD_DIR / "done" / f"{name}.json"


def _finished(output_dir: Path, name: str) -> Optional[Dict[str, Any]]:
    """The recorded entry of a shard when its tar is there with the recorded checksum."""
    done, tar = _done_path(output_dir, name), output_dir / f"{name}.tar"
    if not (done.exists() and tar.exists() and (output_dir / f"{name}_stats.json").exists()):
        return None
    try:
        with open(done, encoding="utf-8") as fh:
            entry = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    if tar.stat().st_size != entry.get("bytes") or fmt.sha256_file(tar) != entry.get("sha256"):
        logger.warning("%s differs from its recorded checksum: rewriting it", tar)
        return None
    return entry


def build_shards(input_dir: PathLike, output_dir: PathLike, *, keep_tables: Sequence[PathLike] = (),
                 samples_per_shard: int = 10000, shuffle: bool = False, seed: int = 0, engine: str = "local",
                 spark=None, workers: int = 1, progress: bool = False,
                 command: Optional[str] = None) -> BuildSummary:
    """Write the kept samples of ``input_dir`` as a finished shard set in ``output_dir`` (restartable)."""
    start = time.time()
    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    for t in keep_tables:
        if engine == "spark":  # fail early, naming a bad or partial table (Spark: its metadata only)
            decision_metadata(t)
        else:
            read_decisions(t, columns=["key", "keep"])
        check_source(t, input_dir)  # a table of another download folder is refused, naming both
    list_parquets(input_dir)  # fail early, naming a missing or damaged parquet (its rows would vanish)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(output_dir)
    if engine == "spark":
        from .engine_spark import _session

        spark = _session(spark)
    plan, saved = _load_or_make_plan(input_dir, output_dir, keep_tables, samples_per_shard, shuffle, seed,
                                     engine, spark, workers, progress)
    summary = BuildSummary(output=str(output_dir), samples=saved["samples"], shards=saved["shards"],
                           dropped=saved.get("dropped", {}), restored=saved.get("restored", {}),
                           rows=saved["samples"] + sum(saved.get("dropped", {}).values()))
    if engine == "spark":  # each output shard written by a Spark task
        from .build_spark import spark_write_shards

        known = spark_write_shards(spark, input_dir, output_dir, saved, summary)
        return _finish(input_dir, output_dir, saved, summary, known, command, start)
    source = TarIndex(input_dir)
    known: Dict[str, Dict[str, Any]] = {}
    shard_col = plan.column("out_shard").to_numpy()
    bounds = np.searchsorted(shard_col, np.arange(saved["shards"] + 1))
    iterator = range(saved["shards"])
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="build-shards", unit="shard")
    try:
        for s in iterator:
            name = fmt.shard_name(s)
            entry = _finished(output_dir, name)
            if entry is None:
                _write_shard(output_dir, s, plan.slice(bounds[s], bounds[s + 1] - bounds[s]), source)
                entry = fmt.shard_entry(output_dir / f"{name}.tar")
                atomic.write_json(_done_path(output_dir, name), entry)
                summary.written.append(name)
            else:
                summary.skipped.append(name)
            known[f"{name}.tar"] = entry
    finally:
        source.close()
    return _finish(input_dir, output_dir, saved, summary, known, command, start)


def _finish(input_dir: Path, output_dir: Path, saved: Dict[str, Any], summary: BuildSummary,
            known: Dict[str, Dict[str, Any]], command: Optional[str], start: float) -> BuildSummary:
    extra = [p.name for p in fmt.list_shards(output_dir) if p.name not in known]
    if extra:
        raise CurationError(f"{output_dir}: shards {extra[:5]} are not in the plan; use a new output folder")
    fmt.finalize_shard_set(output_dir, command=command or shlex.join(sys.argv),
                           extra={"build": saved["params"], "dropped": summary.dropped,
                                  "restored": saved.get("restored", {}),
                                  "provenance": saved.get("provenance")}, known=known)
    summary.seconds = time.time() - start
    logger.info("build-shards: %s", "; ".join(summary.lines()))
    return summary
