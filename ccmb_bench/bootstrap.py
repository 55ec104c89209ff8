"""Uncertainty from per-query results: bootstrap intervals and paired comparisons, vectorised with numpy.

A *per-query* result is ``{group: {array name: np.ndarray}}``: the query groups are resampled independently
(retrieval: ``i2t`` image queries and ``t2i`` text queries; matching: ``pairs``; classification: ``images``).
Each task's statistic takes one weight matrix ``W[b, n]`` per group (how often each query is drawn in
resample ``b``; all ones = the point estimate) and returns ``{metric: values[b]}``, so ``B`` resamples cost a
few matrix products instead of ``B`` metric evaluations.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ccmb_bench.options import DEFAULT_RESAMPLES, DEFAULT_SEED

logger = logging.getLogger(__name__)

PerQuery = Dict[str, Dict[str, np.ndarray]]
Weights = Dict[str, np.ndarray]
CHUNK_ELEMENTS = 1 << 23  # resamples x queries held at once (~64 MB of float64)


# ------------------------------------------------------------------------------------------ statistics

def _wmean(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Weighted means of the columns of ``x`` [n, m] for each weight row of ``w`` [b, n] -> [b, m]."""
    total = w.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ x) / total


def retrieval_statistic(pq: PerQuery, w: Weights, ks: Sequence[int]) -> Dict[str, np.ndarray]:
    """``{d}_R@K``, ``{d}_mean`` and ``MR`` from ranks (rank -1: not counted; rank >= K: a miss)."""
    out: Dict[str, np.ndarray] = {}
    recalls: List[np.ndarray] = []
    for d in ("i2t", "t2i"):
        if d not in pq:
            continue
        rank = pq[d]["rank"]
        valid = rank >= 0
        hits = (rank[valid, None] < np.asarray(ks)[None, :]).astype(np.float64)
        r = _wmean(w[d] if valid.all() else w[d][:, valid], hits) * 100.0  # no copy when every query counts
        for j, k in enumerate(ks):
            out[f"{d}_R@{k}"] = r[:, j]
        out[f"{d}_mean"] = r.mean(1)
        recalls.append(r)
    out["MR"] = np.concatenate(recalls, axis=1).mean(1)
    return out


def auc_statistic(score: np.ndarray, label: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted ROC-AUC (percent, tied scores count half) for each weight row of ``w`` [b, n]."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    y = label[order].astype(bool)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(s)) + 1])  # groups of equal scores
    wp = np.add.reduceat(w[:, order] * y, starts, axis=1)
    wn = np.add.reduceat(w[:, order] * ~y, starts, axis=1)
    neg_below = np.cumsum(wn, axis=1) - wn
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wp * (neg_below + 0.5 * wn)).sum(1) / (wp.sum(1) * wn.sum(1)) * 100.0


def matching_statistic(pq: PerQuery, w: Weights, threshold: float = 0.5) -> Dict[str, np.ndarray]:
    p = pq["pairs"]
    score, label = p["score"].astype(np.float64), p["label"].astype(bool)
    correct = ((score >= threshold) == label).astype(np.float64)[:, None]
    return {"AUC": auc_statistic(score, label, w["pairs"]), "accuracy": _wmean(w["pairs"], correct)[:, 0] * 100.0}


def classification_statistic(pq: PerQuery, w: Weights, ks: Sequence[int] = (1, 5)) -> Dict[str, np.ndarray]:
    g = pq["images"]
    rank, top1, label = g["rank"], g["rank_top1"], g["label"]
    wi = w["images"]
    hits = (rank[:, None] < np.asarray(ks)[None, :]).astype(np.float64)
    r = _wmean(wi, hits) * 100.0
    out = {f"top{k}": r[:, j] for j, k in enumerate(ks)}
    if "topk" in g and len(g["topk"]):  # CLIP_benchmark with fewer than 5 classes: top-K above its k is NaN
        for k in ks:
            if k > int(g["topk"].max()):
                out[f"top{k}"] = np.full(len(r), np.nan)
    order = np.argsort(label, kind="mergesort")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(label[order])) + 1])
    per_class_n = np.add.reduceat(wi[:, order], starts, axis=1)
    per_class_hit = np.add.reduceat(wi[:, order] * (top1[order] < 1), starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean_per_class_recall"] = np.nanmean(np.where(per_class_n > 0, per_class_hit / per_class_n, np.nan),
                                                  axis=1) * 100.0
    return out


def statistic_for(task: str, meta: Dict[str, object]) -> Optional[Callable[[PerQuery, Weights], Dict[str, np.ndarray]]]:
    """The vectorised statistic of ``task`` (None when the task has no per-query metrics)."""
    if task == "retrieval":
        ks = tuple(int(k) for k in meta.get("ks", (1, 5, 10)))  # type: ignore[union-attr]
        return lambda pq, w: retrieval_statistic(pq, w, ks)
    if task == "matching":
        thr = float(meta.get("threshold", 0.5))  # type: ignore[arg-type]
        return lambda pq, w: matching_statistic(pq, w, thr)
    if task == "classification":
        ks = tuple(int(k) for k in meta.get("ks", (1, 5)))  # type: ignore[union-attr]
        return lambda pq, w: classification_statistic(pq, w, ks)
    return None


# ------------------------------------------------------------------------------------------ resampling

def group_sizes(pq: PerQuery) -> Dict[str, int]:
    return {g: len(next(iter(arrays.values()))) for g, arrays in pq.items()}


def _weights(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """[b, n] counts of each query in ``b`` resamples of ``n`` queries with replacement."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def resampled(statistic: Callable[[PerQuery, Weights], Dict[str, np.ndarray]], pqs: Sequence[PerQuery],
              resamples: int, seed: int) -> List[Dict[str, np.ndarray]]:
    """``statistic`` of each per-query result in ``pqs`` under the same ``resamples`` draws of their (aligned)
    queries: one ``{metric: values[resamples]}`` per element of ``pqs``."""
    sizes = group_sizes(pqs[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(1, max(sizes.values(), default=1)))
    parts: List[List[Dict[str, np.ndarray]]] = [[] for _ in pqs]
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        w = {g: _weights(rng, b, n) for g, n in sizes.items()}
        for j, pq in enumerate(pqs):
            parts[j].append(statistic(pq, w))
    return [{m: np.concatenate([p[m] for p in ps]) for m in ps[0]} if ps else {} for ps in parts]


def point(statistic: Callable[[PerQuery, Weights], Dict[str, np.ndarray]], pq: PerQuery) -> Dict[str, float]:
    """The statistic on the data as it is (every query weight 1)."""
    w = {g: np.ones((1, n)) for g, n in group_sizes(pq).items()}
    return {m: float(v[0]) for m, v in statistic(pq, w).items()}


def confidence_intervals(statistic: Callable[[PerQuery, Weights], Dict[str, np.ndarray]], pq: PerQuery,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                         level: float = 0.95) -> Dict[str, List[float]]:
    """Percentile bootstrap interval ``[lo, hi]`` of every metric that is defined on some resample (queries
    resampled with replacement)."""
    if resamples <= 0:
        return {}
    values = resampled(statistic, [pq], resamples, seed)[0]
    alpha = (1.0 - level) / 2.0 * 100.0
    out = {}
    for m, v in values.items():
        v = v[np.isfinite(v)]
        if len(v):  # a metric undefined on every resample (e.g. top-5 of 3 classes) has no interval
            out[m] = [float(np.percentile(v, alpha)), float(np.percentile(v, 100.0 - alpha))]
    return out


def paired_test(statistic: Callable[[PerQuery, Weights], Dict[str, np.ndarray]], a: PerQuery, b: PerQuery,
                resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Dict[str, Dict[str, float]]:
    """Paired bootstrap of ``metric(a) - metric(b)`` over the same resampled queries (``a`` and ``b`` aligned):
    per metric the observed difference, its 95% interval and the two-sided p-value
    ``(1 + #{|d_b - d| >= |d|}) / (B + 1)`` (the resampled differences centred on the null)."""
    pa, pb = point(statistic, a), point(statistic, b)
    va, vb = resampled(statistic, [a, b], resamples, seed)
    out: Dict[str, Dict[str, float]] = {}
    for m in pa:
        d = pa[m] - pb[m]
        diffs = va[m] - vb[m]
        diffs = diffs[np.isfinite(diffs)]
        if not len(diffs) or not np.isfinite(d):
            out[m] = {"a": pa[m], "b": pb[m], "diff": d, "ci95": [float("nan")] * 2, "p_value": float("nan")}
            continue
        p = (1 + int(np.count_nonzero(np.abs(diffs - d) >= abs(d) - 1e-12))) / (len(diffs) + 1)
        out[m] = {"a": pa[m], "b": pb[m], "diff": d,
                  "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))], "p_value": p}
    return out


# ------------------------------------------------------------------------------------ per-query files

def flatten(pq: PerQuery, meta: Dict[str, object]) -> Dict[str, np.ndarray]:
    """``group/name`` arrays plus ``meta/<key>`` (for ``np.savez``)."""
    out = {f"{g}/{k}": np.asarray(v) for g, arrays in pq.items() for k, v in arrays.items()}
    for k, v in meta.items():
        out[f"meta/{k}"] = np.asarray(v)
    return out


def unflatten(arrays: Dict[str, np.ndarray]) -> Tuple[PerQuery, Dict[str, object]]:
    pq: PerQuery = {}
    meta: Dict[str, object] = {}
    for key, v in arrays.items():
        group, _, name = key.partition("/")
        if group == "meta":
            meta[name] = v.tolist()
        else:
            pq.setdefault(group, {})[name] = v
    return pq, meta


def align_all(pqs: Sequence[PerQuery]) -> Tuple[List[PerQuery], Dict[str, List[int]]]:
    """Restrict every per-query result to the queries (by ``query`` id, per group) that all of them have, in
    the order of the first; returns them and, per group, how many queries each had before."""
    groups = [g for g in pqs[0] if all(g in pq for pq in pqs)]
    out: List[PerQuery] = [{} for _ in pqs]
    before: Dict[str, List[int]] = {}
    for g in groups:
        ids = [[str(x) for x in pq[g]["query"]] for pq in pqs]
        before[g] = [len(i) for i in ids]
        shared = set(ids[0]).intersection(*ids[1:])
        keep = [q for q in dict.fromkeys(ids[0]) if q in shared]
        for j, pq in enumerate(pqs):
            pos = {q: k for k, q in enumerate(ids[j])}  # a repeated id: its last row (ids are unique in our files)
            idx = np.fromiter((pos[q] for q in keep), dtype=np.int64, count=len(keep))
            out[j][g] = {k: v[idx] for k, v in pq[g].items()}
    return out, before


def align(a: PerQuery, b: PerQuery) -> Tuple[PerQuery, PerQuery, Dict[str, Tuple[int, int, int]]]:
    """Restrict ``a`` and ``b`` to the queries (by ``query`` id) both have, in the same order; returns the
    counts ``(shared, only in a, only in b)`` per group."""
    out_a: PerQuery = {}
    out_b: PerQuery = {}
    counts: Dict[str, Tuple[int, int, int]] = {}
    for g in a:
        if g not in b:
            continue
        ids_a = [str(x) for x in a[g]["query"]]
        pos_b = {str(x): j for j, x in enumerate(b[g]["query"])}
        ia = np.array([i for i, q in enumerate(ids_a) if q in pos_b], dtype=np.int64)
        ib = np.array([pos_b[ids_a[i]] for i in ia], dtype=np.int64)
        counts[g] = (len(ia), len(ids_a) - len(ia), len(pos_b) - len(ia))
        out_a[g] = {k: v[ia] for k, v in a[g].items()}
        out_b[g] = {k: v[ib] for k, v in b[g].items()}
    return out_a, out_b, counts
