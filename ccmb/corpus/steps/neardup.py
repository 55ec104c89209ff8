"""Near-duplicate groups on any engine: approximate candidates, exact verification, star groups.

The pipeline of the near-duplicate levels (caption, pHash; semdedup from its verified edges on):

1. *nodes*: rows with equal values collapse to one node, named by its lowest key (shuffle by value);
2. *items*: each node's LSH band buckets (a level function: MinHash bands, pHash bit bands);
3. *candidates*: node pairs sharing a bucket (shuffle by it), each pair once (shuffle by the pair);
4. *verification*: both values joined to every candidate pair and the exact measure applied (a level
   function: n-gram Jaccard, pHash variant distance) - the index only proposes; a level may add a second
   check (``confirm``: the pHash level's image check of aligned thumbnails, joined in for these pairs only),
   which also confirms every row of step 1 against its node: a row it rejects becomes a node of its own;
5. *star groups* over the verified edges in key order (:func:`ccmb.corpus.primitives.groups.greedy_star_centres`,
   one partition: memory per verified edge): a dropped node is within the threshold of its centre, never
   chained through another node;
6. *drops*: moved nodes point at their centre; rows equal to a node follow the node's centre.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..primitives import groups
from ..primitives.hashing import splitmix64
from ..tables.dataflow import Fn
from .exact import DROPS_SCHEMA

PAIRS = pa.schema([("a", pa.int64()), ("b", pa.int64())])
EDGES = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("ka", pa.string()), ("kb", pa.string())])
#: LSH items: a node and one of its band buckets (a 64-bit value that differs between bands).
ITEMS = pa.schema([("node", pa.int64()), ("bucket", pa.int64())])
CENTRES = pa.schema([("node", pa.int64()), ("node_key", pa.string()), ("centre", pa.int64()),
                     ("centre_key", pa.string())])


def member_schema(value_type: pa.DataType) -> pa.Schema:
    return pa.schema([("key", pa.string()), ("_id", pa.int64()), ("v", value_type)])


def node_schema(value_type: pa.DataType) -> pa.Schema:
    return pa.schema([("key", pa.string()), ("_id", pa.int64()), ("node", pa.int64()), ("node_key", pa.string()),
                      ("v", value_type)])


def constant(value, n: int, typ=pa.string()) -> pa.Array:
    return pa.nulls(n, typ).fill_null(value) if n else pa.array([], typ)


# ------------------------------------------------------------------------------------------- step functions

def _nodes(value_type: pa.DataType, t: pa.Table) -> pa.Table:
    """One partition of members (every row of a value is here): each row with its node (the lowest key's
    row id of its value) and that key."""
    if not t.num_rows:
        return node_schema(value_type).empty_table()
    first = t.group_by("v", use_threads=False).aggregate([("key", "min")])
    rep_key = first.column("key_min").take(pc.index_in(t.column("v"), value_set=first.column("v")))
    is_node = pc.equal(t.column("key"), rep_key)
    ids = t.filter(is_node)
    node = ids.column("_id").take(pc.index_in(rep_key, value_set=ids.column("key")))
    return pa.table({"key": t.column("key"), "_id": t.column("_id"), "node": node, "node_key": rep_key,
                     "v": t.column("v")})


def _same_value_pairs(t: pa.Table) -> pa.Table:
    """Rows equal to a node they are not (a = the node, b = the row): pairs for a level's second check."""
    t = t.filter(pc.not_equal(t.column("key"), t.column("node_key")))
    return pa.table({"a": t.column("node"), "b": t.column("_id"), "ka": t.column("node_key"), "kb": t.column("key")})


def _rejected_rows(t: pa.Table) -> pa.Table:
    return pa.table({"_id": t.column("b"), "own": pa.array(np.ones(t.num_rows, bool))})


def _own_node(value_type: pa.DataType, t: pa.Table) -> pa.Table:
    """Rows the second check rejected against their node (``own``) become nodes of their own."""
    own = pc.fill_null(t.column("own"), False)
    return pa.table({"key": t.column("key"), "_id": t.column("_id"),
                     "node": pc.if_else(own, t.column("_id"), t.column("node")),
                     "node_key": pc.if_else(own, t.column("key"), t.column("node_key")), "v": t.column("v")})


def _confirmed_b(t: pa.Table) -> pa.Table:
    return pa.table({"b": t.column("b")})


def _node_rows(value_type: pa.DataType, t: pa.Table) -> pa.Table:
    keep = pc.equal(t.column("key"), t.column("node_key"))
    t = t.filter(keep)
    return pa.table({"node": t.column("node"), "node_key": t.column("node_key"), "v": t.column("v")})


def _same_value_rows(t: pa.Table) -> pa.Table:  # (key, node, node_key) of rows that are not their node
    t = t.filter(pc.not_equal(t.column("key"), t.column("node_key")))
    return pa.table({"key": t.column("key"), "node": t.column("node"), "node_key": t.column("node_key")})


def pairs_sharing(run: np.ndarray, node: np.ndarray) -> tuple:
    """Node pairs (a < b, each once) of items with an equal ``run`` value (different nodes only)."""
    found = []
    for ia, ib in groups.band_pairs(run):
        a, b = node[ia], node[ib]
        other = a != b
        if other.any():
            found.append(np.stack([np.minimum(a[other], b[other]), np.maximum(a[other], b[other])], axis=1))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)


def _band_pairs(t: pa.Table) -> pa.Table:
    """One partition of items (every item of a bucket is here): the node pairs sharing one."""
    if t.num_rows < 2:
        return PAIRS.empty_table()
    a, b = pairs_sharing(t.column("bucket").to_numpy(), t.column("node").to_numpy())
    return pa.table({"a": a, "b": b})


def _distinct_pairs(t: pa.Table) -> pa.Table:
    if not t.num_rows:
        return PAIRS.empty_table()
    return t.group_by(["a", "b"], use_threads=False).aggregate([]).select(["a", "b"])


def _side(name: str, value_type: pa.DataType, t: pa.Table) -> pa.Table:
    return pa.table({name: t.column("node"), f"k{name}": t.column("node_key"), f"v{name}": t.column("v")})


def _verified(verify, t: pa.Table) -> pa.Table:
    ok = verify(t.column("va"), t.column("vb")) if t.num_rows else np.zeros(0, bool)
    t = t.filter(pa.array(np.asarray(ok, bool)))
    return pa.table({"a": t.column("a"), "b": t.column("b"), "ka": t.column("ka"), "kb": t.column("kb")})


def _star(t: pa.Table) -> pa.Table:
    """All verified edges (one partition): per node that is not a centre, its centre, by the greedy star rule
    visiting nodes in key order."""
    if not t.num_rows:
        return CENTRES.empty_table()
    ids = np.concatenate([t.column("a").to_numpy(), t.column("b").to_numpy()])
    keys = pa.concat_arrays([t.column("ka").combine_chunks(), t.column("kb").combine_chunks()])
    nodes, first, inv = np.unique(ids, return_index=True, return_inverse=True)
    node_keys = keys.take(pa.array(first))
    priority = np.empty(len(nodes), np.int64)
    priority[pc.sort_indices(node_keys).to_numpy()] = np.arange(len(nodes))
    m = t.num_rows
    rep = groups.greedy_star_centres(inv[:m], inv[m:], len(nodes), priority)
    moved = np.flatnonzero(rep != np.arange(len(nodes)))
    return pa.table({"node": nodes[moved], "node_key": node_keys.take(pa.array(moved)),
                     "centre": nodes[rep[moved]], "centre_key": node_keys.take(pa.array(rep[moved]))})


def _moved_drops(reason: str, t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("node_key"), "reason": constant(reason, t.num_rows),
                     "duplicate_of": t.column("centre_key")})


def _follow_centre(reason: str, t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("key"), "reason": constant(reason, t.num_rows),
                     "duplicate_of": pc.coalesce(t.column("centre_key"), t.column("node_key"))})


def _centre_of_node(t: pa.Table) -> pa.Table:
    return pa.table({"node": t.column("node"), "centre_key": t.column("centre_key")})


# ------------------------------------------------------------------------------------------- the pipeline

def value_nodes(engine, members, value_type: pa.DataType, desc: str = ""):
    """(members with their node, the nodes (node, node_key, v) partitioned by node id)."""
    with_node = engine.cache(engine.shuffle(members, ["v"], Fn(partial(_nodes, value_type), node_schema(value_type)),
                                            desc=f"{desc} nodes"))
    return with_node, nodes_by_id(engine, with_node, value_type, desc)


def nodes_by_id(engine, with_node, value_type: pa.DataType, desc: str = ""):
    nodes = engine.map(with_node, Fn(partial(_node_rows, value_type),
                                     pa.schema([("node", pa.int64()), ("node_key", pa.string()), ("v", value_type)])))
    return engine.cache(engine.shuffle(nodes, ["node"], desc=f"{desc} nodes by id"))


def split_rejected(engine, with_node, same, confirm, value_type: pa.DataType):
    """Rows equal to a node (``same``: the pairs (node, row)) that ``confirm`` rejects become nodes of their
    own. Returns (members with their node, whether any row was rejected)."""
    ok = engine.map(confirm(engine, same), Fn(_confirmed_b, pa.schema([("b", pa.int64())])))
    rejected = engine.cache(engine.map(engine.join(same, ok, ["b"], "anti"),
                                       Fn(_rejected_rows, pa.schema([("_id", pa.int64()), ("own", pa.bool_())]))))
    if not engine.count(rejected):
        return with_node, False
    joined = engine.join(with_node, rejected, ["_id"], "left")
    return engine.cache(engine.map(joined, Fn(partial(_own_node, value_type), node_schema(value_type)))), True


def band_bucket(band: np.ndarray, value: np.ndarray) -> np.ndarray:
    """One 64-bit bucket per (band, value) (values of different bands land apart; a rare collision only
    proposes an extra candidate, which the exact check rejects)."""
    with np.errstate(over="ignore"):
        return splitmix64(value.astype(np.int64).view(np.uint64) ^ splitmix64(band.astype(np.uint64))).view(np.int64)


def candidate_pairs(engine, nodes_by_id, items: Fn, desc: str = ""):
    """Distinct node pairs sharing a bucket of the level's ``items`` (node, bucket)."""
    it = engine.map(nodes_by_id, items)
    pairs = engine.shuffle(it, ["bucket"], Fn(_band_pairs, PAIRS), desc=f"{desc} candidates")
    return engine.shuffle(pairs, ["a", "b"], Fn(_distinct_pairs, PAIRS))


def verify_pairs(engine, pairs, nodes_by_id, value_type: pa.DataType, verify) -> object:
    """Candidate pairs with both values joined, kept when ``verify(va, vb)`` (the exact measure) says so:
    verified edges (a, b, ka, kb)."""
    side = {}
    for name in ("a", "b"):
        schema = pa.schema([(name, pa.int64()), (f"k{name}", pa.string()), (f"v{name}", value_type)])
        side[name] = engine.map(nodes_by_id, Fn(partial(_side, name, value_type), schema), partitioned_by=(name,))
    x = engine.join(pairs, side["a"], ["a"], "inner")
    x = engine.join(x, side["b"], ["b"], "inner")
    return engine.map(x, Fn(partial(_verified, verify), EDGES))


def drops_from_edges(engine, edges, reason: str, same_value=None):
    """The drops of a near-duplicate level from its verified edges (star groups in key order); rows equal to
    a node (``same_value``: key, node, node_key) follow their node's centre."""
    centres = engine.cache(engine.gather(edges, Fn(_star, CENTRES)))
    out = engine.map(centres, Fn(partial(_moved_drops, reason), DROPS_SCHEMA))
    if same_value is not None:
        moved = engine.map(centres, Fn(_centre_of_node, pa.schema([("node", pa.int64()), ("centre_key", pa.string())])))
        joined = engine.join(same_value, moved, ["node"], "left")
        out = engine.union(out, engine.map(joined, Fn(partial(_follow_centre, reason), DROPS_SCHEMA)))
    return out


def near_duplicate_drops(engine, members, value_type: pa.DataType, items: Fn, verify, reason: str, desc: str = "",
                         confirm=None):
    """The whole pipeline (module docstring) over ``members`` (key, row id, value).

    ``confirm(engine, pairs)``: an optional second check of a level; ``pairs`` is a dataset of (a, b, ka, kb)
    (the row ids and keys of two rows) and it returns the pairs it accepts (same schema). It sees the
    verified edges and every row equal to a node (paired with that node): nothing merges without it. A
    rejected row becomes a node of its own and its candidates are found again (rare: equal values of
    different items). ``confirm.prefetch(engine, pairs)``, when it has one, is first called once with all
    those pairs (a level that reads something per row, the pHash level's thumbnails, reads it in one pass:
    the edges of a rejected row join rows already in them, its value being its old node's)."""
    with_node, by_id = value_nodes(engine, members, value_type, desc)
    edges = verify_pairs(engine, candidate_pairs(engine, by_id, items, desc), by_id, value_type, verify)
    if confirm is not None:
        edges = engine.cache(edges)
        same = engine.cache(engine.map(with_node, Fn(_same_value_pairs, EDGES)))
        if hasattr(confirm, "prefetch"):
            confirm.prefetch(engine, engine.union(same, edges))
        with_node, split = split_rejected(engine, with_node, same, confirm, value_type)
        if split:
            by_id = nodes_by_id(engine, with_node, value_type, desc)
            edges = verify_pairs(engine, candidate_pairs(engine, by_id, items, desc), by_id, value_type, verify)
        edges = confirm(engine, edges)
    same = engine.map(with_node, Fn(_same_value_rows, pa.schema([("key", pa.string()), ("node", pa.int64()),
                                                                  ("node_key", pa.string())])))
    return drops_from_edges(engine, edges, reason, same)
