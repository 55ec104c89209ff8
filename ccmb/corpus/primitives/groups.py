"""Grouping primitives of dedup, in numpy: LSH band candidates, verified edges, star groups (and connected
components, for comparison: near-duplicates never group transitively).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import numpy as np


Verify = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
