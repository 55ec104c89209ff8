"""SemDeDup's k-means and candidate search: the numpy implementation (``ccmb.corpus.steps.levels.semdedup``) next to
scikit-learn (MiniBatchKMeans + NearestNeighbors) and faiss-cpu (spherical Kmeans + IndexFlatIP), on
synthetic L2-normalised float32 embeddings, medians of ``--repeats`` runs, rows/s.

Data: ``--rows`` unit vectors of ``--dim`` dims around ``rows/64`` random topic centres (noise 0.5 per dim
relative, so clusters overlap like real image embeddings), of which 2% are planted near copies (cosine ~0.99)
of another row. k = rows / 256 clusters (``TARGET_CLUSTER_SIZE``), 20 Lloyd iterations at most, every
row assigned to its 2 nearest centroids. Printed per library: fit s, assign s, total rows/s, the ratio to
numpy, and the candidate recall (share of planted pairs that share an assigned cluster; the exact check that
follows is the same numpy code for all, so recall is the only quality difference).

The libraries are optional and only for this script (not dependencies of ccmb):

    pip install --target /tmp/semd/libs --no-deps faiss-cpu scikit-learn joblib threadpoolctl narwhals cloudpickle
    PYTHONPATH=/tmp/semd/libs python perf/bench_semdedup.py [--rows 200000] [--dim 256] [--repeats 3] [--only numpy,faiss]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, Tuple

import numpy as np

from ccmb.corpus.steps.levels.semdedup import TARGET_CLUSTER_SIZE, kmeans, nearest_centroids

Impl = Callable[[np.ndarray, int, int], Tuple[float, float, np.ndarray]]


def planted(rows: int, dim: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(max(1, rows // 64), dim)).astype(np.float32)
    x = topics[rng.integers(0, len(topics), rows)] + 0.5 * rng.normal(size=(rows, dim)).astype(np.float32)
    n_copies = rows // 50
    orig = rng.choice(rows - n_copies, n_copies, replace=False)
    copy = np.arange(rows - n_copies, rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[copy] = x[orig] + 0.015 * rng.normal(size=(n_copies, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), orig, copy


def run_numpy(x: np.ndarray, k: int, seed: int):
    t0 = time.perf_counter()
    cent = kmeans(x, k, seed=seed)
    t1 = time.perf_counter()
    near = nearest_centroids(x, cent, 2)
    return t1 - t0, time.perf_counter() - t1, near


def run_sklearn(x: np.ndarray, k: int, seed: int):
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.neighbors import NearestNeighbors

    t0 = time.perf_counter()
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, max_iter=20, n_init=1).fit(x)
    cent = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    t1 = time.perf_counter()
    near = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(cent.astype(np.float32)).kneighbors(
        x, return_distance=False)
    return t1 - t0, time.perf_counter() - t1, near


def run_faiss(x: np.ndarray, k: int, seed: int):
    import faiss

    t0 = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], k, niter=20, spherical=True, seed=seed + 1, verbose=False,
                      max_points_per_centroid=max(256, len(x) // k + 1))
    km.train(x)
    t1 = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(km.centroids)
    _, near = index.search(x, 2)
    return t1 - t0, time.perf_counter() - t1, near


def recall(near: np.ndarray, orig: np.ndarray, copy: np.ndarray) -> float:
    a, b = near[orig], near[copy]
    shared = (a[:, :, None] == b[:, None, :]).any(axis=(1, 2))
    return float(shared.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated subset of numpy,sklearn,faiss")
    args = ap.parse_args()
    x, orig, copy = planted(args.rows, args.dim)
    k = max(1, round(args.rows / TARGET_CLUSTER_SIZE))
    impls: Dict[str, Impl] = {"numpy (ours)": run_numpy, "scikit-learn": run_sklearn, "faiss-cpu": run_faiss}
    if args.only:
        wanted = args.only.split(",")
        impls = {n: f for n, f in impls.items() if f.__name__[4:] in wanted}
    print(f"{args.rows} x {args.dim} float32 unit rows, k={k}, 2 nearest clusters, median of {args.repeats}")
    print(f"{'impl':<14} {'fit s':>8} {'assign s':>9} {'rows/s':>10} {'vs numpy':>9} {'cand. recall':>13}")
    base = None
    for name, fn in impls.items():
        try:
            runs = [fn(x, k, seed) for seed in range(args.repeats)]
        except ImportError as exc:
            print(f"{name:<14} not installed ({exc.name})")
            continue
        fit = statistics.median(r[0] for r in runs)
        assign = statistics.median(r[1] for r in runs)
        rate = args.rows / (fit + assign)
        base = base or rate
        rec = statistics.median(recall(r[2], orig, copy) for r in runs)
        print(f"{name:<14} {fit:8.2f} {assign:9.2f} {rate:10.0f} {rate / base:8.2f}x {100 * rec:12.1f}%")


if __name__ == "__main__":
    main()
