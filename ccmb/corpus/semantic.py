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
Reads only the scores parquet and the float16 embedding shards (never a model).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List

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


def kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0, sample: int = 200_000) -> np.ndarray:
    """Spherical k-means centroids ([k, D], unit rows) of the unit rows of ``x`` (Lloyd, cosine)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    k = max(1, min(k, n))
    fit = x if n <= sample else x[rng.choice(n, sample, replace=False)]
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
    k = clusters or max(1, int(round(len(rows) / TARGET_CLUSTER_SIZE)))
    cent = kmeans(emb, k, seed=seed)
    bands = nearest_centroids(emb, cent, assign)
    threshold = 1.0 - eps
    edges = groups.candidate_edges(bands, lambda a, b: (emb[a] * emb[b]).sum(1) >= threshold)
    node = np.full(n, -1, np.int64)
    node[rows] = np.arange(len(rows))
    return groups.star_reps(node, len(rows), edges)


def _semantic_level(input_dir: Path, meta: pa.Table, eligible: np.ndarray, config: DedupConfig
                    ) -> List[LevelDrops]:
    scores = config.params.get(PARAM_SCORES)
    if not scores:
        raise CurationError("the semantic dedup level needs a scores file: ccmb dedup --semantic SCORES.parquet")
    eps = float(config.params.get(PARAM_EPS, DEFAULT_EPS))
    if not 0 <= eps < 1:
        raise ValueError(f"--eps must be within [0, 1), got {eps}")
    keys, emb = read_embeddings(scores)
    idx = pc.index_in(meta.column("key"), value_set=keys)
    has = idx.is_valid().to_numpy(zero_copy_only=False)
    pos = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.flatnonzero(eligible & has)
    missing = int((eligible & ~has).sum())
    if missing:
        logger.warning("semantic dedup: %d eligible samples have no embedding in %s (kept)", missing, scores)
    reps = semantic_reps(emb[pos[rows]], rows, meta.num_rows, eps,
                         clusters=int(config.params.get(PARAM_CLUSTERS, 0) or 0))
    return [drops_from_reps(reps, REASON)]


#: The level's name (``--semdedup/--no-semdedup``; ``--semantic SCORES.parquet`` switches it on with its input).
LEVEL = "semdedup"

register_level(DedupLevel(
    LEVEL, REASON, _semantic_level, None, (),
    "Level 5: semantic near-duplicates (SemDeDup: k-means + exact cosine of ccmb score embeddings); "
    "needs --semantic SCORES.parquet, which switches it on.", default=False))
