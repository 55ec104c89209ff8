"""Speed of the chunked retrieval metric vs per-row argsort loops (same numbers), and of the bootstrap.

5,000 queries x 25,000 candidates (as t2i on a 5k-image / 25k-caption set, 5 positives per image query
in i2t terms), quantised scores so that ties are frequent. Three lines, each baseline vs ours (medians, ratio):
- strict (ties against the query) vs a lexsort loop;
- official R2D2 (ties in ``np.argsort(row)[::-1]`` order) vs R2D2's own loop (``itm_eval``);
- the 95% bootstrap (1,000 resamples of the queries, vectorised) next to the ranking time it adds to.
Exits non-zero if any numbers differ.

    .venv/bin/python perf/bench_metrics.py [--queries 5000] [--candidates 25000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ccmb_bench import bootstrap as boot
from ccmb_bench.metrics import query_ranks, recall_at_k


def argsort_loop_ranks(scores: np.ndarray, positives) -> np.ndarray:
    """Baseline: per query, sort candidates by (-score, positive-last) and find the first positive."""
    ranks = np.empty(len(positives), dtype=np.int64)
    for q, pos in enumerate(positives):
        is_pos = np.zeros(scores.shape[1], dtype=bool)
        is_pos[pos] = True
        order = np.lexsort((is_pos, -scores[q]))  # ties: non-positives first (against the query)
        ranks[q] = int(np.flatnonzero(is_pos[order])[0])
    return ranks


def r2d2_loop_hits(scores: np.ndarray, positives, ks=(1, 5, 10)) -> np.ndarray:
    """Baseline: R2D2's itm_eval loop (first positive among ``np.argsort(score)[::-1][:10]``); rank or 10."""
    out = np.full(len(positives), max(ks), dtype=np.int64)
    for q, pos in enumerate(positives):
        inds = np.argsort(scores[q])[::-1]
        for k in range(max(ks)):
            if inds[k] in pos:
                out[q] = k
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--candidates", type=int, default=25000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repeats", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # quantised scores so that ties are frequent
    scores = (rng.standard_normal((args.queries, args.candidates)) * 50).round().astype(np.float32) / 50
    per = max(1, args.candidates // args.queries)
    positives = [list(range(q * per, q * per + per)) if (q + 1) * per <= args.candidates
                 else [int(rng.integers(args.candidates))] for q in range(args.queries)]
    for q, pos in enumerate(positives):  # make positives score higher, so recalls are not all ~0
        scores[q, pos] += np.float32(2.5)
    scores = (scores * 50).round() / 50  # re-quantise: ties between positives and negatives stay frequent
    tensor = torch.from_numpy(scores)

    ours_t, base_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ours = query_ranks(tensor, positives, args.candidates)
        ours_t.append(time.perf_counter() - t)
    for _ in range(args.baseline_repeats):
        t = time.perf_counter()
        base = argsort_loop_ranks(scores, positives)
        base_t.append(time.perf_counter() - t)
    same = np.array_equal(ours, base)
    r_ours, r_base = recall_at_k(ours), recall_at_k(base)
    mo, mb = statistics.median(ours_t), statistics.median(base_t)
    print(f"scores {args.queries} x {args.candidates}, torch threads {torch.get_num_threads()}")
    print(f"strict:   lexsort loop  median {mb:8.3f} s  R@1/5/10 {[round(v, 4) for v in r_base.values()]}")
    print(f"strict:   chunked ours  median {mo:8.3f} s  R@1/5/10 {[round(v, 4) for v in r_ours.values()]}")
    print(f"strict:   speed-up x{mb / mo:.1f}; identical ranks: {same}")

    off_t, loop_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        off = query_ranks(tensor, positives, args.candidates, ties="numpy", exact_below=10)
        off_t.append(time.perf_counter() - t)
    for _ in range(args.baseline_repeats):
        t = time.perf_counter()
        loop = r2d2_loop_hits(scores, positives)
        loop_t.append(time.perf_counter() - t)
    same_off = np.array_equal(np.minimum(off, 10), loop)
    mo2, mb2 = statistics.median(off_t), statistics.median(loop_t)
    print(f"official: R2D2 loop     median {mb2:8.3f} s  R@1/5/10 {[round(v, 4) for v in recall_at_k(loop).values()]}")
    print(f"official: chunked ours  median {mo2:8.3f} s  R@1/5/10 {[round(v, 4) for v in recall_at_k(off).values()]}")
    print(f"official: speed-up x{mb2 / mo2:.1f}; identical ranks below 10: {same_off}")

    pq = {"t2i": {"rank": off}}
    stat = boot.statistic_for("retrieval", {"ks": [1, 5, 10]})
    b_t = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ci = boot.confidence_intervals(stat, pq, 1000, 0)
        b_t.append(time.perf_counter() - t)
    mbs = statistics.median(b_t)
    print(f"bootstrap: 1000 resamples of {args.queries} queries median {mbs:8.3f} s "
          f"= {mbs / mo2:.2f} x the ranking it follows; MR 95% CI {[round(v, 2) for v in ci['MR']]}")
    if not (same and same_off):
        raise SystemExit("ranks differ")


if __name__ == "__main__":
    main()
