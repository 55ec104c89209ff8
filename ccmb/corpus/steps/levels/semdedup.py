"""Dedup level 5, ``semdedup`` (SemDeDup): near-duplicate images by their embeddings from ``ccmb score``.

Switched on by ``ccmb dedup --semantic SCORES.parquet --eps E``. Spherical k-means (numpy Lloyd iterations,
fitted on a bounded sample of at most ``kmeans_sample`` rows, chosen by a seeded hash of the key so that every
engine picks the same) proposes candidates: every sample goes to its ``assign`` nearest centroids (2, so near
pairs across a cluster border are still proposed), and every pair of samples sharing a cluster is checked
with the exact cosine of the two embeddings (>= 1 - eps) before it groups; groups are stars, the lowest key
stays (:mod:`ccmb.corpus.steps.neardup`). Eligible samples without an embedding (their image did not decode
for ``ccmb score``, or the scores file lacks them) are kept and counted in the log. Reads only the scores
parquet and the float16 embedding shards (never a model).
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...primitives import groups
from ...primitives.columns import binary_matrix, packed_binary
from ...primitives.hashing import splitmix64, string_hashes
from ...tables.dataflow import Fn
from ...tables.schema import CurationError
from ...tables.scores import embeddings_dir, read_scores, read_vectors
from ..exact import DROPS_SCHEMA
from ..neardup import EDGES, drops_from_edges
from . import DedupLevel, Option

logger = logging.getLogger(__name__)

NAME = LEVEL_NAME = "semdedup"
REASON = "duplicate_semantic"
DEFAULT_EPS = 0.05
#: Parameters of the level (``DedupConfig.params``).
PARAM_SCORES, PARAM_EPS, PARAM_CLUSTERS = "semantic_scores", "semantic_eps", "semantic_clusters"
TARGET_CLUSTER_SIZE = 256
KMEANS_SAMPLE = 200_000
SEED = 0
ASSIGN = 2
VECS = pa.schema([("key", pa.string()), ("_id", pa.int64()), ("vec", pa.binary())])
ITEMS = pa.schema([("cluster", pa.int64()), ("key", pa.string()), ("_id", pa.int64()), ("vec", pa.binary())])


# ------------------------------------------------------------------------------------------- k-means (numpy)

def fit_sample(hashes: np.ndarray, n: int, sample: int, seed: int = SEED) -> np.ndarray:
    """Which of ``n`` rows (by a 64-bit hash each: of the key) k-means fits on: all when ``n <= sample``,
    else about ``sample`` chosen by a seeded hash (the same rows on every engine)."""
    if n <= sample:
        return np.ones(len(hashes), bool)
    with np.errstate(over="ignore"):
        h = splitmix64(hashes.astype(np.uint64) ^ splitmix64(np.full(len(hashes), seed, np.uint64)))
    return h < np.uint64(int(sample / n * 2.0 ** 64))


def lloyd(fit: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20) -> np.ndarray:
    """Spherical k-means centroids ([k, D], unit rows) of the unit rows ``fit`` (Lloyd, cosine)."""
    k = max(1, min(k, len(fit)))
    cent = fit[rng.choice(len(fit), k, replace=False)].copy()
    for _ in range(iters):
        lab = np.argmax(fit @ cent.T, axis=1)
        new = np.zeros_like(cent)
        np.add.at(new, lab, fit)
        empty = ~new.any(axis=1)
        if empty.any():  # re-seed empty clusters with random points
            new[empty] = fit[rng.choice(len(fit), int(empty.sum()), replace=False)]
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, cent, atol=1e-6):
            cent = new
            break
        cent = new
    return cent


def kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = SEED, sample: Optional[int] = None) -> np.ndarray:
    """Spherical k-means centroids ([k, D], unit rows) of the unit rows of ``x`` (fitted on at most about
    ``sample`` rows, chosen by :func:`fit_sample` over the row numbers)."""
    rows = fit_sample(np.arange(len(x), dtype=np.uint64), len(x), sample or KMEANS_SAMPLE, seed)
    return lloyd(x[rows], k, np.random.default_rng(seed), iters)


def clusters_for(n: int, clusters: int = 0) -> int:
    """The number of k-means clusters for ``n`` samples (``clusters`` when given)."""
    return clusters or max(1, int(round(n / TARGET_CLUSTER_SIZE)))


def near_pairs(emb: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """The exact check of candidate pairs (rows ``a``, ``b`` of the unit ``emb``): cosine >= threshold."""
    return (emb[a] * emb[b]).sum(1) >= threshold


def nearest_centroids(x: np.ndarray, cent: np.ndarray, assign: int = ASSIGN, block: int = 65536) -> np.ndarray:
    """[n, assign] ids of the ``assign`` nearest centroids of each row."""
    assign = max(1, min(assign, len(cent)))
    out = np.empty((len(x), assign), np.int64)
    for lo in range(0, len(x), block):
        sims = x[lo:lo + block] @ cent.T
        if assign == 1:
            out[lo:lo + block, 0] = np.argmax(sims, axis=1)
        else:
            out[lo:lo + block] = np.argpartition(-sims, assign - 1, axis=1)[:, :assign]
    return out


def semantic_reps(emb: np.ndarray, rows: np.ndarray, n: int, eps: float, clusters: int = 0,
                  assign: int = ASSIGN, seed: int = SEED) -> np.ndarray:
    """In memory (tests, perf): per row of ``n``, its representative among ``rows`` (whose unit embeddings are
    ``emb``, in key order): cosine >= 1 - eps, star groups (-1 outside ``rows``). The same rule as the level."""
    if not len(rows):
        return np.full(n, -1, np.int64)
    cent = kmeans(emb, clusters_for(len(rows), clusters), seed=seed)
    assigned = nearest_centroids(emb, cent, assign)
    items = assigned.T.reshape(-1, 1)
    of_item = np.tile(np.arange(len(rows), dtype=np.int64), assigned.shape[1])
    edges = groups.candidate_edges(items, lambda a, b: near_pairs(emb, a, b, 1.0 - eps), node_of_item=of_item)
    node = np.full(n, -1, np.int64)
    node[rows] = np.arange(len(rows))
    return groups.star_reps(node, len(rows), edges)


# ------------------------------------------------------------------------------------------- steps

def _params(config):
    scores = config[PARAM_SCORES]
    if not scores:
        raise CurationError("the semantic dedup level needs a scores file: ccmb dedup --semantic SCORES.parquet")
    eps = float(config[PARAM_EPS])
    if not 0 <= eps < 1:
        raise ValueError(f"--eps must be within [0, 1), got {eps}")
    return str(scores), eps, int(config[PARAM_CLUSTERS] or 0)


def _scored(t: pa.Table) -> pa.Table:
    t = t.filter(pc.is_null(t.column("error")))
    return pa.table({"key": t.column("key"), "s_shard": t.column("shard"), "s_row": t.column("row")})


def _rows(t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("key"), "_id": t.column("_id")})


def _vectors(emb_dir: str, t: pa.Table) -> pa.Table:
    """One partition of (key, row id, score shard, row) (every row of a shard is here): the unit vectors."""
    out = []
    shards = t.column("s_shard")
    for shard in pc.unique(shards).to_pylist():
        rows = t.filter(pc.equal(shards, shard))
        vec = packed_binary(read_vectors(emb_dir, shard, rows.column("s_row").to_numpy(zero_copy_only=False)))
        out.append(pa.table({"key": rows.column("key"), "_id": rows.column("_id"), "vec": vec}))
    return pa.concat_tables(out) if out else VECS.empty_table()


def as_matrix(column) -> np.ndarray:
    """float32 vectors from their packed binaries."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = len(arr[0].as_py()) // 4 if len(arr) else 0
    return binary_matrix(arr, np.float32, width)


def _sample(n: int, sample: int, t: pa.Table) -> pa.Table:
    return t.filter(pa.array(fit_sample(string_hashes(t.column("key")), n, sample)))


def _assign(cent: np.ndarray, t: pa.Table) -> pa.Table:
    if not t.num_rows:
        return ITEMS.empty_table()
    near = nearest_centroids(as_matrix(t.column("vec")), cent)
    reps = near.shape[1]
    take = pa.array(np.tile(np.arange(t.num_rows), reps))
    return pa.table({"cluster": near.T.reshape(-1), "key": t.column("key").take(take),
                     "_id": t.column("_id").take(take), "vec": t.column("vec").take(take)})


def _cluster_edges(threshold: float, t: pa.Table, chunk: int = 1 << 16) -> pa.Table:
    """One partition of cluster items: the verified edges (a, b, keys) among the samples of each cluster."""
    out = []
    clusters = t.column("cluster").to_numpy()
    for c in np.unique(clusters).tolist():
        m = t.filter(pa.array(clusters == c))
        m = m.take(pc.sort_indices(m, sort_keys=[("key", "ascending")]))
        if m.num_rows < 2:
            continue
        emb = as_matrix(m.column("vec"))
        ia, ib = np.triu_indices(m.num_rows, 1)
        ids = m.column("_id").to_numpy()
        for lo in range(0, len(ia), chunk):
            a, b = ia[lo:lo + chunk], ib[lo:lo + chunk]
            ok = near_pairs(emb, a, b, threshold)
            if ok.any():
                out.append(pa.table({"a": ids[a[ok]], "b": ids[b[ok]], "ka": m.column("key").take(pa.array(a[ok])),
                                     "kb": m.column("key").take(pa.array(b[ok]))}))
    return pa.concat_tables(out) if out else EDGES.empty_table()


def _distinct_edges(t: pa.Table) -> pa.Table:
    if not t.num_rows:
        return EDGES.empty_table()
    return t.group_by(["a", "b", "ka", "kb"], use_threads=False).aggregate([]).select(EDGES.names)


def drops(engine, rows, config, context):
    scores, eps, clusters = _params(config)
    read_scores(scores, ["key", "shard", "row", "error"])  # a clear error for a bad file
    emb_dir = str(embeddings_dir(scores))
    scored = engine.read_files([scores], ["key", "shard", "row", "error"], Fn(_scored, pa.schema(
        [("key", pa.string()), ("s_shard", pa.string()), ("s_row", pa.int32())])))
    mine = engine.join(engine.map(rows, Fn(_rows, pa.schema([("key", pa.string()), ("_id", pa.int64())]))),
                       scored, ["key"], "inner")
    vecs = engine.cache(engine.shuffle(mine, ["s_shard"], Fn(partial(_vectors, emb_dir), VECS),
                                       desc="dedup: semdedup vectors"))
    n = engine.count(vecs)
    missing = engine.count(rows) - n
    if missing:
        logger.warning("semantic dedup: %d eligible samples have no embedding in %s (kept)", missing, scores)
    if not n:
        return engine.map(vecs, Fn(_no_drops, DROPS_SCHEMA))
    fit = engine.collect(engine.map(vecs, Fn(partial(_sample, n, KMEANS_SAMPLE), VECS)))
    fit = fit.take(pc.sort_indices(fit, sort_keys=[("key", "ascending")]))
    cent = lloyd(as_matrix(fit.column("vec")), clusters_for(n, clusters), np.random.default_rng(SEED))
    items = engine.map(vecs, Fn(partial(_assign, cent), ITEMS))
    edges = engine.shuffle(items, ["cluster"], Fn(partial(_cluster_edges, 1.0 - eps), EDGES),
                           desc="dedup: semdedup clusters")
    edges = engine.shuffle(edges, ["a", "b"], Fn(_distinct_edges, EDGES))
    return drops_from_edges(engine, edges, REASON)


def _no_drops(t: pa.Table) -> pa.Table:
    return DROPS_SCHEMA.empty_table()


LEVEL = DedupLevel(
    NAME, REASON, "Level 5: semantic near-duplicates (SemDeDup: k-means + exact cosine of ccmb score embeddings); "
    "needs --semantic SCORES.parquet, which switches it on.", order=50, drops=drops, default=False,
    options=(
        Option("--semantic", PARAM_SCORES, None, "Scores parquet of `ccmb score`: adds the semantic level (k-means + "
               "exact cosine of the image embeddings).", type="path", enables=True),
        Option("--eps", PARAM_EPS, DEFAULT_EPS, "Semantic level: drop when cosine >= 1 - eps."),
        Option("--clusters", PARAM_CLUSTERS, 0, "Semantic level: k-means clusters (0: n/256)."),
    ))
