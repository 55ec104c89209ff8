"""``ccmb-bench compare``: paired bootstrap tests between two results (or two folders of results).

Two results are compared only on the same dataset, split, task and protocol (name and version), and only
on the queries both evaluated (matched by query id in their per-query files).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ccmb_bench import bootstrap as boot
from ccmb_bench.options import DEFAULT_RESAMPLES, DEFAULT_SEED
from ccmb_bench.protocols import protocol_key
from ccmb_bench.results import SCHEMA, iter_results, read_per_query

logger = logging.getLogger(__name__)

Key = Tuple[str, str, str]  # dataset, split, task


class CompareError(ValueError):
    """Results that cannot be compared (the message names the files)."""


def _load_file(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompareError(f"{path}: not a readable result JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CompareError(f"{path}: not a ccmb-bench result (schema {SCHEMA!r} expected)")
    data["_path"] = str(path)
    return data


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


def _check_pair(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    for field in ("dataset", "split", "task"):
        if a.get(field) != b.get(field):
            raise CompareError(f"different {field}: {a['_path']} has {a.get(field)!r}, {b['_path']} has "
                               f"{b.get(field)!r}")
    if protocol_key(a) != protocol_key(b):
        raise CompareError(f"different protocols: {a['_path']} uses {protocol_key(a)}, {b['_path']} uses "
                           f"{protocol_key(b)}; run both with the same --protocol")


def _check_matches_result(pq, meta, result: Dict[str, Any], statistic) -> None:
    """The per-query file must reproduce its result's metrics, else it belongs to another run."""
    for metric, value in boot.point(statistic, pq).items():
        reported = result.get("metrics", {}).get(metric)
        if isinstance(reported, (int, float)) and value == value and abs(reported - value) > 1e-6:
            raise CompareError(f"{result['_path']}: its per-query file {result.get('per_query_file')} gives "
                               f"{metric}={value:.4f}, the result says {reported:.4f} (a file of another run?)")


def compare_results(a: Dict[str, Any], b: Dict[str, Any], resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED) -> List[Dict[str, Any]]:
    """One row per metric: values of A and B on the shared queries, their difference with a 95% interval,
    and the paired-bootstrap two-sided p-value."""
    _check_pair(a, b)
    pq_a, meta = read_per_query(a)
    pq_b, _ = read_per_query(b)
    statistic = boot.statistic_for(str(a["task"]), meta)
    if statistic is None:
        raise CompareError(f"{a['_path']}: task {a['task']!r} has no per-query metrics to compare")
    _check_matches_result(pq_a, meta, a, statistic)
    _check_matches_result(pq_b, meta, b, statistic)
    sa, sb, counts = boot.align(pq_a, pq_b)
    if set(pq_a) != set(pq_b) or any(c[0] == 0 for c in counts.values()):
        detail = ", ".join(f"{g}: {c[0]} shared, {c[1]} only in A, {c[2]} only in B" for g, c in counts.items())
        raise CompareError(f"the queries of {a['_path']} and {b['_path']} do not match ({detail or 'no groups'})")
    for g, (shared, only_a, only_b) in counts.items():
        if only_a or only_b:
            logger.warning("%s: %d shared queries; %d only in A, %d only in B (compared on the shared ones)", g,
                        shared, only_a, only_b)
    tests = boot.paired_test(statistic, sa, sb, resamples, seed)
    rows = []
    for metric, t in tests.items():
        rows.append({"dataset": a["dataset"], "split": a["split"], "task": a["task"], "protocol": protocol_key(a),
                     "metric": metric, "a": t["a"], "b": t["b"], "diff": t["diff"], "diff_ci95": t["ci95"],
                     "p_value": t["p_value"], "shared_queries": {g: c[0] for g, c in counts.items()},
                     "resamples": resamples, "seed": seed, "a_file": a["_path"], "b_file": b["_path"]})
    return rows


def compare(path_a: Path, path_b: Path, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
            protocol: Optional[str] = None) -> List[Dict[str, Any]]:
    """Compare two result files, or every (dataset, split, task) two folders have in common (only the results
    of ``protocol`` when given)."""
    if Path(path_a).is_file() and Path(path_b).is_file():
        return compare_results(_load_file(path_a), _load_file(path_b), resamples, seed)
    ra, rb = collect(path_a, protocol), collect(path_b, protocol)
    shared = [k for k in ra if k in rb]
    if not shared:
        raise CompareError(f"{path_a} and {path_b} have no dataset/split/task in common: "
                           f"{sorted('/'.join(k) for k in ra)} vs {sorted('/'.join(k) for k in rb)}")
    rows: List[Dict[str, Any]] = []
    for k in shared:
        rows += compare_results(ra[k], rb[k], resamples, seed)
    return rows
