"""Result files for the leaderboard tests: as ``ccmb-bench run`` writes them, optionally with a per-query file
whose metrics the result reproduces (so rank groups can be computed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ccmb_bench import bootstrap as boot
from ccmb_bench.results import make_result, result_path, write_per_query, write_result


def res(model, dataset, split, task, metrics, created="2026-01-01T00:00:00Z", fp="abc", protocol="official",
        ci=None, decontaminated="absent", setting="", training=None) -> Dict[str, Any]:
    """A result as ``ccmb-bench run`` writes it; ``protocol=None`` / ``decontaminated="absent"``: an older
    result without those fields; ``training``: a provenance record (``ccmb_bench.training.provenance``)."""
    r = make_result({"model": model, "kind": "r2d2", "fingerprint": fp}, dataset, split, task, metrics, "cpu",
                    {"evaluate_s": 1.0}, {"setting": setting} if setting else {}, training=training)
    r["created"] = created
    r.pop("protocol", None), r.pop("metrics_ci95", None)
    if training is None:
        r.pop("training_data", None)
    if protocol:
        r["protocol"] = {"name": protocol, "reference": "R2D2 itm_eval", "version": "1"}
    if ci:
        r["metrics_ci95"] = ci
    if decontaminated != "absent":
        r["training_data"] = {"provenance": True, "decontaminated_against": ["flickr30k-cn/test"],
                              "decontaminated": decontaminated}
    return r


def rec(a, b):
    return {"i2t_R@1": a, "i2t_R@5": a + 10, "i2t_R@10": a + 20, "t2i_R@1": b, "t2i_R@5": b + 10,
            "t2i_R@10": b + 20, "MR": (a + b) / 2 + 10}


def write_with_per_query(out: Path, model: str, dataset: str, split: str, task: str, pq: Dict[str, Any],
                         meta: Optional[Dict[str, Any]] = None, fp: Optional[str] = None, **kw) -> Path:
    """A result whose metrics are computed from ``pq`` (per-query arrays), written with its per-query file."""
    meta = meta or {"ks": [1, 5, 10] if task == "retrieval" else [1, 5], "threshold": 0.5}
    metrics = boot.point(boot.statistic_for(task, meta), pq)
    r = res(model, dataset, split, task, metrics, fp=fp or model, **kw)
    path = result_path(out, model, dataset, task, split, r["checkpoint_fingerprint"], r["protocol"]["name"])
    r["per_query_file"] = write_per_query(path, pq, meta)
    return write_result(out, r)


def matching_pq(rng: np.random.Generator, n: int, strength: float) -> Dict[str, Any]:
    """Pairs whose match score separates the labels by ``strength`` (0: chance)."""
    label = rng.integers(0, 2, n)
    score = rng.normal(0, 1, n) + strength * label
    return {"pairs": {"score": score, "label": label.astype(np.int8),
                      "query": np.array([f"line{k}" for k in range(n)])}}


def retrieval_pq(ranks_t2i, ranks_i2t=None) -> Dict[str, Any]:
    pq = {"t2i": {"rank": np.asarray(ranks_t2i, dtype=np.int64),
                  "query": np.array([f"t{k}" for k in range(len(ranks_t2i))])}}
    if ranks_i2t is not None:
        pq["i2t"] = {"rank": np.asarray(ranks_i2t, dtype=np.int64),
                     "query": np.array([f"i{k}" for k in range(len(ranks_i2t))])}
    return pq
