"""Speed of the chunked retrieval metric vs a per-row argsort loop (same numbers, ties against the query).

5,000 queries x 25,000 candidates (as t2i on a 5k-image / 25k-caption set, 5 positives per image query
in i2t terms). Prints the median times of both and the ratio; exits non-zero if the numbers differ.

    .venv/bin/python perf/bench_metrics.py [--queries 5000] [--candidates 25000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

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
    print(f"argsort loop   median {mb:8.3f} s  R@1/5/10 {[round(v, 4) for v in r_base.values()]}")
    print(f"chunked ours   median {mo:8.3f} s  R@1/5/10 {[round(v, 4) for v in r_ours.values()]}")
    print(f"speed-up x{mb / mo:.1f}; identical ranks: {same}")
    if not same:
        raise SystemExit("ranks differ")


if __name__ == "__main__":
    main()
