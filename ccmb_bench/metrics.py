"""Ranking and classification metrics, vectorised and chunked. Everything is in percent (0-100).

A query is a hit at K when its *rank* (0-based: the candidates placed before its best positive) is below
K. By default ties count against the query (every non-positive scoring at least as high as the best
positive comes first); the reference protocols' tie orders are available (:data:`TIE_RULES`). Scores come either as a full matrix or as a
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


def _count(s: np.ndarray, best: np.ndarray, strict: bool = False, sub_rows: int = 64) -> np.ndarray:
    """Per row, how many entries of ``s`` are >= (``strict``: >) ``best[row]`` (cache-sized sub-blocks, threads)."""
    out = np.empty(len(s), dtype=np.int64)
    cmp = np.greater if strict else np.greater_equal

    def work(a: int) -> None:
        out[a:a + sub_rows] = np.count_nonzero(cmp(s[a:a + sub_rows], best[a:a + sub_rows, None]), axis=1)

    starts = range(0, len(s), sub_rows)
    workers = max(1, min(torch.get_num_threads(), len(starts)))
    if workers == 1:
        for a in starts:
            work(a)
    else:
        with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL in the comparison
            list(pool.map(work, starts))
    return out


TIE_RULES = ("against", "first", "numpy", "torch-topk")


def _tie_ranks(s: np.ndarray, pos: Sequence[Sequence[int]], best: np.ndarray, greater: np.ndarray,
               rows: np.ndarray, ties: str, order_key: Optional[np.ndarray], exact_below: Optional[int]) -> np.ndarray:
    """Ranks of the rows ``rows`` whose best positive ties with another candidate, under rule ``ties``."""
    out = greater[rows].copy()
    for j, r in enumerate(rows):
        cols = np.asarray(pos[r], dtype=np.int64)
        row = s[r]
        if ties == "first":  # stable descending sort: among equal scores the smaller key comes first
            key = order_key if order_key is not None else np.arange(len(row))
            eq = row == best[r]
            k_best = key[cols[row[cols] == best[r]]].min()
            out[j] = greater[r] + int(np.count_nonzero(eq & (key < k_best)))
        elif ties == "numpy":  # R2D2: inds = np.argsort(score)[::-1]
            if exact_below is not None and greater[r] >= exact_below:
                continue  # beyond every K asked for: the count of strictly higher scores is a lower bound
            inds = np.argsort(row)[::-1]
            where = np.empty(len(row), dtype=np.int64)
            where[inds] = np.arange(len(row))
            out[j] = int(where[cols].min())
    return out


def query_ranks(scores: ScoreSource, positives: Sequence[Sequence[int]], num_candidates: int,
                block_rows: Optional[int] = None, *, ties: str = "against", order_key: Optional[np.ndarray] = None,
                no_positive: str = "skip", exact_below: Optional[int] = None) -> np.ndarray:
    """0-based rank of each query's best positive: the number of candidates placed before it.

    ``ties`` orders candidates that score exactly as much as the best positive: ``against`` (all of them
    before it), ``first`` (a stable descending sort: smaller ``order_key``, default the column index, first),
    ``numpy`` (``np.argsort(row)[::-1]``, exact for ranks below ``exact_below``, else a lower bound),
    ``torch-topk`` (the order of ``torch.topk(row, exact_below)``; ranks outside it are ``exact_below``).
    Queries without positives get -1 (``no_positive="skip"``) or ``num_candidates`` (``"miss"``: never a
    hit, but counted). ``scores`` is a [Q, N] matrix or ``block(start, stop)``; ``positives[q]`` lists the
    positive columns. At most ``block_rows`` rows (default: ~64 MB of float32) of the matrix are held at once.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"unknown tie rule {ties!r}; use one of {TIE_RULES}")
    if no_positive not in ("skip", "miss"):
        raise ValueError(f"no_positive must be 'skip' or 'miss', got {no_positive!r}")
    if ties == "torch-topk" and not exact_below:
        raise ValueError("ties='torch-topk' needs exact_below (the k of torch.topk)")
    n_q = len(positives)
    block = _block_fn(scores)
    positives = [list(dict.fromkeys(p)) for p in positives]  # a repeated positive counts once
    rows = block_rows or max(1, BLOCK_ELEMENTS // max(1, num_candidates))
    ranks = np.full(n_q, -1 if no_positive == "skip" else num_candidates, dtype=np.int64)
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
        has = lens > 0
        if ties == "torch-topk":
            k = min(int(exact_below), s.shape[1])
            top = torch.topk(torch.from_numpy(np.ascontiguousarray(s)), k, dim=1, largest=True, sorted=True).indices.numpy()
            block_ranks = np.full(stop - start, k, dtype=np.int64)
            if (lens == 1).all():  # one positive per query (classification): vectorised
                eq = top == np.fromiter((p[0] for p in pos), dtype=np.int64, count=stop - start)[:, None]
                block_ranks = np.where(eq.any(1), eq.argmax(1), k)
            else:
                for r in np.flatnonzero(has):
                    found = np.flatnonzero(np.isin(top[r], pos[r]))
                    if len(found):
                        block_ranks[r] = found[0]
            ranks[start:stop][has] = block_ranks[has]
            continue
        r_idx = np.repeat(np.arange(stop - start), lens)
        c_idx = np.fromiter((c for p in pos for c in p), dtype=np.int64, count=int(lens.sum()))
        pos_scores = s[r_idx, c_idx]
        best = np.full(stop - start, -np.inf, dtype=s.dtype)
        np.maximum.at(best, r_idx, pos_scores)
        # every candidate >= the best positive, minus the positives among them (those equal to the best)
        at_least = _count(s, best)
        pos_ties = np.bincount(r_idx, weights=pos_scores >= best[r_idx], minlength=stop - start).astype(np.int64)
        if ties == "against":
            block_ranks = at_least - pos_ties
        else:
            greater = _count(s, best, strict=True)
            block_ranks = greater.copy()
            tied = np.flatnonzero(has & (at_least - greater > 1))
            if len(tied):
                block_ranks[tied] = _tie_ranks(s, pos, best, greater, tied, ties, order_key, exact_below)
        ranks[start:stop][has] = block_ranks[has]
    return ranks


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> Dict[int, float]:
    """Percent of queries (those with a positive, rank >= 0) whose rank is < K."""
    valid = ranks[ranks >= 0]
    if len(valid) == 0:
        return {k: float("nan") for k in ks}
    return {k: float((valid < k).mean() * 100.0) for k in ks}


def retrieval_ranks(i2t: Optional[ScoreSource], t2i: Optional[ScoreSource],
                    image_to_texts: Sequence[Sequence[int]], text_to_images: Sequence[Sequence[int]],
                    directions: Sequence[str] = ("i2t", "t2i"), block_rows: Optional[int] = None, *,
                    ties: str = "against", order_keys: Optional[Dict[str, np.ndarray]] = None,
                    no_positive: Optional[Dict[str, str]] = None,
                    exact_below: Optional[int] = max(DEFAULT_KS)) -> Dict[str, np.ndarray]:
    """Per direction, the rank of every query (:func:`query_ranks`); ``order_keys[d]`` orders the candidates
    of direction ``d`` for ``ties="first"``, ``no_positive[d]`` is ``skip`` or ``miss``."""
    out: Dict[str, np.ndarray] = {}
    sources = {"i2t": (i2t, image_to_texts, len(text_to_images)),
               "t2i": (t2i, text_to_images, len(image_to_texts))}
    for d in directions:
        scores, pos, n_cand = sources[d]
        if scores is None:
            raise ValueError(f"direction {d} requested but no scores given")
        out[d] = query_ranks(scores, pos, n_cand, block_rows, ties=ties,
                             order_key=(order_keys or {}).get(d), no_positive=(no_positive or {}).get(d, "skip"),
                             exact_below=exact_below)
    return out


def recall_metrics(ranks: Dict[str, np.ndarray], ks: Sequence[int] = DEFAULT_KS) -> Dict[str, float]:
    """``{d}_R@K``, per-direction mean ``{d}_mean``, ``MR`` (the mean of every recall) and ``{d}_queries``
    from the per-direction ranks (queries with rank -1 are not counted)."""
    out: Dict[str, float] = {}
    recalls: List[float] = []
    for d, r_d in ranks.items():
        r = recall_at_k(r_d, ks)
        for k in ks:
            out[f"{d}_R@{k}"] = r[k]
        out[f"{d}_mean"] = float(np.mean([r[k] for k in ks]))
        out[f"{d}_queries"] = int((r_d >= 0).sum())
        recalls += [r[k] for k in ks]
    out["MR"] = float(np.mean(recalls))
    return out


def retrieval_metrics(i2t: Optional[ScoreSource], t2i: Optional[ScoreSource],
                      image_to_texts: Sequence[Sequence[int]], text_to_images: Sequence[Sequence[int]],
                      directions: Sequence[str] = ("i2t", "t2i"), ks: Sequence[int] = DEFAULT_KS,
                      block_rows: Optional[int] = None, **rules) -> Dict[str, float]:
    """``i2t_R@K``, ``t2i_R@K``, per-direction mean ``i2t_mean``/``t2i_mean`` and ``MR`` (the mean of
    every recall of the evaluated directions); plus query counts. ``rules``: see :func:`retrieval_ranks`."""
    rules.setdefault("exact_below", max(ks))
    ranks = retrieval_ranks(i2t, t2i, image_to_texts, text_to_images, directions, block_rows, **rules)
    return recall_metrics(ranks, ks)


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


def classification_ranks(logits: ScoreSource, labels: Sequence[int], num_classes: int, ties: str = "against",
                         block_rows: Optional[int] = None, max_k: int = 5) -> Dict[str, np.ndarray]:
    """``rank`` of each image's class (for top-K) and ``rank_top1`` (for the top-1 prediction behind mean
    per-class recall) under tie rule ``ties``: ``against`` (both ranks ties-against), ``torch-topk``
    (CLIP_benchmark: ``rank`` in ``logits.topk(max_k)``, ``rank_top1`` by ``argmax``: first maximum; with fewer
    than ``max_k`` classes CLIP_benchmark computes top-1 alone, from ``topk(1)``, and top-5 is NaN: ``topk``
    holds the k used, so that top-K above it is undefined)."""
    positives = [[int(c)] for c in labels]
    if ties == "torch-topk":
        k = max_k if num_classes >= max_k else 1
        rank = query_ranks(logits, positives, num_classes, block_rows, ties="torch-topk", exact_below=k)
        top1 = query_ranks(logits, positives, num_classes, block_rows, ties="first", exact_below=1)
        return {"rank": rank, "rank_top1": top1, "label": np.asarray(labels, dtype=np.int64),
                "topk": np.full(len(positives), k, dtype=np.int64)}
    rank = query_ranks(logits, positives, num_classes, block_rows, ties=ties, exact_below=max_k)
    return {"rank": rank, "rank_top1": rank, "label": np.asarray(labels, dtype=np.int64)}


def classification_from_ranks(ranks: Dict[str, np.ndarray], ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """``top{K}`` (NaN for a K above the ``topk`` the ranks were taken from) and ``mean_per_class_recall``
    (top-1 recall averaged over the classes that have images)."""
    rank, top1, labels_np = ranks["rank"], ranks["rank_top1"], ranks["label"]
    limit = int(ranks["topk"].max()) if "topk" in ranks and len(ranks["topk"]) else None
    out = {f"top{k}": float("nan") if limit is not None and k > limit else float((rank < k).mean() * 100.0)
           for k in ks}
    per_class = [float((top1[labels_np == c] < 1).mean()) for c in np.unique(labels_np)]
    out["mean_per_class_recall"] = float(np.mean(per_class) * 100.0)
    out["images"] = int(len(labels_np))
    return out


def classification_metrics(logits: ScoreSource, labels: Sequence[int], num_classes: int,
                           ks: Sequence[int] = (1, 5), block_rows: Optional[int] = None,
                           ties: str = "against") -> Dict[str, float]:
    """``top1``, ``top5`` (ties against the image by default) and ``mean_per_class_recall``."""
    return classification_from_ranks(classification_ranks(logits, labels, num_classes, ties, block_rows, max(ks)), ks)
