"""``ccmb build-shards`` as steps: the shard plan and the writing of one output shard.

* plan: the kept samples (:mod:`ccmb.corpus.steps.combine`) in key order, or in a seeded shuffle order
  (:func:`shuffle_rank`, a hash of (seed, key) computed per row: every engine gives the same order), numbered
  (``pos``) and cut into shards of ``samples_per_shard``; new keys follow img2dataset's layout. Each row
  carries where its members are in the source tar (``members``: one header scan per source tar), so a
  shard is written by seeking, never by scanning the source tars again;
* write: a job writes a few consecutive output shards (:func:`shard_groups`); for each it reads its rows of
  the plan, copies the members (bytes unchanged, through the one sample reader of :mod:`ccmb.shards`), writes
  the tar atomically with fixed mtimes (the same plan gives byte-identical shards) and records
  ``_build/done/NNNNN.json`` (checksum and the plan's fingerprint), publishing one shard while it writes the
  next: a rerun skips a shard whose tar matches its record.
"""
from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ... import storage
from ... import shards as fmt
from ..primitives.hashing import splitmix64, string_hashes
from ...types import PathLike
from ..tables.dataflow import Fn
from ..tables.decisions import iter_part_batches, read_marker
from ..tables.folder import DownloadFolder
from ..tables.schema import CurationError

logger = logging.getLogger(__name__)

BUILD_DIR = "_build"
PLAN_DIR = "plan.parquet"
PLAN_VERSION = 3  # 3: member offsets in the plan (2: the shuffle is a seeded hash order, the same on Spark)
PLAN_SCHEMA = pa.schema([("pos", pa.int64()), ("out_shard", pa.int32()), ("out_key", pa.string()),
                         ("key", pa.string()), ("shard", pa.string()), ("members", pa.string())])
RANKED = pa.schema([("key", pa.string()), ("shard", pa.string()), ("rank", pa.int64())])
MEMBERS = pa.schema([("key", pa.string()), ("members", pa.string())])
#: Bytes of source members a shard job reads at once (and once more ahead, in a background thread)
READ_CHUNK = 32 << 20
#: A remote source tar up to this size is read whole for its index (one request, the next one read meanwhile);
#: a larger one is scanned header by header through a read-ahead file.
WHOLE_TAR_BYTES = 64 << 20
#: Output shards one ``build-shards`` job writes at most (:func:`shard_groups`).
SHARDS_PER_JOB = 16
#: Rows per part of a plan written in-process (a shard's job reads the parts its rows are in).
PLAN_PART_ROWS = 1 << 17


@dataclass
class BuildSummary:
    """What ``build_shards`` did."""

    output: str
    samples: int = 0
    shards: int = 0
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    dropped: Dict[str, int] = field(default_factory=dict)
    restored: Dict[str, int] = field(default_factory=dict)
    rows: int = 0
    seconds: float = 0.0
    blocklist: Optional[Dict[str, Any]] = None  # --blocklist: its files, SHA-256, entries, rows dropped

    def lines(self) -> List[str]:
        out = [f"{self.samples} samples of {self.rows} rows in {self.shards} shards at {self.output} "
               f"({len(self.written)} written, {len(self.skipped)} already done)"]
        if self.blocklist:
            b = self.blocklist
            out.append(f"  blocklist {', '.join(b['files'])} (sha256 {b['sha256'][:16]}…: {b['md5']} MD5, "
                       f"{b['sha256_hashes']} SHA-256, {b['urls']} URLs, {b['domains']} domains) dropped "
                       f"{sum(b['dropped'].values())} rows")
        out += [f"  dropped {reason}: {count}" for reason, count in self.dropped.items()]
        out += [f"  restored {reason}: {count} (their kept copy was dropped by another table)"
                for reason, count in self.restored.items()]
        return out


def shuffle_rank(keys, seed: int) -> np.ndarray:
    """The seeded shuffle order of keys: a 64-bit hash of (seed, key). Sorting by (rank, key) is the
    shuffle; any engine computes it per row, so the plans are equal."""
    h = string_hashes(keys)
    with np.errstate(over="ignore"):
        return splitmix64(h ^ splitmix64(np.full(len(h), seed, np.uint64))).view(np.int64)


def _ranked(shuffle: bool, seed: int, t: pa.Table) -> pa.Table:
    rank = shuffle_rank(t.column("key"), seed) if shuffle else np.zeros(t.num_rows, np.int64)
    return pa.table({"key": t.column("key"), "shard": t.column("shard"), "rank": rank})


def out_keys(out_shard: np.ndarray, index: np.ndarray, samples_per_shard: int) -> pa.Array:
    """:func:`ccmb.shards.make_key` of many (shard, index) pairs, vectorised."""
    width = max(1, math.ceil(math.log10(samples_per_shard))) if samples_per_shard > 1 else 1
    a = pc.utf8_lpad(pa.array(out_shard.astype(np.int64)).cast(pa.string()), fmt.SHARD_DIGITS, "0")
    b = pc.utf8_lpad(pa.array(index.astype(np.int64)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(a, b, "")


def _plan_rows(samples_per_shard: int, t: pa.Table) -> pa.Table:
    pos = t.column("pos").to_numpy()
    shard, index = np.divmod(pos, samples_per_shard)
    return pa.table({"pos": pos, "out_shard": shard.astype(np.int32), "out_key": out_keys(shard, index,
                                                                                           samples_per_shard),
                     "key": t.column("key"), "shard": t.column("shard")})


def tar_members(tar: PathLike, keys=None, size: Optional[int] = None, data: Optional[bytes] = None
                ) -> Dict[str, str]:
    """``ext:offset:size`` of the members of ``keys`` (all when None) in one source tar (one header scan; a
    sample with two members of one extension is refused, as webdataset does). ``data``: the tar's bytes when
    the caller has read them already."""
    want = set(keys) if keys is not None else None
    found: Dict[str, Dict[str, Tuple[int, int]]] = {}
    try:
        with (tarfile.open(fileobj=io.BytesIO(data), mode="r:") if data is not None
              else fmt.open_tar(tar, "r:", size=size)) as t:  # a local path or a URL (headers read by seeking)
            for m in t.getmembers():
                if not m.isfile():
                    continue
                key, ext = fmt.split_member_name(m.name)
                if key is None or (want is not None and key not in want):
                    continue
                parts = found.setdefault(key, {})
                if ext in parts:
                    raise CurationError(f"{tar}: sample {key} has two .{ext} members ({m.name})")
                parts[ext] = (m.offset_data, m.size)
    except (OSError, tarfile.TarError) as exc:
        raise CurationError(f"{tar}: unreadable tar: {exc}") from exc
    return {k: ";".join(f"{e}:{o}:{s}" for e, (o, s) in sorted(v.items())) for k, v in found.items()}


def source_tars(folder: PathLike, sizes: Dict[str, int]) -> List[Tuple[storage.Location, int]]:
    """(tar, bytes) of the source tars small enough to be read whole for the tar index (from the folder's
    listing ``sizes``)."""
    return [(storage.join(folder, n), size) for n, size in sorted(sizes.items())
            if n.endswith(".tar") and size <= WHOLE_TAR_BYTES]


def _members(folder: str, listing: Optional[Dict[str, int]], t: pa.Table) -> pa.Table:
    """One partition of kept rows (every row of a source tar is here): where each sample's members are.
    ``listing``: the folder's file sizes (object storage; listed once when the folder was opened)."""
    keys, members = [], []
    shards = t.column("shard")
    sizes = (listing if listing is not None else storage.list_files(folder)) if storage.is_url(folder) else {}
    names = pc.unique(shards).to_pylist()
    tars = [DownloadFolder.tar_of(folder, shard) for shard in names]

    def whole(tar) -> Optional[bytes]:  # a small remote tar in one read, the next one fetched meanwhile
        n = sizes.get(storage.name(tar))  # (kept for the copy by a read_cache block while its budget lasts)
        return storage.read_small(tar, n)[0] if n is not None and n <= WHOLE_TAR_BYTES else None

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccmb-tar-index") as pool:
        ahead = pool.submit(whole, tars[0]) if tars and sizes else None
        for i, (shard, tar) in enumerate(zip(names, tars)):
            data = ahead.result() if ahead is not None else None
            ahead = pool.submit(whole, tars[i + 1]) if sizes and i + 1 < len(tars) else None
            want = t.filter(pc.equal(shards, shard)).column("key").to_pylist()
            try:
                got = tar_members(tar, want, sizes.get(storage.name(tar)), data)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            data = None
            missing = sorted(set(want) - set(got))
            if missing:
                raise CurationError(f"{tar}: sample {missing[0]} is not in the tar ({len(missing)} such samples)")
            keys += want
            members += [got[k] for k in want]
    return pa.table({"key": pa.array(keys, pa.string()), "members": pa.array(members, pa.string())})


def _with_members(t: pa.Table) -> pa.Table:
    return t.select(PLAN_SCHEMA.names)


def plan_dataset(engine, folder: DownloadFolder, kept, samples_per_shard: int, shuffle: bool, seed: int):
    """The plan rows (:data:`PLAN_SCHEMA`) of the kept samples (key, shard), on ``engine``."""
    ranked = engine.map(kept, Fn(partial(_ranked, shuffle, seed), RANKED))
    positioned = engine.sort(ranked, ["rank", "key"] if shuffle else ["key"], position="pos", desc="build: plan")
    rows = engine.map(positioned, Fn(partial(_plan_rows, samples_per_shard),
                                     pa.schema([f for f in PLAN_SCHEMA if f.name != "members"])))
    members = engine.shuffle(kept, ["shard"], Fn(partial(_members, str(folder.path), folder.listing), MEMBERS),
                             desc="build: tar index")
    return engine.map(engine.join(rows, members, ["key"], "left"), Fn(_with_members, PLAN_SCHEMA))


# ------------------------------------------------------------------------------------------- one shard

def done_path(output_dir: PathLike, name: str) -> storage.Location:
    return storage.join(output_dir, BUILD_DIR, "done", f"{name}.json")


def finished(output_dir: PathLike, name: str, plan: str) -> Optional[Dict[str, Any]]:
    """The recorded entry of a shard when its tar is there with the recorded checksum, written from this plan."""
    done, tar = done_path(output_dir, name), storage.join(output_dir, f"{name}.tar")
    if not (storage.exists(done) and storage.exists(tar) and storage.exists(storage.join(output_dir,
                                                                                          f"{name}_stats.json"))):
        return None
    try:
        entry = json.loads(storage.read_text(done))
    except (OSError, json.JSONDecodeError):
        return None
    if entry.pop("plan", None) != plan:
        logger.warning("%s was written from another plan: rewriting it", tar)
        return None
    if storage.size(tar) != entry.get("bytes") or fmt.sha256_file(tar) != entry.get("sha256"):
        logger.warning("%s differs from its recorded checksum: rewriting it", tar)
        return None
    return entry


def plan_rows(plan_dir: PathLike, lo: int, hi: int, parts: Optional[List[Dict[str, Any]]] = None) -> pa.Table:
    """The plan rows with ``lo <= pos < hi``, in order, from the parts that hold them (each checked against
    its recorded SHA-256). ``parts``: the plan marker's parts when the caller has read (and checked) it."""
    if parts is None:
        parts = read_marker(plan_dir)["parts"]
    out, at = [], 0
    for p in parts:
        first, at = at, at + int(p["rows"])
        if at <= lo or first >= hi:
            continue
        for t in iter_part_batches(storage.join(plan_dir, p["name"]), p.get("sha256"), PLAN_SCHEMA.names, rows=p["rows"],
                                   schema=PLAN_SCHEMA, size=p.get("bytes")):
            pos = t.column("pos")
            out.append(t.filter(pc.and_(pc.greater_equal(pos, lo), pc.less(pos, hi))))
    table = pa.concat_tables(out) if out else PLAN_SCHEMA.empty_table()
    return table.sort_by([("pos", "ascending")])


def plan_samples(input_dir: PathLike, rows: List[Tuple[str, str, str]], chunk_bytes: int = READ_CHUNK, *,
                 first: Optional[Future] = None) -> Iterator[fmt.Sample]:
    """The samples of plan rows ``(key, source shard, members)``, in order. Each sample is one byte range of
    its source tar (its members are neighbours there); rows are read in chunks of about ``chunk_bytes`` by
    :func:`ccmb.storage.read_ranges` (neighbouring samples in one read, scattered ones, e.g. of a shuffled
    plan, each by its own small read, concurrently on object storage), the next chunk in a background thread
    while this one is written. ``first``: the first chunk's read when the caller started it already
    (:func:`read_ahead`)."""
    return _chunk_samples(sample_chunks(input_dir, rows, chunk_bytes), first)


def _chunk_samples(chunks: List["Chunk"], first: Optional[Future]) -> Iterator[fmt.Sample]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccmb-read") as pool:
        ahead = first if first is not None else (pool.submit(fetch_chunk, chunks[0]) if chunks[0] else None)
        for k, chunk in enumerate(chunks):
            blocks = ahead.result() if ahead is not None else []
            ahead = pool.submit(fetch_chunk, chunks[k + 1]) if k + 1 < len(chunks) else None
            for (key, tar, lo, _, parts), block in zip(chunk, blocks):
                got = {ext: block[off - lo:off - lo + n] for ext, (off, n) in parts.items()}
                try:  # the one reader of the sample layout (ccmb.shards)
                    yield fmt.sample_from_members(key, got, source=str(tar))
                except fmt.ShardFormatError as exc:
                    raise CurationError(str(exc)) from exc


Chunk = List[Tuple[str, storage.Location, int, int, Dict[str, Tuple[int, int]]]]


def sample_chunks(input_dir: PathLike, rows: List[Tuple[str, str, str]], chunk_bytes: int = READ_CHUNK
                  ) -> List[Chunk]:
    """Plan rows cut into read chunks of about ``chunk_bytes``: (key, tar, offset, bytes, members) each."""
    tars: Dict[str, storage.Location] = {}
    chunks: List[Chunk] = [[]]
    size = 0
    for key, shard, members in rows:
        parts = {}
        for item in members.split(";"):
            ext, off, n = item.split(":")
            parts[ext] = (int(off), int(n))
        parts = {ext: parts[ext] for ext in fmt.member_exts_used(parts)}
        lo = min(off for off, _ in parts.values()) if parts else 0
        hi = max(off + n for off, n in parts.values()) if parts else 0
        if chunks[-1] and size >= chunk_bytes:
            chunks.append([])
            size = 0
        tar = tars.get(shard) or tars.setdefault(shard, DownloadFolder.tar_of(input_dir, shard))
        chunks[-1].append((key, tar, lo, hi - lo, parts))
        size += hi - lo
    return chunks


def fetch_chunk(chunk: Chunk) -> List[bytes]:
    """The bytes of each sample of a read chunk."""
    try:
        return storage.read_ranges([(tar, lo, n) for _, tar, lo, n, _ in chunk])
    except storage.StorageError as exc:
        raise CurationError(str(exc)) from exc


def done_names(output_dir: PathLike) -> frozenset:
    """The names in ``_build/done/`` (one listing, by the driver: a job looks only for a record listed here)."""
    try:
        return frozenset(storage.list_files(storage.join(output_dir, BUILD_DIR, "done")))
    except FileNotFoundError:
        return frozenset()


def shard_groups(shards: int, slots: int) -> List[List[int]]:
    """The output shards cut into jobs of consecutive shards: one job writes several (each shard's upload
    overlaps the next one's work), at most :data:`SHARDS_PER_JOB`, and with several ``slots`` (processes,
    Spark tasks) about four jobs per slot, so the slots stay balanced."""
    per_job = min(SHARDS_PER_JOB, shards) if slots <= 1 else math.ceil(shards / (4 * slots))
    per_job = max(1, min(SHARDS_PER_JOB, per_job))
    return [list(range(i, min(i + per_job, shards))) for i in range(0, shards, per_job)]


def write_shards(input_dir: str, output_dir: str, samples_per_shard: int, plan: str, indices: List[int], *,
                 parts: Optional[List[Dict[str, Any]]] = None, done: Optional[frozenset] = None,
                 existing: Optional[frozenset] = None) -> List[Tuple[str, Dict[str, Any], bool]]:
    """Write output shards ``indices`` from the plan, in order (a job: any process or Spark task); for each
    (name, manifest entry, written now). Each shard's files are published by a background thread while the
    next shard is read and written (at most one shard waits: bounded memory); the job returns once every
    shard it wrote is published, and raises the first error.

    What the driver already knows saves each job its requests on object storage: ``parts``, the plan
    marker's checked parts (:func:`plan_rows`), ``done``, the listing of ``_build/done/`` (:func:`done_names`;
    a shard without a record there is written without looking for one), and ``existing``, the names in the
    output folder when the run started (no old ``_stats.json`` to delete when the shard's is not among them;
    only this job writes that name)."""
    out = storage.location(output_dir)
    results: Dict[int, Tuple[str, Dict[str, Any], bool]] = {}
    todo = []
    for index in indices:
        name = fmt.shard_name(index)
        entry = finished(out, name, plan) if done is None or f"{name}.json" in done else None
        if entry is not None:
            results[index] = (name, entry, False)
        else:
            todo.append(index)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccmb-publish") as publisher, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccmb-read-ahead") as reader:
        waiting = None
        try:
            source = _shard_source(input_dir, out, samples_per_shard, todo[0], parts, reader) if todo else None
            for k, index in enumerate(todo):
                current = source
                # the next shard's plan rows and first read go out now, before this shard's upload
                source = (_shard_source(input_dir, out, samples_per_shard, todo[k + 1], parts, reader)
                          if k + 1 < len(todo) else None)
                writer = _write_one(input_dir, out, samples_per_shard, plan, index, current, existing, publisher)
                if waiting is not None:
                    waiting.result()  # the previous shard is published before this one queues
                waiting = writer.published
                results[index] = (writer.name, writer.entry, True)
            if waiting is not None:
                waiting.result()
        except BaseException:
            if waiting is not None:
                waiting.exception()  # let the shard in flight finish (or fail) before the error goes up
            raise
    return [results[i] for i in indices]


def _shard_source(input_dir: str, out: storage.Location, samples_per_shard: int, index: int,
                  parts: Optional[List[Dict[str, Any]]], reader: ThreadPoolExecutor):
    """(plan rows, read chunks, the first chunk's read started on ``reader``) of output shard ``index``."""
    rows = plan_rows(storage.join(out, BUILD_DIR, PLAN_DIR), index * samples_per_shard, (index + 1) * samples_per_shard,
                     parts)
    chunks = sample_chunks(input_dir, list(zip(rows.column("key").to_pylist(), rows.column("shard").to_pylist(),
                                               rows.column("members").to_pylist())))
    return rows, chunks, reader.submit(fetch_chunk, chunks[0]) if chunks[0] else None


def _write_one(input_dir: str, out: storage.Location, samples_per_shard: int, plan: str, index: int,
               source, existing: Optional[frozenset], publisher) -> fmt.ShardWriter:
    name = fmt.shard_name(index)
    rows, chunks, first = source
    keys = rows.column("key").to_pylist()
    samples = _chunk_samples(chunks, first)
    replaces = existing is None or f"{name}_stats.json" in existing
    # fixed mtimes: byte-identical for a plan; the resume record goes out with the stats file
    with fmt.ShardWriter(out, index, mtime=0, replaces=replaces, record=(done_path(out, name), {"plan": plan}),
                         publisher=publisher) as writer:
        for out_key, key, s in zip(rows.column("out_key").to_pylist(), keys, samples):
            meta = dict(s.meta)
            meta["source_key"] = key
            meta["key"] = out_key
            writer.write(out_key, s.image, s.text, meta, image_ext=s.image_ext)
    return writer  # its entry: counted and hashed as it was written, no second read of the tar
