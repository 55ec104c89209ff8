"""Semantic dedup (SemDeDup): k-means on the image embeddings of ``ccmb score``, then within each cluster
drop samples whose cosine to a kept one exceeds ``1 - eps``.

A dedup level (``semdedup``, reason ``duplicate_semantic``) of :mod:`ccmb.corpus.dedup`, switched on by
``ccmb dedup --semantic SCORES.parquet --eps E``. The clusters only propose candidates: every sample is
assigned to its ``assign`` nearest centroids (2 by default, so near pairs across a cluster border are still
proposed) and every candidate pair is checked with the exact cosine of the two embeddings before it groups;
groups are stars (:func:`ccmb.corpus.groups.star_reps`): a dropped sample is within ``1 - eps`` of the kept
sample it names, the lowest key of a group stays. Eligible samples without an embedding (their image did
not decode for ``ccmb score``, or the scores file lacks them) are kept and counted in the log.

k-means is plain Lloyd iterations in numpy on a sample of at most ``kmeans_sample`` rows (then one
assignment pass over all rows, in blocks): no extra dependency; the cost is dominated by the exact checks.
Reads only the scores parquet and the float16 embedding shards (never a model). ``--engine spark``:
:func:`spark_semantic_drops` (partitioned by cluster, the same table; measured library choice in
docs/curation.md, ``perf/bench_semdedup.py``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import groups
from .dedup import DedupConfig, DedupLevel, LevelDrops, drops_from_reps, register_level
from .scores import read_embeddings
from .table import CurationError

logger = logging.getLogger(__name__)

REASON = "duplicate_semantic"
DEFAULT_EPS = 0.05
#: Params of ``DedupConfig.params`` this level reads.
PARAM_SCORES, PARAM_EPS, PARAM_CLUSTERS = "semantic_scores", "semantic_eps", "semantic_clusters"
TARGET_CLUSTER_SIZE = 256
KMEANS_SAMPLE = 200_000


def kmeans_fit_rows(n: int, sample: int, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Rows (sorted, so in key order) k-means fits on: None (all rows) when ``n <= sample``."""
    return None if n <= sample else np.sort(rng.choice(n, sample, replace=False))


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


def kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0, sample: Optional[int] = None) -> np.ndarray:
    """Spherical k-means centroids ([k, D], unit rows) of the unit rows of ``x``, fitted on at most
    ``sample`` rows (default ``KMEANS_SAMPLE``; chosen for ``seed``, kept in row order: the Spark engine collects the same rows)."""
    rng = np.random.default_rng(seed)
    idx = kmeans_fit_rows(len(x), sample or KMEANS_SAMPLE, rng)
    return lloyd(x if idx is None else x[idx], k, rng, iters)


def clusters_for(n: int, clusters: int = 0) -> int:
    """The number of k-means clusters for ``n`` samples (``clusters`` when given)."""
    return clusters or max(1, int(round(n / TARGET_CLUSTER_SIZE)))


def near_pairs(emb: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """The exact check of candidate pairs (rows ``a``, ``b`` of the unit ``emb``): cosine >= threshold."""
    return (emb[a] * emb[b]).sum(1) >= threshold


def nearest_centroids(x: np.ndarray, cent: np.ndarray, assign: int = 2, block: int = 65536) -> np.ndarray:
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
                  assign: int = 2, seed: int = 0) -> np.ndarray:
    """Per row of ``n``, its representative among ``rows`` (whose unit embeddings are ``emb``): cosine
    >= 1 - eps, star groups (-1 outside ``rows``)."""
    if not len(rows):
        return np.full(n, -1, np.int64)
    cent = kmeans(emb, clusters_for(len(rows), clusters), seed=seed)
    assigned = nearest_centroids(emb, cent, assign)
    threshold = 1.0 - eps
    # one item per (sample, assigned cluster): every pair sharing any of its clusters is a candidate
    items = assigned.T.reshape(-1, 1)
    of_item = np.tile(np.arange(len(rows), dtype=np.int64), assigned.shape[1])
    edges = groups.candidate_edges(items, lambda a, b: near_pairs(emb, a, b, threshold), node_of_item=of_item)
    node = np.full(n, -1, np.int64)
    node[rows] = np.arange(len(rows))
    return groups.star_reps(node, len(rows), edges)


def _params(config: DedupConfig):
    """(scores path, eps, clusters) of the level, checked."""
    scores = config.params.get(PARAM_SCORES)
    if not scores:
        raise CurationError("the semantic dedup level needs a scores file: ccmb dedup --semantic SCORES.parquet")
    eps = float(config.params.get(PARAM_EPS, DEFAULT_EPS))
    if not 0 <= eps < 1:
        raise ValueError(f"--eps must be within [0, 1), got {eps}")
    return str(scores), eps, int(config.params.get(PARAM_CLUSTERS, 0) or 0)


def _semantic_level(input_dir: Path, meta: pa.Table, eligible: np.ndarray, config: DedupConfig
                    ) -> List[LevelDrops]:
    scores, eps, clusters = _params(config)
    keys, emb = read_embeddings(scores)
    idx = pc.index_in(meta.column("key"), value_set=keys)
    has = idx.is_valid().to_numpy(zero_copy_only=False)
    pos = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.flatnonzero(eligible & has)
    missing = int((eligible & ~has).sum())
    if missing:
        logger.warning("semantic dedup: %d eligible samples have no embedding in %s (kept)", missing, scores)
    reps = semantic_reps(emb[pos[rows]], rows, meta.num_rows, eps,
                         clusters=clusters)
    return [drops_from_reps(reps, REASON)]


def _unit_vectors(emb_dir: str, kind: str = "image"):
    """flatMap: (score shard, [(key, row)]) -> (key, float32 unit vector bytes), read in the task (the same
    arithmetic as :func:`ccmb.corpus.scores.read_embeddings`)."""
    def fn(item):
        shard, members = item
        f = Path(emb_dir) / f"{Path(shard).stem}.{kind}.npy"
        if not f.is_file():
            raise CurationError(f"{f}: embedding shard missing (rerun `ccmb score`, it resumes)")
        arr = np.load(f, allow_pickle=False)
        keys = [m[0] for m in members]
        emb = arr[np.asarray([m[1] for m in members], np.int64)].astype(np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return [(k, emb[i].tobytes()) for i, k in enumerate(keys)]
    return fn


def _as_matrix(blobs) -> np.ndarray:
    return np.stack([np.frombuffer(b, np.float32) for b in blobs]) if len(blobs) else np.zeros((0, 0), np.float32)


def _assign_clusters(cent_bc, assign: int):
    """mapInArrow: (key, vec) -> (cluster, key, vec), one row per assigned cluster."""
    def fn(batches):
        cent = cent_bc.value
        for batch in batches:
            blobs = batch.column(1).to_pylist()
            if not blobs:
                continue
            near = nearest_centroids(_as_matrix(blobs), cent, assign)
            reps = near.shape[1]
            yield pa.RecordBatch.from_arrays(
                [pa.array(near.T.reshape(-1)), pa.concat_arrays([batch.column(0)] * reps),
                 pa.concat_arrays([batch.column(1)] * reps)], names=["cluster", "key", "vec"])
    return fn


def _cluster_edges(threshold: float, chunk: int = 1 << 16):
    """flatMap: (cluster, [(key, vec)]) -> verified edges (a, b), a < b, among the cluster's samples."""
    def fn(item):
        _, members = item
        members = sorted(members)
        keys = [m[0] for m in members]
        emb = _as_matrix([m[1] for m in members])
        m = len(keys)
        if m < 2:
            return []
        ia, ib = np.triu_indices(m, 1)
        out = []
        for lo in range(0, len(ia), chunk):
            a, b = ia[lo:lo + chunk], ib[lo:lo + chunk]
            ok = near_pairs(emb, a, b, threshold)
            out += [(keys[i], keys[j]) for i, j in zip(a[ok].tolist(), b[ok].tolist())]
        return out
    return fn


def spark_semantic_drops(spark, elig, config: DedupConfig, scratch, seed: int = 0, assign: int = 2,
                         sample: Optional[int] = None):
    """``--engine spark``: the drops (key, r, d) of the level, partitioned by cluster. Centroids are fitted
    once on the driver on the same bounded sample as in-process (at most ``sample`` rows, chosen for
    ``seed``), broadcast; executors read the vectors, assign clusters, check every pair of a cluster with
    the exact cosine; the verified edges group like the other near-duplicate levels
    (:func:`ccmb.corpus.spark_dist.star_centres`), so the table equals the in-process one."""
    from pyspark.sql import functions as F

    from .scores import read_scores, scores_info
    from .spark_dist import _node_drops

    scores, eps, clusters = _params(config)
    read_scores(scores, ["key", "shard", "row", "error"])  # clear error for a bad file
    emb_dir = Path(scores_info(scores).get("embeddings") or "")
    if not emb_dir.is_absolute():
        emb_dir = Path(scores).parent / emb_dir
    scored = spark.read.parquet(str(scores)).where(F.col("error").isNull()).select("key", "shard", "row")
    mine = elig.select("key").join(scored, "key")
    by_shard = mine.groupBy("shard").agg(F.collect_list(F.struct("key", "row")).alias("m"))
    n_shards = max(1, by_shard.count())
    rdd = by_shard.rdd.map(lambda r: (r["shard"], [(x["key"], int(x["row"])) for x in r["m"]])) \
        .repartition(n_shards).flatMap(_unit_vectors(str(emb_dir)))
    vecs = scratch.keep(spark.createDataFrame(rdd, schema="key string, vec binary"), "semvecs")
    n = vecs.count()
    missing = elig.count() - n
    if missing:
        logger.warning("semantic dedup: %d eligible samples have no embedding in %s (kept)", missing, scores)
    if not n:
        return [vecs.select("key", F.lit(REASON).alias("r"), F.lit(None).cast("string").alias("d")).limit(0)]
    rng = np.random.default_rng(seed)
    idx = kmeans_fit_rows(n, sample or KMEANS_SAMPLE, rng)
    if idx is None:
        fit_rows = vecs.orderBy("key").collect()
    else:  # the idx-th rows in key order, ranked on the executors
        chosen = spark.sparkContext.broadcast(set(idx.tolist()))
        ranked = vecs.rdd.map(lambda r: (r["key"], r["vec"])).sortByKey().zipWithIndex()
        fit_rows = sorted(ranked.filter(lambda kv: kv[1] in chosen.value).map(lambda kv: kv[0]).collect())
    fit = _as_matrix([r[1] for r in fit_rows])
    cent = lloyd(fit, clusters_for(n, clusters), rng)
    del fit, fit_rows
    cent_bc = spark.sparkContext.broadcast(cent)
    items = vecs.mapInArrow(_assign_clusters(cent_bc, assign), "cluster long, key string, vec binary")
    n_parts = max(1, min(len(cent), spark.sparkContext.defaultParallelism * 4))
    edges = items.rdd.map(lambda r: (int(r["cluster"]), (r["key"], bytes(r["vec"])))).groupByKey(n_parts) \
        .flatMap(_cluster_edges(1.0 - eps))
    edges = spark.createDataFrame(edges, schema="a string, b string")
    members = vecs.select("key", F.col("key").alias("node"))
    return [_node_drops(spark, members, edges, REASON, scratch)]


#: The level's name (``--semdedup/--no-semdedup``; ``--semantic SCORES.parquet`` switches it on with its input).
LEVEL = "semdedup"

register_level(DedupLevel(
    LEVEL, REASON, _semantic_level, None, (),
    "Level 5: semantic near-duplicates (SemDeDup: k-means + exact cosine of ccmb score embeddings); "
    "needs --semantic SCORES.parquet, which switches it on.", default=False))
