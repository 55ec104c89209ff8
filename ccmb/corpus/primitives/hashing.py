"""64-bit hashes of Arrow columns, vectorised with numpy: for grouping and partitioning, never trusted alone
(every grouping that uses them compares the values in full).

:func:`hash_columns` is what the in-process engine partitions rows by (equal values, equal hash, same
bucket); :func:`string_hashes` and :func:`splitmix64` are the building blocks (MinHash and the shuffle rank of
``build-shards`` use them too).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_P64 = np.uint64(0x100000001B3)
HASH_BLOCK_ROWS = 1 << 16
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (a good 64-bit mixer), elementwise with wrapping arithmetic."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _as_binary_chunks(column):
    """Chunks of a string or binary column as arrays with int32 offsets (large types cast down)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for ch in chunks:
        if pa.types.is_dictionary(ch.type):
            ch = ch.dictionary_decode()
        if pa.types.is_large_string(ch.type) or pa.types.is_large_binary(ch.type):
            ch = ch.cast(pa.string() if pa.types.is_large_string(ch.type) else pa.binary())
        elif pa.types.is_fixed_size_binary(ch.type):
            ch = ch.cast(pa.binary())
        out.append(ch)
    return out


def string_hashes(column) -> np.ndarray:
    """A 64-bit hash of every string or binary value (polynomial over the bytes mod 2^64, splitmix64-finalised),
    computed block by block with numpy; nulls hash to 0. Independent of how the column is chunked."""
    out = []
    for ch in _as_binary_chunks(column):
        n = len(ch)
        h = np.zeros(n, np.uint64)
        if n:
            _, ob, db = ch.buffers()
            offsets = np.frombuffer(ob, np.int32, n + 1, ch.offset * 4).astype(np.int64)
            data_all = np.frombuffer(db, np.uint8) if db is not None else np.zeros(0, np.uint8)
            for r0 in range(0, n, HASH_BLOCK_ROWS):
                r1 = min(n, r0 + HASH_BLOCK_ROWS)
                lo, hi = offsets[r0], offsets[r1]
                lengths = np.diff(offsets[r0: r1 + 1])
                sums = np.zeros(r1 - r0, np.uint64)
                if hi > lo:
                    data = data_all[lo:hi].astype(np.uint64)
                    starts = offsets[r0:r1] - lo
                    pos = np.arange(hi - lo) - np.repeat(starts, lengths)
                    powers = np.cumprod(np.full(int(lengths.max()), _P64, np.uint64))
                    with np.errstate(over="ignore"):
                        terms = data * powers[pos]
                    nonempty = lengths > 0
                    sums[nonempty] = np.add.reduceat(terms, starts[nonempty])
                with np.errstate(over="ignore"):
                    h[r0:r1] = splitmix64(sums + lengths.astype(np.uint64) * _GOLDEN)
            if ch.null_count:
                h[~ch.is_valid().to_numpy(zero_copy_only=False)] = 0
        out.append(h)
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def hash_column(column) -> np.ndarray:
    """A 64-bit hash per value of one column (strings, binaries, integers, booleans; nulls hash to a constant)."""
    typ = column.type
    if pa.types.is_dictionary(typ):
        column = column.cast(typ.value_type)
        typ = typ.value_type
    if (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ)
            or pa.types.is_large_binary(typ) or pa.types.is_fixed_size_binary(typ)):
        return string_hashes(column)
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        values = np.asarray(pc.fill_null(column, 0).cast(pa.int64()).to_numpy(), np.int64)
        h = splitmix64(values.view(np.uint64))
        if column.null_count:
            h[~column.is_valid().to_numpy(zero_copy_only=False)] = 0
        return h
    raise TypeError(f"cannot hash a column of type {typ}")


def hash_columns(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """One 64-bit hash per row over ``columns`` (equal values give equal hashes, whatever the chunking)."""
    h = np.zeros(table.num_rows, np.uint64)
    for i, name in enumerate(columns):
        with np.errstate(over="ignore"):
            h = splitmix64(h ^ (hash_column(table.column(name)) + np.uint64(i)))
    return h
