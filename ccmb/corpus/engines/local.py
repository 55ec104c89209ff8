"""The in-process engine: datasets as lazy chains of step functions over partitions, shuffled through
hash-partitioned spill buckets on disk, so memory follows the budget (``--memory-gb``), not the row count.

A dataset is a list of *chains*: a source partition (a parquet of the download folder, a part of a decision
table, one bucket of a spill, a join of two buckets, ...) and the step functions applied to each table it
yields. Nothing is computed until a verb needs the rows: :meth:`LocalEngine.shuffle` evaluates every chain
and spills its output into ``P`` buckets by a 64-bit hash of the ``by`` columns (equal values share a
bucket), the next steps then see one bucket at a time. ``P`` and the batch size come from the budget
(:func:`ccmb.corpus.primitives.spill.plan`). With ``workers`` > 1 chains are evaluated in spawned worker
processes (the chains pickle: step functions are top-level functions with bound settings).

The engine knows no rule, no reason and no level: it moves partitions and calls the functions it is given.
"""
from __future__ import annotations

import itertools
import logging
import resource
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ... import storage
from ...types import PathLike
from ..primitives import spill
from ..primitives.hashing import hash_columns
from ..tables import decisions
from ..tables.dataflow import Fn, concat, conform
from ..tables.folder import (DownloadFolder, batch_schema, iter_file_batches, iter_parquet_batches,
                             parquet_schema)
from ..tables.writer import Summary, TableWriter

logger = logging.getLogger(__name__)

#: Keys sampled per range bucket when a dataset is sorted (range boundaries are quantiles of the sample).
SAMPLE_PER_BUCKET = 256
JOIN_TYPES = {"left": "left outer", "inner": "inner", "anti": "left anti"}


# ------------------------------------------------------------------------------------------------- partitions

class Part:
    """A source partition: :meth:`load` yields its tables."""

    def load(self) -> Iterator[pa.Table]:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class FolderPart(Part):
    path: str
    index: int
    columns: Tuple[str, ...]
    batch_rows: int

    def load(self):
        return iter_file_batches(self.path, self.index, self.columns, self.batch_rows)


@dataclass(frozen=True)
class TablePart(Part):
    path: str
    sha256: Optional[str]
    rows: Optional[int]
    columns: Tuple[str, ...]
    batch_rows: int

    def load(self):
        return decisions.iter_part_batches(self.path, self.sha256, self.columns, self.batch_rows, self.rows)


@dataclass(frozen=True)
class FilePart(Part):
    path: str
    columns: Tuple[str, ...]
    schema: pa.Schema
    batch_rows: int

    def load(self):
        return iter_parquet_batches(self.path, self.columns, self.schema, self.batch_rows)


@dataclass(frozen=True)
class ArrowPart(Part):
    table: pa.Table

    def load(self):
        yield self.table


@dataclass(frozen=True)
class BucketPart(Part):
    files: Tuple[str, ...]
    index: int
    schema: pa.Schema

    def load(self):
        yield spill.read_bucket(self.files, self.index, self.schema)


@dataclass(frozen=True)
class IpcPart(Part):
    file: str
    bucket: Optional[int] = None  # the bucket of the shuffle it was cached from (co-partitioned joins)

    def load(self):
        with pa.OSFile(self.file, "rb") as src:
            reader = pa.ipc.open_file(src)
            for i in range(reader.num_record_batches):
                yield pa.Table.from_batches([reader.get_batch(i)])


@dataclass(frozen=True)
class Chain:
    part: Part
    fns: Tuple[Fn, ...] = ()

    def then(self, fn: Fn) -> "Chain":
        return Chain(self.part, self.fns + (fn,))


def run_chain(chain: Chain) -> Iterator[pa.Table]:
    for table in chain.part.load():
        for fn in chain.fns:
            table = fn(table)
        yield table


def run_chain_table(chain: Chain, schema: pa.Schema) -> pa.Table:
    return concat(run_chain(chain), schema)


@dataclass(frozen=True)
class JoinPart(Part):
    left: Chain
    right: Chain
    left_schema: pa.Schema
    right_schema: pa.Schema
    on: Tuple[str, ...]
    how: str

    def load(self):
        left = run_chain_table(self.left, self.left_schema)
        right = run_chain_table(self.right, self.right_schema)
        yield join_tables(left, right, self.on, self.how)


@dataclass(frozen=True)
class GatherPart(Part):
    chains: Tuple[Chain, ...]
    schema: pa.Schema

    def load(self):
        yield concat(itertools.chain.from_iterable(run_chain(c) for c in self.chains), self.schema)


@dataclass(frozen=True)
class SortedPart(Part):
    """One range bucket (or, ``index`` -1, one cached partition) sorted by ``by``, with the global position of
    its first row (``offset``)."""

    files: Tuple[str, ...]
    index: int
    schema: pa.Schema
    by: Tuple[str, ...]
    offset: int
    position: Optional[str]

    def load(self):
        if self.index < 0:  # one cached partition, whole
            t = concat(IpcPart(self.files[0]).load(), self.schema)
        else:
            t = spill.read_bucket(self.files, self.index, self.schema)
        if t.num_rows:
            t = t.sort_by([(c, "ascending") for c in self.by])
        if self.position:
            t = t.append_column(self.position, pa.array(np.arange(self.offset, self.offset + t.num_rows,
                                                                  dtype=np.int64)))
        yield t


def join_tables(left: pa.Table, right: pa.Table, on: Sequence[str], how: str) -> pa.Table:
    """``left`` joined with ``right`` on equal ``on`` columns (left, inner or anti), left's columns first."""
    keys = list(on)
    if how == "anti":
        out = left.join(right.select(keys), keys, join_type="left anti") if left.num_rows and right.num_rows \
            else left
        return out.select(left.column_names)
    if not left.num_rows:
        return pa.table({**{c: left.column(c) for c in left.column_names},
                         **{c: pa.nulls(0, right.schema.field(c).type) for c in right.column_names if c not in keys}})
    if not right.num_rows:
        if how == "inner":
            return join_tables(left.slice(0, 0), right, on, how)
        extra = {c: pa.nulls(left.num_rows, right.schema.field(c).type) for c in right.column_names if c not in keys}
        return pa.table({**{c: left.column(c) for c in left.column_names}, **extra})
    out = left.join(right, keys, join_type=JOIN_TYPES[how], use_threads=False)
    return out.select(left.column_names + [c for c in right.column_names if c not in keys])


# ------------------------------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class LocalDataset:
    chains: Tuple[Chain, ...]
    schema: pa.Schema
    partitioned_by: Optional[Tuple[str, ...]] = None  # rows with equal values of these share a partition
    buckets: int = 0  # the number of buckets it was partitioned into


def bucket_of(chain: Chain) -> Optional[int]:
    """The shuffle bucket a chain's rows come from (None for an unpartitioned source)."""
    part = chain.part
    while isinstance(part, JoinPart):
        part = part.left.part
    if isinstance(part, BucketPart):
        return part.index
    if isinstance(part, IpcPart):
        return part.bucket
    return None


def _fixed_bytes(column, width: int) -> np.ndarray:
    """Strings as a numpy fixed-width bytes array (``S<width>``, zero-padded: byte order = string order)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    arr = pc.fill_null(arr, "\U0010ffff" * 2)  # nulls sort last
    n = len(arr)
    _, ob, db = arr.buffers()
    offsets = np.frombuffer(ob, np.int32, n + 1, arr.offset * 4).astype(np.int64)
    lengths = np.diff(offsets)
    width = max(width, int(lengths.max()) if n else 1, 1)
    out = np.zeros((n, width), np.uint8)
    total = int(offsets[-1] - offsets[0])
    if total:
        data = np.frombuffer(db, np.uint8, total, int(offsets[0]))
        row = np.repeat(np.arange(n), lengths)
        col = np.arange(total) - np.repeat(offsets[:-1] - offsets[0], lengths)
        out[row, col] = data
    return out.view(f"S{width}").ravel()


def _sort_values(table: pa.Table, column: str):
    col = table.column(column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return _fixed_bytes(col, 1)
    return np.asarray(col.to_numpy(zero_copy_only=False))


class LocalEngine:
    """See the module docstring. Use as a context manager: the spill folder next to ``near`` is removed at
    the end."""

    name = "local"

    def __init__(self, near: PathLike, memory_gb: float = spill.DEFAULT_MEMORY_GB, rows: int = 0,
                 buckets: Optional[int] = None, workers: int = 1, progress: bool = False) -> None:
        self.plan = spill.plan(memory_gb, rows, buckets)
        self.buckets = self.plan.buckets
        self.batch_rows = self.plan.batch_rows
        self.workers = max(1, int(workers))
        self.progress = progress
        self.rows_hint = rows
        if storage.is_url(near):  # an output on object storage: spills go to the local temporary folder
            near = Path(tempfile.gettempdir()) / "ccmb"
        self.spills = spill.SpillDir(Path(near), ".ccmb-work-")
        self._count = itertools.count()
        self._pool: Optional[ProcessPoolExecutor] = None
        logger.info("in-process engine: %d rows, batches of %d, %d buckets (--memory-gb %g), %d worker(s)",
                    rows, self.batch_rows, self.buckets, memory_gb, self.workers)

    # ----------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        self.spills.close()

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _name(self, what: str) -> str:
        return f"{what}{next(self._count):03d}"

    # ----------------------------------------------------------------------------------------- sources
    def read_folder(self, folder: DownloadFolder, columns: Sequence[str], fn: Optional[Fn] = None) -> LocalDataset:
        """The download folder's parquets in batches of ``columns`` (plus shard and row id), through ``fn``."""
        chains = tuple(Chain(FolderPart(str(p), i, tuple(columns), self.batch_rows), (fn,) if fn else ())
                       for i, p in enumerate(folder.parquets))
        return LocalDataset(chains, fn.schema if fn else batch_schema(columns))

    def read_table(self, table: decisions.DecisionTable, columns: Sequence[str],
                   fn: Optional[Fn] = None) -> LocalDataset:
        """A decision table's parts (each checked against its recorded SHA-256) through ``fn``."""
        schema = pa.schema([decisions.DECISION_SCHEMA.field(c) for c in columns])
        chains = tuple(Chain(TablePart(str(p), sha, rows, tuple(columns), self.batch_rows), (fn,) if fn else ())
                       for p, sha, rows in table.parts)
        return LocalDataset(chains, fn.schema if fn else schema)

    def read_files(self, paths: Sequence[PathLike], columns: Sequence[str], fn: Optional[Fn] = None) -> LocalDataset:
        """Plain parquet files (a scores file, a plan) in batches of ``columns`` through ``fn``."""
        schema = parquet_schema(paths[0], columns)
        chains = tuple(Chain(FilePart(str(p), tuple(columns), schema, self.batch_rows), (fn,) if fn else ())
                       for p in paths)
        return LocalDataset(chains, fn.schema if fn else schema)

    def from_arrow(self, table: pa.Table) -> LocalDataset:
        """A small table of the driver as a dataset."""
        return LocalDataset((Chain(ArrowPart(table)),), table.schema)

    # ----------------------------------------------------------------------------------------- evaluation
    def _pool_for(self) -> Optional[ProcessPoolExecutor]:
        if self.workers <= 1:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"))
        return self._pool

    def _evaluate(self, ds: LocalDataset, desc: str = "") -> Iterator[Tuple[int, pa.Table]]:
        """(chain index, table) of every chain's output, in chain order; chains in worker processes when
        there are several (at most 2 x workers in flight: bounded memory)."""
        bar = None
        if self.progress and desc and len(ds.chains) > 1:
            from tqdm import tqdm

            bar = tqdm(total=len(ds.chains), desc=desc, unit="part", leave=False)
        try:
            compute = any(c.fns or isinstance(c.part, (JoinPart, GatherPart)) for c in ds.chains)
            pool = self._pool_for() if len(ds.chains) > 1 and compute else None
            if pool is None:
                for i, chain in enumerate(ds.chains):
                    for table in run_chain(chain):
                        yield i, table
                    if bar is not None:
                        bar.update(1)
                return
            pending: List[Tuple[int, Any]] = []
            todo = iter(enumerate(ds.chains))
            for i, chain in itertools.islice(todo, 2 * self.workers):
                pending.append((i, pool.submit(run_chain_table, chain, ds.schema)))
            while pending:
                i, fut = pending.pop(0)
                table = fut.result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt[0], pool.submit(run_chain_table, nxt[1], ds.schema)))
                yield i, table
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def tables(self, ds: LocalDataset, desc: str = "") -> Iterator[pa.Table]:
        """The dataset's tables in turn (streamed: one partition's output in memory at a time)."""
        for _, table in self._evaluate(ds, desc):
            yield table

    # ----------------------------------------------------------------------------------------- verbs
    def map(self, ds: LocalDataset, fn: Fn, partitioned_by: Optional[Sequence[str]] = None) -> LocalDataset:
        """``fn`` over every table of ``ds``. ``partitioned_by`` says the output is still co-partitioned by
        those columns (the values ``ds`` was partitioned by, renamed or not)."""
        return LocalDataset(tuple(c.then(fn) for c in ds.chains), fn.schema,
                            tuple(partitioned_by) if partitioned_by else None, ds.buckets if partitioned_by else 0)

    def shuffle(self, ds: LocalDataset, by: Sequence[str], fn: Optional[Fn] = None, desc: str = "",
                min_partitions: int = 1) -> LocalDataset:
        """Rows with equal ``by`` values in one partition (spilled by hash), then ``fn`` over each partition."""
        by = tuple(by)
        buckets = max(self.buckets, int(min_partitions))
        sp = self.spills.spill(self._name("shuffle"), ds.schema, buckets)
        pending: List[pa.Table] = []
        rows = 0

        def flush() -> None:
            nonlocal pending, rows
            if pending:
                t = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
                sp.add(hash_columns(t, by), t)
                pending, rows = [], 0
                spill.trim_memory()

        for table in self.tables(ds, desc):
            if table.num_rows:
                pending.append(table)
                rows += table.num_rows
                if rows >= self.batch_rows:
                    flush()
        flush()
        logger.debug("shuffle %s: %d rows into %d buckets (peak RSS %d MB)", desc or sp.name, sp.rows, buckets,
                     peak_mb())
        files = tuple(str(f) for f in sp.files)
        chains = tuple(Chain(BucketPart(files, i, ds.schema), (fn,) if fn else ()) for i in range(buckets)
                       if sp.counts[i])
        return LocalDataset(chains, fn.schema if fn else ds.schema, by, buckets)

    def join(self, left: LocalDataset, right: LocalDataset, on: Sequence[str], how: str = "left",
             desc: str = "") -> LocalDataset:
        """Rows of ``left`` with the columns of the ``right`` rows of equal ``on`` (``how``: left, inner, or
        anti: the left rows without a match). Both sides are shuffled by ``on`` unless they already are."""
        on = tuple(on)
        if how not in JOIN_TYPES:
            raise ValueError(f"join type must be one of {tuple(JOIN_TYPES)}")
        lp = left if self._co_partitioned(left, on) else self.shuffle(left, on, desc=desc)
        rp = right if self._co_partitioned(right, on) else self.shuffle(right, on, desc=desc)
        lb = {bucket_of(c): c for c in lp.chains}
        rb = {bucket_of(c): c for c in rp.chains}
        schema = left.schema if how == "anti" else pa.schema(
            list(left.schema) + [f for f in right.schema if f.name not in on])
        empty = Chain(ArrowPart(right.schema.empty_table()))
        chains = tuple(Chain(JoinPart(lb[i], rb.get(i, empty), left.schema, right.schema, on, how))
                       for i in sorted(lb))
        return LocalDataset(chains, schema, on, self.buckets)

    def _co_partitioned(self, ds: LocalDataset, on: Tuple[str, ...]) -> bool:
        return ds.partitioned_by == on and ds.buckets == self.buckets and all(
            bucket_of(c) is not None for c in ds.chains)

    def union(self, *datasets: LocalDataset) -> LocalDataset:
        schema = datasets[0].schema
        chains = tuple(c.then(Fn(_identity, schema)) if not ds.schema.equals(schema) else c
                       for ds in datasets for c in ds.chains)
        return LocalDataset(chains, schema)

    def gather(self, ds: LocalDataset, fn: Optional[Fn] = None) -> LocalDataset:
        """Every row in one partition, then ``fn`` over it (only for data that fits in memory: verified
        near-duplicate edges, small results)."""
        part = GatherPart(ds.chains, ds.schema)
        return LocalDataset((Chain(part, (fn,) if fn else ()),), fn.schema if fn else ds.schema)

    def cache(self, ds: LocalDataset, desc: str = "") -> LocalDataset:
        """Compute ``ds`` once (each partition's output spilled to a file): reading it again costs no
        recomputation. Partitioning is kept."""
        name = self._name("cache")
        writers: Dict[int, Any] = {}
        try:
            for i, table in self._evaluate(ds, desc):
                if not table.num_rows:
                    continue
                if i not in writers:
                    path = self.spills.path / f"{name}-{i:05d}.arrow"
                    sink = pa.OSFile(str(path), "wb")
                    writers[i] = (sink, pa.ipc.new_file(sink, ds.schema), path)
                writers[i][1].write_table(conform(table, ds.schema))
        finally:
            for sink, w, _ in writers.values():
                w.close()
                sink.close()
        chains = tuple(Chain(IpcPart(str(writers[i][2]), bucket_of(ds.chains[i]))) for i in sorted(writers))
        logger.debug("cache %s: %d partitions (peak RSS %d MB)", desc or name, len(chains), peak_mb())
        return LocalDataset(chains, ds.schema, ds.partitioned_by, ds.buckets)

    def collect(self, ds: LocalDataset, desc: str = "") -> pa.Table:
        """The whole dataset as one table in this process (only for small results)."""
        return concat(self.tables(ds, desc), ds.schema)

    def count(self, ds: LocalDataset) -> int:
        return sum(t.num_rows for t in self.tables(ds))

    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any], desc: str = "") -> List[Any]:
        """``[fn(job) for job in jobs]``, in worker processes when there are several; results in job order."""
        bar = None
        if self.progress and desc:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=desc, unit="job")
        out: List[Any] = []
        try:
            pool = self._pool_for() if len(jobs) > 1 else None
            results: Iterable[Any] = pool.map(fn, jobs) if pool is not None else (fn(j) for j in jobs)
            for r in results:
                out.append(r)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return out

    # ----------------------------------------------------------------------------------------- order
    def _sorted(self, ds: LocalDataset, by: Sequence[str], position: Optional[str], desc: str
                ) -> Tuple[LocalDataset, int]:
        """``ds`` in the order of ``by``, partition after partition; with ``position``, the global rank of each
        row. Returns it and the row count.

        ``ds`` is computed once into a file per partition while the first ``by`` column is sampled and each
        partition's range noted. When the partitions' ranges do not overlap and each fits a bucket (a download
        folder's parquets: each holds its own keys, in the order the downloads completed), each is sorted on
        its own, in range order. Otherwise the rows are range-partitioned (boundaries: quantiles of the
        sample, so bucket i holds smaller values than bucket i + 1) and each bucket is sorted when read."""
        first = by[0]
        buckets = max(1, self.buckets)
        stride = max(1, self.rows_hint // (buckets * SAMPLE_PER_BUCKET))
        cached, ranges, sample = self._cache_ranges(ds, first, stride, desc)
        rows = sum(r[2] for r in ranges)
        schema = ds.schema if not position else pa.schema(list(ds.schema) + [pa.field(position, pa.int64())])
        cap = max(self.batch_rows, int(self.plan.memory_gb * (1 << 30) / 4 / spill.BUCKET_BYTES_PER_ROW))
        known = all(r[0] is not None for r in ranges)
        order = sorted(range(len(ranges)), key=lambda i: ranges[i][0]) if known else []
        lows, highs = [ranges[i][0] for i in order], [ranges[i][1] for i in order]
        if known and all(r[2] <= cap for r in ranges) and all(highs[k] < lows[k + 1] for k in range(len(order) - 1)):
            chains, at = [], 0
            for i in order:
                chains.append(Chain(SortedPart((cached.chains[i].part.file,), -1, ds.schema, tuple(by), at,
                                               position)))
                at += ranges[i][2]
            return LocalDataset(tuple(chains), schema), rows
        buckets = max(1, min(buckets, rows))
        values = np.sort(np.concatenate(sample)) if sample else np.zeros(0)
        bounds = values[(np.arange(1, buckets) * len(values)) // buckets] if len(values) else values
        sp = self.spills.spill(self._name("range"), ds.schema, buckets)
        for t in self.tables(cached):
            if t.num_rows:
                sp.add_to(np.searchsorted(bounds, _sort_values(t, first), side="right"), t)
        for c in cached.chains:
            Path(c.part.file).unlink(missing_ok=True)
        files = tuple(str(f) for f in sp.files)
        offsets = np.concatenate([[0], np.cumsum(sp.counts)[:-1]])
        chains = tuple(Chain(SortedPart(files, i, ds.schema, tuple(by), int(offsets[i]), position))
                       for i in range(sp.buckets) if sp.counts[i])
        return LocalDataset(chains, schema), rows

    def _cache_ranges(self, ds: LocalDataset, column: str, stride: int, desc: str):
        """:meth:`cache`, noting per cached partition (lowest, highest value of ``column``, rows) and sampling
        every ``stride``-th value (sort values: nulls last)."""
        cached = self.cache(ds, desc)
        ranges, sample = [], []
        for c in cached.chains:
            lo = hi = None
            n = nulls = 0
            for t in run_chain(c):
                if not t.num_rows:
                    continue
                col = t.column(column)
                nulls += col.null_count
                mm = pc.min_max(col).as_py()
                if mm["min"] is not None:
                    lo = mm["min"] if lo is None else min(lo, mm["min"])
                    hi = mm["max"] if hi is None else max(hi, mm["max"])
                n += t.num_rows
                sample.append(_sort_values(t.select([column]).take(pa.array(np.arange(0, t.num_rows, stride))),
                                           column))
            if nulls or lo is None:  # nulls sort last: no range to compare (the general path)
                lo, hi = None, None
            ranges.append((lo, hi, n))
        return cached, ranges, sample

    def sort(self, ds: LocalDataset, by: Sequence[str], position: Optional[str] = None,
             desc: str = "") -> LocalDataset:
        """``ds`` in ascending order of ``by`` (nulls last), partition after partition; ``position`` adds the
        global 0-based rank of every row under that name."""
        return self._sorted(ds, by, position, desc)[0]

    def write_table(self, ds: LocalDataset, path: PathLike, *, kind: Optional[str], info: Optional[str] = None,
                    source: Optional[Dict[str, Any]] = None, parts: int = 0, sort_by: Sequence[str] = ("key",),
                    schema: Optional[pa.Schema] = None, desc: str = "", new: bool = False) -> Summary:
        """Write ``ds`` sorted by ``sort_by`` through the one table writer (a file, or ``parts`` parts); ``new``:
        the caller knows nothing is at ``path`` yet (no older table is looked for)."""
        ordered, total = self._sorted(ds, sort_by, None, desc)
        kwargs = {"schema": schema} if schema is not None else {}
        writer = TableWriter(path, kind=kind, info=info, source=source, parts=parts, total_rows=total, new=new,
                             **kwargs)
        try:
            for table in self.tables(ordered):
                writer.write(table)
            return writer.close()
        except BaseException:
            writer.abort()
            raise


def peak_mb() -> int:
    """Peak resident memory of this process so far, in MB (0 where unknown)."""
    try:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    except OSError:
        return 0


def _identity(table: pa.Table) -> pa.Table:
    return table


def _ipc_rows(file: str) -> int:
    with pa.OSFile(file, "rb") as src:
        reader = pa.ipc.open_file(src)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
