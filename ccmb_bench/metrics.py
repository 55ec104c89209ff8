"""Ranking and classification metrics, vectorised and chunked. Everything is in percent (0-100).

Ties count against the query: a query is a hit at K when fewer than K non-positive candidates score at
least as high as its best positive (its *rank*, 0-based). Scores come either as a full matrix or as a
callable ``block(start, stop) -> [stop-start, N]`` so that at most ``block_rows`` rows of the score
matrix exist at once. ROC-AUC equals the Mann-Whitney statistic with tied scores counted half.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

ScoreSource = Union[torch.Tensor, np.ndarray, Callable[[int, int], torch.Tensor]]

DEFAULT_KS = (1, 5, 10)
BLOCK_ELEMENTS = 2 ** 24  # ~64 MB of float32 per block


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _block_fn(scores: ScoreSource) -> Callable[[int, int], torch.Tensor]:
    if callable(scores):
        return scores
    mat = _as_tensor(scores)
    return lambda a, b: mat[a:b]


def _count_at_least(s: np.ndarray, best: np.ndarray, sub_rows: int = 64) -> np.ndarray:
    """Per row, how many entries of ``s`` are >= ``best[row]`` (cache-sized sub-blocks, threads)."""
    out = np.empty(len(s), dtype=np.int64)

    def work(a: int) -> None:
        out[a:a + sub_rows] = np.count_nonzero(s[a:a + sub_rows] >= best[a:a + sub_rows, None], axis=1)

    starts = range(0, len(s), sub_rows)
    workers = max(1, min(torch.get_num_threads(), len(starts)))
    if workers == 1:
        for a in starts:
            work(a)
    else:
        with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL in the comparison
            list(pool.map(work, starts))
    return out


def query_ranks(scores: ScoreSource, positives: Sequence[Sequence[int]], num_candidates: int,
                block_rows: Optional[int] = None) -> np.ndarray:
    """0-based rank of each query's best positive, ties against the query: the number of non-positive
    candidates scoring >= the best positive. Queries without positives get -1.

    ``scores`` is a [Q, N] matrix or ``block(start, stop)``; ``positives[q]`` lists the positive columns.
    At most ``block_rows`` rows (default: ~64 MB of float32) of the score matrix are held at once.
    """
    n_q = len(positives)
    block = _block_fn(scores)
    positives = [list(dict.fromkeys(p)) for p in positives]  # a repeated positive counts once
    rows = block_rows or max(1, BLOCK_ELEMENTS // max(1, num_candidates))
    ranks = np.full(n_q, -1, dtype=np.int64)
    for start in range(0, n_q, rows):
        stop = min(n_q, start + rows)
        pos = positives[start:stop]
        lens = np.fromiter((len(p) for p in pos), dtype=np.int64, count=stop - start)
        if lens.sum() == 0:
            continue
        s = block(start, stop)
        s = (s.detach().float().cpu().numpy() if isinstance(s, torch.Tensor)
             else np.asarray(s, dtype=np.float32))
        if np.isnan(s).any():  # a NaN must never be a hit: rank it below every real score
            logger.warning("NaN scores in queries %d..%d: ranked last", start, stop - 1)
            s = np.where(np.isnan(s), -np.inf, s)
        r_idx = np.repeat(np.arange(stop - start), lens)
        c_idx = np.fromiter((c for p in pos for c in p), dtype=np.int64, count=int(lens.sum()))
        pos_scores = s[r_idx, c_idx]
        best = np.full(stop - start, -np.inf, dtype=s.dtype)
        np.maximum.at(best, r_idx, pos_scores)
        # every candidate >= the best positive, minus the positives among them (those equal to the best)
        at_least = _count_at_least(s, best)
        pos_ties = np.bincount(r_idx, weights=pos_scores >= best[r_idx], minlength=stop - start).astype(np.int64)
        has = lens > 0
        ranks[start:stop][has] = (at_least - pos_ties)[has]
    return ranks


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> Dict[int, float]:
    """Percent of queries (those with a positive, rank >= 0) whose rank is < K."""
    valid = ranks[ranks >= 0]
    if len(valid) == 0:
        return {k: float("nan") for k in ks}
    return {k: float((valid < k).mean() * 100.0) for k in ks}


def retrieval_metrics(i2t: Optional[ScoreSource], t2i: Optional[ScoreSource],
                      image_to_texts: Sequence[Sequence[int]], text_to_images: Sequence[Sequence[int]],
                      directions: Sequence[str] = ("i2t", "t2i"), ks: Sequence[int] = DEFAULT_KS,
                      block_rows: Optional[int] = None) -> Dict[str, float]:
    """``i2t_R@K``, ``t2i_R@K``, per-direction mean ``i2t_mean``/``t2i_mean`` and ``MR`` (the mean of
    every recall of the evaluated directions); plus query counts."""
    out: Dict[str, float] = {}
    recalls: List[float] = []
    sources = {"i2t": (i2t, image_to_texts, len(text_to_images)),
               "t2i": (t2i, text_to_images, len(image_to_texts))}
    for d in directions:
        scores, pos, n_cand = sources[d]
        if scores is None:
            raise ValueError(f"direction {d} requested but no scores given")
        ranks = query_ranks(scores, pos, n_cand, block_rows)
        r = recall_at_k(ranks, ks)
        for k in ks:
            out[f"{d}_R@{k}"] = r[k]
        out[f"{d}_mean"] = float(np.mean([r[k] for k in ks]))
        out[f"{d}_queries"] = int((ranks >= 0).sum())
        recalls += [r[k] for k in ks]
    out["MR"] = float(np.mean(recalls))
    return out


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1..end
    per_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = per_sorted
    return ranks


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC-AUC in percent = the Mann-Whitney U of positives over negatives / (P*N), ties count half."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        bad = np.flatnonzero(np.isnan(scores))
        raise ValueError(f"ROC-AUC: {len(bad)} NaN score(s), first at pair {int(bad[0])} (the model diverged?)")
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg) * 100.0)


def matching_metrics(scores: Sequence[float], labels: Sequence[int], threshold: float = 0.5) -> Dict[str, float]:
    """``AUC`` (percent) and ``accuracy`` at ``threshold`` (score >= threshold predicts a match)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    return {"AUC": roc_auc(s, y), "accuracy": float(((s >= threshold) == y).mean() * 100.0) if len(y) else float("nan"),
            "pairs": int(len(y)), "positives": int(y.sum())}


def classification_metrics(logits: ScoreSource, labels: Sequence[int], num_classes: int,
                           ks: Sequence[int] = (1, 5), block_rows: Optional[int] = None) -> Dict[str, float]:
    """``top1``, ``top5`` (ties against the image) and ``mean_per_class_recall`` (top-1 recall averaged over
    the classes that have images)."""
    positives = [[int(c)] for c in labels]
    ranks = query_ranks(logits, positives, num_classes, block_rows)
    out = {f"top{k}": float((ranks < k).mean() * 100.0) for k in ks}
    labels_np = np.asarray(labels)
    per_class = [float((ranks[labels_np == c] < 1).mean()) for c in np.unique(labels_np)]
    out["mean_per_class_recall"] = float(np.mean(per_class) * 100.0)
    out["images"] = int(len(labels_np))
    return out
