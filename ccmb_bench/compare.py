"""``ccmb-bench compare``: paired bootstrap tests between runs (result files, or folders of one run each).

Runs are compared only on the same dataset, split, task and protocol (name and version), and only on the
queries all of them evaluated (matched by query id in their per-query files), under the same resamples.
Two runs: every metric, A - B with its interval and p-value. More runs: per (dataset, split, task) the
pairwise table of the main metric with Holm-adjusted p-values across the pairs, and the rank groups
(:mod:`ccmb_bench.groups`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ccmb_bench import bootstrap as boot
from ccmb_bench import groups as grp
from ccmb_bench.options import DEFAULT_RESAMPLES, DEFAULT_SEED
from ccmb_bench.protocols import protocol_key
from ccmb_bench.resultfiles import real_root
from ccmb_bench.results import iter_results, load_result_file

logger = logging.getLogger(__name__)

Key = Tuple[str, str, str]  # dataset, split, task


class CompareError(ValueError):
    """Results that cannot be compared (the message names the files)."""


def _main_metric(task: str) -> str:
    from ccmb_bench.leaderboard import MAIN_METRIC

    return MAIN_METRIC.get(task, "")


def _load_file(path: Path) -> Dict[str, Any]:
    try:
        return load_result_file(Path(path))
    except ValueError as exc:
        raise CompareError(str(exc)) from None


def collect(path: Path, protocol: Optional[str] = None) -> Dict[Key, Dict[str, Any]]:
    """The results of a file or folder by (dataset, split, task), only those of ``protocol`` (a name) if
    given; a folder holding one (dataset, split, task) under several protocols or models is refused, naming
    the files."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such file or folder")
    found = [_load_file(path)] if path.is_file() else list(iter_results(path))
    if protocol:
        found = [r for r in found if (r.get("protocol") or {}).get("name") == protocol]
    if not found:
        raise CompareError(f"{path}: no result JSONs found" + (f" of protocol {protocol!r}" if protocol else ""))
    by_key: Dict[Key, List[Dict[str, Any]]] = {}
    for r in found:
        by_key.setdefault((str(r.get("dataset")), str(r.get("split")), str(r.get("task"))), []).append(r)
    out: Dict[Key, Dict[str, Any]] = {}
    for key, rs in by_key.items():
        if len(rs) > 1:
            files = ", ".join(f"{r['_path']} [{protocol_key(r)}, {r.get('model')}]" for r in rs)
            what = ("mixes protocols" if len({protocol_key(r) for r in rs}) > 1 else "holds several results")
            hint = "pick one with --protocol" if what == "mixes protocols" else "compare single files instead"
            raise CompareError(f"{path} {what} for {'/'.join(key)}: {files}; {hint}")
        out[key] = rs[0]
    return out


def _check_same(runs: Sequence[Dict[str, Any]]) -> None:
    a = runs[0]
    for b in runs[1:]:
        for field in ("dataset", "split", "task"):
            if a.get(field) != b.get(field):
                raise CompareError(f"different {field}: {a['_path']} has {a.get(field)!r}, {b['_path']} has "
                                   f"{b.get(field)!r}")
        if protocol_key(a) != protocol_key(b):
            raise CompareError(f"different protocols: {a['_path']} uses {protocol_key(a)}, {b['_path']} uses "
                               f"{protocol_key(b)}; run both with the same --protocol")


def _joint(runs: Sequence[Dict[str, Any]], roots: Sequence[Path], resamples: int, seed: int):
    loaded = []
    for r, root in zip(runs, roots):
        try:
            loaded.append(grp.load_per_query(r, root))
        except grp.PerQueryError as exc:
            raise CompareError(str(exc)) from None
    pqs = [pq for pq, _ in loaded]
    statistic = boot.statistic_for(str(runs[0]["task"]), loaded[0][1])
    names = [set(pq) for pq in pqs]
    aligned, before = boot.align_all(pqs)
    shared = {g: (len(next(iter(aligned[0][g].values()))) if g in aligned[0] else 0)
              for g in sorted(set().union(*names))}
    if any(n != names[0] for n in names) or not shared or any(v == 0 for v in shared.values()):
        detail = ", ".join(f"{g}: {n} shared (of {'/'.join(map(str, before.get(g, ['?'])))})"
                           for g, n in shared.items())
        raise CompareError("the queries of " + " and ".join(r["_path"] for r in runs) + f" do not match ({detail})")
    joint = grp.joint_bootstrap(statistic, pqs, resamples, seed)
    for g, counts in joint.before.items():
        if any(c != joint.shared[g] for c in counts):
            logger.warning("%s: %d shared queries; the runs have %s (compared on the shared ones)", g,
                           joint.shared[g], ", ".join(map(str, counts)))
    return joint


def compare_results(a: Dict[str, Any], b: Dict[str, Any], resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED, roots: Optional[Sequence[Path]] = None) -> List[Dict[str, Any]]:
    """One row per metric: values of A and B on the shared queries, their difference with a 95% interval,
    and the paired-bootstrap two-sided p-value."""
    _check_same([a, b])
    roots = roots or [real_root(Path(a["_path"]).parent), real_root(Path(b["_path"]).parent)]
    joint = _joint([a, b], roots, resamples, seed)
    rows = []
    for metric in joint.points[0]:
        t = joint.pair(0, 1, metric)
        rows.append({"dataset": a["dataset"], "split": a["split"], "task": a["task"], "protocol": protocol_key(a),
                     "metric": metric, "a": joint.points[0][metric], "b": joint.points[1][metric],
                     "diff": t["diff"], "diff_ci95": t["ci95"], "p_value": t["p_value"],
                     "shared_queries": dict(joint.shared), "resamples": resamples, "seed": seed,
                     "a_file": a["_path"], "b_file": b["_path"]})
    return rows


def compare_many(runs: Sequence[Dict[str, Any]], roots: Sequence[Path], resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, alpha: float = grp.ALPHA) -> Dict[str, Any]:
    """Runs of one (dataset, split, task, protocol): each run's values on the shared queries, every pair's
    difference on every metric with p-values (raw and Holm-adjusted across the pairs), and the rank groups
    on the main metric."""
    _check_same(runs)
    joint = _joint(runs, roots, resamples, seed)
    main = _main_metric(str(runs[0]["task"]))
    metrics = list(joint.points[0])
    ranking = grp.rank_groups([p.get(main) for p in joint.points], joint, list(range(len(runs))), main, alpha)
    pairs = {m: grp.pairwise(joint, m) for m in metrics}
    first = runs[0]
    return {"dataset": first["dataset"], "split": first["split"], "task": first["task"],
            "protocol": protocol_key(first), "main_metric": main, "alpha": alpha, "resamples": resamples,
            "seed": seed, "shared_queries": dict(joint.shared),
            "runs": [{"file": r["_path"], "model": r.get("model"), "values": joint.points[k],
                      "group": ranking.groups[k].group, "p_holm_vs_leader": ranking.groups[k].p_holm}
                     for k, r in enumerate(runs)],
            "pairs": {m: [{"a": p["a"], "b": p["b"], "diff": p["diff"], "diff_ci95": p["ci95"],
                           "p_value": p["p_value"], "p_holm": p["p_holm"]} for p in rows] for m, rows in pairs.items()}}


def _runs_of(paths: Sequence[Path], protocol: Optional[str]) -> Tuple[List[Dict[Key, Dict[str, Any]]], List[Path]]:
    by_path, roots = [], []
    for p in paths:
        p = Path(p)
        by_path.append({(str(r["dataset"]), str(r["split"]), str(r["task"])): r for r in [_load_file(p)]}
                       if p.is_file() else collect(p, protocol))
        roots.append(real_root(p.parent if p.is_file() else p))
    return by_path, roots


def compare(path_a: Path, path_b: Path, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
            protocol: Optional[str] = None) -> List[Dict[str, Any]]:
    """Compare two result files, or every (dataset, split, task) two folders have in common (only the results
    of ``protocol`` when given)."""
    if Path(path_a).is_file() and Path(path_b).is_file():
        return compare_results(_load_file(path_a), _load_file(path_b), resamples, seed)
    (ra, rb), roots = _runs_of([path_a, path_b], protocol)
    shared = [k for k in ra if k in rb]
    if not shared:
        raise CompareError(f"{path_a} and {path_b} have no dataset/split/task in common: "
                           f"{sorted('/'.join(k) for k in ra)} vs {sorted('/'.join(k) for k in rb)}")
    rows: List[Dict[str, Any]] = []
    for k in shared:
        rows += compare_results(ra[k], rb[k], resamples, seed, roots)
    return rows


def compare_paths(paths: Sequence[Path], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                  protocol: Optional[str] = None, alpha: float = grp.ALPHA) -> List[Dict[str, Any]]:
    """Three or more runs (files, or folders of one run each): one :func:`compare_many` table per
    (dataset, split, task) that at least two of them hold."""
    by_path, roots = _runs_of(paths, protocol)
    keys = list(dict.fromkeys(k for runs in by_path for k in runs))
    out = []
    for key in keys:
        have = [j for j, runs in enumerate(by_path) if key in runs]
        if len(have) < 2:
            logger.warning("%s: only in %s; not compared", "/".join(key), paths[have[0]])
            continue
        out.append(compare_many([by_path[j][key] for j in have], [roots[j] for j in have], resamples, seed, alpha))
    if not out:
        raise CompareError("no dataset/split/task is held by two of " + ", ".join(map(str, paths)))
    return out
