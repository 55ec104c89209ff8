"""Hash-partitioned spilling: the in-process curation's way to keep memory bounded by a budget.

A :class:`Spill` is ``P`` on-disk buckets of rows partitioned by a 64-bit hash of a value: every
:meth:`Spill.add` writes one Arrow IPC file holding one record batch per bucket (rows stay in the order
they were added, so rows added in row order are in row order within a bucket); :meth:`Spill.bucket`
reads bucket ``i`` back from every file (never memory-mapped: what is read is what is resident). Rows
with equal values land in the same bucket, so grouping one bucket at a time is exact.

:func:`plan` turns a memory budget (``--memory-gb``) and a row count into the batch size of streamed
reads and the number of buckets; :func:`find_repeats` is the external (hash-partitioned) check that
finds values seen before (e.g. duplicate ImageKeys) with memory bounded by the bucket size.
"""
from __future__ import annotations

import ctypes
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

#: Default budget of the in-process engine (``--memory-gb``).
DEFAULT_MEMORY_GB = 4.0
#: Working bytes per row of a bucket while it is grouped (value, hash, row, sort and check buffers).
BUCKET_BYTES_PER_ROW = 1000
#: Working bytes per row of a streamed batch (raw columns, normalised copies, hashes, partition copies).
BATCH_BYTES_PER_ROW = 2000
MAX_BATCH_ROWS = 1 << 18
MIN_BATCH_ROWS = 1 << 10
MAX_BUCKETS = 4096


@dataclass(frozen=True)
class Plan:
    """How a step streams and partitions: rows per streamed batch and buckets per spill."""

    memory_gb: float
    batch_rows: int
    buckets: int


def plan(memory_gb: float, rows: int, buckets: Optional[int] = None) -> Plan:
    """Batch size and bucket count for ``rows`` rows within ``memory_gb``: a batch takes at most an eighth
    of the budget, a bucket being grouped a quarter (``buckets`` overrides the count, e.g. in tests)."""
    if not memory_gb > 0:
        raise ValueError(f"memory_gb must be > 0, got {memory_gb}")
    budget = memory_gb * (1 << 30)
    batch_rows = int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, budget / 8 / BATCH_BYTES_PER_ROW)))
    if buckets is None:
        buckets = int(min(MAX_BUCKETS, max(1, math.ceil(rows * BUCKET_BYTES_PER_ROW / (budget / 4)))))
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    return Plan(memory_gb, batch_rows, buckets)


_LIBC = None


def trim_memory() -> None:
    """Give freed memory back to the OS after a bucket: pyarrow's pool and the C heap (numpy's large
    arrays come from glibc malloc, whose dynamic mmap threshold otherwise lets freed buckets fragment the
    heap: resident memory then creeps up bucket after bucket)."""
    global _LIBC
    pa.default_memory_pool().release_unused()
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018  (glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def bucket_of(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of each 64-bit hash (its high bits: the low ones may also order rows in a bucket)."""
    h = hashes.view(np.uint64) if hashes.dtype == np.int64 else hashes.astype(np.uint64, copy=False)
    return ((h >> np.uint64(32)) % np.uint64(buckets)).astype(np.int64)


class Spill:
    """``buckets`` on-disk buckets of rows of ``schema`` under ``folder`` (files named ``NAME-NNNNN.arrow``)."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema, buckets: int) -> None:
        self.folder = Path(folder)
        self.name = name
        self.schema = schema
        self.buckets = buckets
        self.files: List[Path] = []
        self.rows = 0
        self.counts = np.zeros(buckets, np.int64)

    def add(self, hashes: np.ndarray, table: pa.Table) -> None:
        """Append ``table``'s rows, each to the bucket of its hash (row order kept within a bucket)."""
        if table.num_rows:
            self.add_to(bucket_of(hashes, self.buckets), table)

    def add_to(self, buckets: np.ndarray, table: pa.Table) -> None:
        """Append ``table``'s rows to the given buckets (one per row; row order kept within a bucket)."""
        if not table.num_rows:
            return
        b = np.asarray(buckets, np.int64)
        order = np.argsort(b, kind="stable")
        counts = np.bincount(b, minlength=self.buckets)
        table = table.select(self.schema.names).cast(self.schema).take(pa.array(order))
        path = self.folder / f"{self.name}-{len(self.files):05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
            empty = pa.RecordBatch.from_pylist([], schema=self.schema)
            at = 0
            for c in counts.tolist():
                writer.write_batch(table.slice(at, c).combine_chunks().to_batches()[0] if c else empty)
                at += c
        self.files.append(path)
        self.rows += table.num_rows
        self.counts += counts

    def bucket(self, i: int) -> pa.Table:
        """All rows of bucket ``i``, in the order they were added."""
        return read_bucket(self.files, i, self.schema)

    def __iter__(self) -> Iterator[pa.Table]:
        """The buckets in turn (memory handed back to the OS between them, :func:`trim_memory`)."""
        for i in range(self.buckets):
            yield self.bucket(i)
            trim_memory()

    def remove(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files = []


def read_bucket(files, i: int, schema: pa.Schema) -> pa.Table:
    """Bucket ``i`` of a spill's files (read, never memory-mapped: what is read is what is resident)."""
    batches = []
    for path in files:
        with pa.OSFile(str(path), "rb") as src:
            batch = pa.ipc.open_file(src).get_batch(i)
            if batch.num_rows:
                batches.append(batch)
    if not batches:
        return schema.empty_table()
    return pa.Table.from_batches(batches, schema=schema).combine_chunks()


class SpillDir:
    """A temporary folder for spills (under the output's folder: same file system, removed at the end)."""

    def __init__(self, near: Path, prefix: str = ".ccmb-spill-") -> None:
        parent = Path(near).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))

    def spill(self, name: str, schema: pa.Schema, buckets: int) -> Spill:
        return Spill(self.path, name, schema, buckets)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "SpillDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


REPEAT_SCHEMA = pa.schema([pa.field("h", pa.uint64()), pa.field("lo", pa.uint64()), pa.field("row", pa.int64()),
                           pa.field("info", pa.string())])


class RepeatFinder:
    """External check for values seen before: feed (128-bit digest as two uint64, row, an info string),
    then :meth:`repeats` gives the rows whose value occurred at a lower row (ascending) and their info,
    bucket by bucket (memory: one bucket; the result is per repeated row)."""

    def __init__(self, spills: SpillDir, buckets: int) -> None:
        self.spill = spills.spill("repeats", REPEAT_SCHEMA, buckets)

    def add(self, hi: np.ndarray, lo: np.ndarray, rows: np.ndarray, info: List[str]) -> None:
        self.spill.add(hi, pa.table({"h": pa.array(hi, pa.uint64()), "lo": pa.array(lo, pa.uint64()),
                                     "row": pa.array(rows, pa.int64()), "info": pa.array(info, pa.string())}))

    def repeats(self) -> Tuple[np.ndarray, List[str]]:
        out_rows, out_info = [], []
        for t in self.spill:
            if not t.num_rows:
                continue
            hi = t.column("h").to_numpy()
            lo = t.column("lo").to_numpy()
            rows = t.column("row").to_numpy()
            order = np.lexsort((rows, lo, hi))
            hi, lo = hi[order], lo[order]
            new = np.ones(len(order), bool)
            new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
            rep = order[~new]
            out_rows.append(rows[rep])
            out_info.append(t.column("info").take(pa.array(rep)))
        if not out_rows:
            return np.zeros(0, np.int64), []
        rows = np.concatenate(out_rows)
        order = np.argsort(rows)
        return rows[order], pa.chunked_array(out_info, pa.string()).take(pa.array(order)).to_pylist()
