"""Grouping primitives of dedup, in numpy: exact groups, LSH band candidates, connected components.

Rows are always in key order, so "lowest row index" is "lowest key": the representative of every group.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .hashing import string_hashes

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
    codes = pc.dictionary_encode(values).indices  # int32
    c = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False)
    del codes
    prev_max = np.empty_like(c)
    prev_max[0] = -1
    np.maximum.accumulate(c[:-1], out=prev_max[1:])
    first_rows = np.flatnonzero(c > prev_max)  # first_rows[code] = first row with that code
    del prev_max
    out = np.full(n, -1, np.int64)
    valid = c >= 0
    out[valid] = first_rows[c[valid]]
    return out


def first_occurrence_u64(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """:func:`first_occurrence` for a uint64 array restricted to ``valid`` rows; sort-based (an unstable
    numpy sort plus a per-run minimum), several times faster and leaner than hashing 64-bit values."""
    n = len(values)
    out = np.full(n, -1, np.int64)
    idx_type = np.int32 if n < 2**31 else np.int64
    rows = np.flatnonzero(valid).astype(idx_type)
    if not len(rows):
        return out
    v = values[rows]
    order = np.argsort(v)
    v = v[order]
    rows = rows[order]
    del order
    new = np.empty(len(v), bool)
    new[0] = True
    np.not_equal(v[1:], v[:-1], out=new[1:])
    del v
    mins = np.minimum.reduceat(rows, np.flatnonzero(new))
    run = np.cumsum(new, dtype=idx_type) - 1
    del new
    out[rows] = mins[run]
    return out


def band_pairs(col: np.ndarray, max_pairs_per_step: int = 1 << 22) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Pairs (i, j), i != j, of positions with equal ``col`` values (one LSH band), in chunks.

    Sort-based: equal values form runs (values seen once, almost all, are dropped right after the sort);
    pairs are generated run-locally by increasing offset, so the work is proportional to the number of
    candidate pairs, never to all pairs.
    """
    m = len(col)
    if m < 2:
        return
    order = np.argsort(col)
    s = col[order]
    same = s[1:] == s[:-1]
    if not same.any():
        return
    repeated = np.zeros(m, bool)
    repeated[:-1] |= same
    repeated[1:] |= same
    keep = np.flatnonzero(repeated)
    order, s = order[keep], s[keep]
    m = len(s)
    new_run = np.empty(m, bool)
    new_run[0] = True
    np.not_equal(s[1:], s[:-1], out=new_run[1:])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_start, m))
    remaining = run_len[run_id] - (np.arange(m) - run_start[run_id]) - 1  # members after this one in its run
    cand = np.flatnonzero(remaining > 0)
    d = 1
    while len(cand):
        for lo in range(0, len(cand), max_pairs_per_step):
            part = cand[lo: lo + max_pairs_per_step]
            yield order[part], order[part + d]
        d += 1
        cand = cand[remaining[cand] >= d]


def candidate_edges(bands: np.ndarray, verify: Verify, node_of_item: Optional[np.ndarray] = None,
                    verify_chunk: int = 1 << 20) -> Tuple[np.ndarray, np.ndarray]:
    """Verified edges between nodes whose items (rows of ``bands``) share at least one band value.

    An item is a node by default; ``node_of_item`` maps items to nodes when a node has several (e.g. the
    hash variants of one image): pairs of items of one node are skipped. Candidates of all bands are
    collected and deduplicated first, so ``verify`` (the exact check) sees each node pair once."""
    n_nodes = int(node_of_item.max()) + 1 if node_of_item is not None and len(node_of_item) else len(bands)
    found = []
    for j in range(bands.shape[1]):
        for a, b in band_pairs(np.ascontiguousarray(bands[:, j])):
            if node_of_item is not None:
                a, b = node_of_item[a], node_of_item[b]
                other = a != b
                a, b = a[other], b[other]
            if len(a):
                found.append(np.unique(np.minimum(a, b).astype(np.int64) * n_nodes + np.maximum(a, b)))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    packed = np.unique(np.concatenate(found))
    del found
    ea, eb = [], []
    for lo in range(0, len(packed), verify_chunk):
        part = packed[lo: lo + verify_chunk]
        a, b = part // n_nodes, part % n_nodes
        ok = verify(a, b)
        ea.append(a[ok])
        eb.append(b[ok])
    return np.concatenate(ea).astype(np.int64), np.concatenate(eb).astype(np.int64)


def component_reps(node_of_row: np.ndarray, n_nodes: int, edges: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per row, the lowest row of its connected component (-1 where ``node_of_row`` is -1).

    Transitive (A~B, B~C groups A with C): only for exact relations; near-duplicates use
    :func:`star_reps`."""
    n = len(node_of_row)
    out = np.full(n, -1, np.int64)
    rows = np.flatnonzero(node_of_row >= 0)
    if not len(rows):
        return out
    from scipy.sparse import coo_matrix  # scipy only when grouping (``ccmb --help`` stays light)
    from scipy.sparse.csgraph import connected_components

    a, b = edges
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=False)
    c = comp[node_of_row[rows]]
    min_row = np.full(comp.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(min_row, c, rows)
    out[rows] = min_row[c]
    return out


def star_reps(node_of_row: np.ndarray, n_nodes: int, edges: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per row, its representative (-1 where ``node_of_row`` is -1): groups without chaining.

    Nodes are visited in the order of their lowest row; an unassigned node becomes a centre (its lowest
    row is kept) and takes every still unassigned node it has a verified edge with. So every row's
    representative is its own node's lowest row or the lowest row of a node verified against its node
    directly (never through an intermediate), and every representative is itself kept."""
    n = len(node_of_row)
    out = np.full(n, -1, np.int64)
    rows = np.flatnonzero(node_of_row >= 0)
    if not len(rows):
        return out
    first = np.full(n_nodes, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, node_of_row[rows], rows)
    rep_node = np.arange(n_nodes, dtype=np.int64)
    a, b = edges
    if len(a):
        rep_node = greedy_star_centres(a, b, n_nodes, first)
    out[rows] = first[rep_node[node_of_row[rows]]]
    return out


def greedy_star_centres(a: np.ndarray, b: np.ndarray, n_nodes: int,
                        priority: Optional[np.ndarray] = None) -> np.ndarray:
    """The centre each node stands for (itself when it is a centre or unlinked) under the greedy star rule:
    linked nodes are visited by ascending ``priority`` (node number when None); an unassigned node becomes
    a centre and takes its unassigned neighbours."""
    from scipy.sparse import coo_matrix

    graph = coo_matrix((np.ones(2 * len(a), np.int8), (np.concatenate([a, b]), np.concatenate([b, a]))),
                       shape=(n_nodes, n_nodes)).tocsr()
    indptr, indices = graph.indptr, graph.indices
    linked = np.flatnonzero(np.diff(indptr) > 0)
    if priority is not None:
        linked = linked[np.argsort(priority[linked], kind="stable")]
    rep = np.arange(n_nodes, dtype=np.int64)
    assigned = np.zeros(n_nodes, bool)
    for node in linked.tolist():
        if assigned[node]:
            continue
        assigned[node] = True
        nb = indices[indptr[node]: indptr[node + 1]]
        nb = nb[~assigned[nb]]
        assigned[nb] = True
        rep[nb] = node
    return rep


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
    rows = np.flatnonzero(out >= 0)
    for _ in range(64):
        target = out[rows]
        chained = out[target] >= 0
        if not chained.any():
            return out
        rows = rows[chained]
        out[rows] = out[target[chained]]
    raise RuntimeError("duplicate_of pointers form a cycle")


def maybe(arr: Optional[np.ndarray], n: int) -> np.ndarray:
    return arr if arr is not None else np.full(n, -1, np.int64)


def fixed_width_rows(column) -> Tuple[List[np.ndarray], np.ndarray]:
    """Zero-copy numpy views (rows x width bytes) of each chunk of a fixed-size-binary column, and the
    first row index of each chunk."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    width = column.type.byte_width
    views, starts, at = [], [], 0
    for ch in chunks:
        buf = ch.buffers()[1]
        data = np.frombuffer(buf, np.uint8, len(ch) * width, ch.offset * width) if len(ch) else \
            np.zeros(0, np.uint8)
        views.append(data.reshape(len(ch), width))
        starts.append(at)
        at += len(ch)
    return views, np.asarray(starts, np.int64)


def first_occurrence_fixed(column, eligible: np.ndarray) -> np.ndarray:
    """:func:`first_occurrence` for a fixed-size-binary column (e.g. 32-byte SHA-256) restricted to
    ``eligible`` rows, with little memory: rows are grouped by their first 8 bytes (a uint64, hash-based),
    then every row is compared in full with its group's first row; the rare rows whose prefix collides
    with a different value are regrouped exactly. Null or ineligible rows get -1."""
    views, starts = fixed_width_rows(column)
    n = int(sum(len(v) for v in views))
    if n == 0:
        return np.zeros(0, np.int64)
    valid = eligible.copy()
    if isinstance(column, pa.ChunkedArray) and column.null_count or \
            isinstance(column, pa.Array) and column.null_count:
        valid &= column.is_valid().to_numpy(zero_copy_only=False)
    prefix = np.concatenate([np.ascontiguousarray(v[:, :8]).view(np.uint64).ravel() for v in views])
    reps = first_occurrence_u64(prefix, valid)
    del prefix

    def rows_bytes(rows: np.ndarray) -> np.ndarray:
        chunk = np.searchsorted(starts, rows, side="right") - 1
        out = np.empty((len(rows), views[0].shape[1] if views else 0), np.uint8)
        for c in np.unique(chunk):
            sel = chunk == c
            out[sel] = views[c][rows[sel] - starts[c]]
        return out

    dup = np.flatnonzero((reps >= 0) & (reps != np.arange(n)))
    if len(dup):
        differ = dup[np.any(rows_bytes(dup) != rows_bytes(reps[dup]), axis=1)]
        if len(differ):  # prefix collisions: regroup these rows exactly (first occurrence by full value)
            # a differing row's value occurs only among differing rows of its prefix group, so grouping
            # them among themselves (in row order) is exact
            seen: dict = {}
            for r, value in zip(differ.tolist(), (bytes(b) for b in rows_bytes(differ))):
                reps[r] = seen.setdefault(value, r)
    return reps


def first_occurrence_strings(column, eligible: np.ndarray) -> np.ndarray:
    """:func:`first_occurrence` for a string column restricted to ``eligible`` rows, exact and lean:
    group by a 64-bit hash (sort-based), compare every duplicate with its group's first row in full, and
    regroup the rare rows whose hash collides with a different string."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    n = len(column)
    valid = eligible & column.is_valid().to_numpy(zero_copy_only=False) if n else eligible
    reps = first_occurrence_u64(string_hashes(column), valid)
    dup = np.flatnonzero((reps >= 0) & (reps != np.arange(n)))
    if len(dup):
        same = pc.equal(column.take(pa.array(dup)), column.take(pa.array(reps[dup])))
        differ = dup[~pc.fill_null(same, False).to_numpy(zero_copy_only=False)]
        if len(differ):  # hash collisions: regroup these rows exactly among themselves
            seen: dict = {}
            for r, value in zip(differ.tolist(), column.take(pa.array(differ)).to_pylist()):
                reps[r] = seen.setdefault(value, r)
    return reps


def star_reps_of_edges(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`star_reps` over an edge list alone, for nodes numbered by their lowest row (so node order is
    row order): (linked nodes ascending, the centre node each stands for; itself when it is a centre).

    Same greedy as :func:`star_reps`: memory is per edge, never per row of the corpus."""
    if not len(a):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    # ascending node = ascending lowest row, as star_reps visits them
    rep = greedy_star_centres(inv[: len(a)], inv[len(a):], len(nodes))
    return nodes, nodes[rep]
