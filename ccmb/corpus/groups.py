"""Grouping primitives of dedup, in numpy: exact groups, LSH band candidates, connected components.

Rows are always in key order, so "lowest row index" is "lowest key": the representative of every group.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

Verify = Callable[[np.ndarray, np.ndarray], np.ndarray]


def first_occurrence(values: Union[pa.Array, pa.ChunkedArray]) -> np.ndarray:
    """For each row, the index of the first row with an equal value (-1 for nulls). O(n), hash-based.

    ``dictionary_encode`` numbers values in order of first appearance, so a row holds a new value exactly
    when its code exceeds every earlier code.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    if n == 0:
        return np.zeros(0, np.int64)
    codes = pc.dictionary_encode(values).indices
    valid = pc.is_valid(codes).to_numpy(zero_copy_only=False)
    c = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    prev_max = np.maximum.accumulate(np.concatenate([[-1], c[:-1]]))
    is_first = c > prev_max
    first_rows = np.flatnonzero(is_first)  # first_rows[code] = first row with that code
    out = np.full(n, -1, np.int64)
    out[valid] = first_rows[c[valid]]
    return out


def band_pairs(col: np.ndarray, max_pairs_per_step: int = 1 << 22) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Pairs (i, j), i != j, of positions with equal ``col`` values (one LSH band), in chunks.

    Sort-based: equal values form runs; pairs are generated run-locally by increasing offset, so the
    work is proportional to the number of candidate pairs, never to all pairs.
    """
    m = len(col)
    if m < 2:
        return
    order = np.argsort(col, kind="stable")
    s = col[order]
    new_run = np.concatenate([[True], s[1:] != s[:-1]])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.concatenate([run_start, [m]]))
    pos = np.arange(m)
    remaining = run_len[run_id] - (pos - run_start[run_id]) - 1  # members after this one in its run
    cand = np.flatnonzero(remaining > 0)
    d = 1
    while len(cand):
        i = cand
        for lo in range(0, len(i), max_pairs_per_step):
            part = i[lo: lo + max_pairs_per_step]
            yield order[part], order[part + d]
        d += 1
        cand = cand[remaining[cand] >= d]


def candidate_edges(bands: np.ndarray, verify: Verify) -> Tuple[np.ndarray, np.ndarray]:
    """Verified edges between items (rows of ``bands``) sharing at least one band value."""
    ea, eb = [], []
    for j in range(bands.shape[1]):
        for a, b in band_pairs(np.ascontiguousarray(bands[:, j])):
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            ok = verify(lo, hi)
            ea.append(lo[ok])
            eb.append(hi[ok])
    if not ea:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = np.concatenate(ea), np.concatenate(eb)
    if len(a):
        packed = np.unique(a.astype(np.int64) * len(bands) + b)
        a, b = packed // len(bands), packed % len(bands)
    return a.astype(np.int64), b.astype(np.int64)


def component_reps(node_of_row: np.ndarray, n_nodes: int, edges: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per row, the lowest row of its connected component (-1 where ``node_of_row`` is -1).

    Rows with the same node are in one component; ``edges`` link nodes.
    """
    n = len(node_of_row)
    out = np.full(n, -1, np.int64)
    rows = np.flatnonzero(node_of_row >= 0)
    if not len(rows):
        return out
    a, b = edges
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=False)
    c = comp[node_of_row[rows]]
    min_row = np.full(comp.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(min_row, c, rows)
    out[rows] = min_row[c]
    return out


def unique_nodes(values: np.ndarray, rows: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Collapse equal values: (unique values, node id per row of the full table, -1 outside ``rows``)."""
    uniq, inverse = np.unique(values, return_inverse=True, axis=0 if values.ndim > 1 else None)
    node = np.full(n, -1, np.int64)
    node[rows] = inverse.reshape(-1)
    return uniq, node


def phash_bands(hashes: np.ndarray, bands: int) -> np.ndarray:
    """Split 64-bit hashes into ``bands`` contiguous bit ranges (as equal as possible), shape (N, bands)."""
    h = hashes.view(np.uint64) if hashes.dtype == np.int64 else hashes.astype(np.uint64)
    widths = [64 // bands + (1 if i < 64 % bands else 0) for i in range(bands)]
    out = np.empty((len(h), bands), np.int64)
    shift = 64
    for j, w in enumerate(widths):
        shift -= w
        out[:, j] = ((h >> np.uint64(shift)) & np.uint64((1 << w) - 1)).astype(np.int64)
    return out


def phash_band_ranges(bands: int) -> list:
    """(shift, width) of each band of :func:`phash_bands` (for engines that split bits themselves)."""
    widths = [64 // bands + (1 if i < 64 % bands else 0) for i in range(bands)]
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def resolve_chains(dup_of: np.ndarray) -> np.ndarray:
    """Follow ``dup_of`` pointers (-1 = kept) until a kept row: each dropped row points at a kept one."""
    out = dup_of.copy()
    for _ in range(64):
        has = out >= 0
        nxt = np.where(has, out, 0)
        step = np.where(has & (out[nxt] >= 0), out[nxt], out)
        if np.array_equal(step, out):
            return out
        out = step
    raise RuntimeError("duplicate_of pointers form a cycle")


def maybe(arr: Optional[np.ndarray], n: int) -> np.ndarray:
    return arr if arr is not None else np.full(n, -1, np.int64)
