"""Rank groups: which runs the data cannot tell apart, from paired bootstraps on their per-query results.

For the runs of one comparison (same dataset, split, task and protocol), every run's per-query file is
restricted to the queries all of them evaluated and the same bootstrap resamples are drawn for all (one
matrix product per run, :mod:`ccmb_bench.bootstrap`). Two runs differ significantly when the two-sided
paired-bootstrap p-value of their difference ``(1 + #{|d_b - d| >= |d|}) / (B + 1)``, Holm-corrected across
the comparisons made together, is at most ``alpha`` (5 %).

:func:`rank_groups`: the best run leads group 1; it is compared with every other run (Holm across those
comparisons); the runs not significantly worse join group 1. The best of the runs left leads group 2 against
the rest, and so on. Runs with exactly the same value always share a group; a run without per-query results
is not tested (no group) unless it ties exactly with one that is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ccmb_bench import bootstrap as boot
from ccmb_bench.options import DEFAULT_RESAMPLES, DEFAULT_SEED
from ccmb_bench.resultfiles import UnsafeFileError, check_per_query, per_query_path, read_npz

logger = logging.getLogger(__name__)

ALPHA = 0.05
TIE_TOLERANCE = 1e-9


class PerQueryError(ValueError):
    """A per-query file that cannot be used for a comparison (names the file)."""


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def load_per_query(result: Dict[str, Any], root: Path) -> Tuple[boot.PerQuery, Dict[str, Any]]:
    """A result's per-query arrays (bounded read inside ``root``), checked to reproduce the result's metrics
    (else it is a file of another run); raises :class:`PerQueryError` naming the file."""
    try:
        path = per_query_path(result, root)
        pq, meta = boot.unflatten(read_npz(path, root))
        check_per_query(pq)
    except UnsafeFileError as exc:
        where = result.get("_path", "?")
        raise PerQueryError(str(exc) if str(exc).startswith(str(where)) else
                            f"{where}: per-query file {result.get('per_query_file')}: {exc}") from None
    statistic = boot.statistic_for(str(result.get("task")), meta)
    if statistic is None:
        raise PerQueryError(f"{result.get('_path')}: task {result.get('task')!r} has no per-query metrics")
    try:
        point = boot.point(statistic, pq)
    except (ValueError, IndexError, TypeError) as exc:
        raise PerQueryError(f"{path}: per-query arrays unusable ({exc})") from None
    for metric, value in point.items():
        reported = (result.get("metrics") or {}).get(metric)
        if isinstance(reported, (int, float)) and not isinstance(reported, bool) and value == value \
                and abs(reported - value) > 1e-6:
            raise PerQueryError(f"{result.get('_path')}: its per-query file {result.get('per_query_file')} gives "
                                f"{metric}={value:.4f}, the result says {reported:.4f} (a file of another run?)")
    return pq, meta


@dataclass
class Joint:
    """Runs restricted to their shared queries: point values and the same ``B`` resamples, per metric."""

    points: List[Dict[str, float]]
    samples: List[Dict[str, np.ndarray]]
    shared: Dict[str, int]
    before: Dict[str, List[int]]
    resamples: int
    seed: int

    def pair(self, i: int, j: int, metric: str) -> Dict[str, Any]:
        """Run ``i`` minus run ``j`` on ``metric``: difference, 95 % interval, two-sided p-value."""
        d = self.points[i][metric] - self.points[j][metric]
        diffs = self.samples[i][metric] - self.samples[j][metric]
        diffs = diffs[np.isfinite(diffs)]
        if not len(diffs) or not np.isfinite(d):
            return {"diff": d, "ci95": [float("nan")] * 2, "p_value": float("nan")}
        p = (1 + int(np.count_nonzero(np.abs(diffs - d) >= abs(d) - 1e-12))) / (len(diffs) + 1)
        return {"diff": float(d), "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
                "p_value": p}


def joint_bootstrap(statistic: Callable, pqs: Sequence[boot.PerQuery], resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED) -> Joint:
    """Every run on the queries all of them evaluated, under the same resamples."""
    aligned, before = boot.align_all(pqs)
    if not aligned[0] or any(len(next(iter(g.values()))) == 0 for g in aligned[0].values()):
        raise PerQueryError("the per-query files share no query")
    points = [boot.point(statistic, pq) for pq in aligned]
    samples = boot.resampled(statistic, aligned, resamples, seed)
    shared = {g: len(next(iter(arrays.values()))) for g, arrays in aligned[0].items()}
    return Joint(points, samples, shared, before, resamples, seed)


@dataclass
class Group:
    """A run's rank group (1 = the top), the run that leads its group and the Holm-adjusted p-value of its
    difference from that leader (None for the leader, or when untested)."""

    group: Optional[int]
    leader: Optional[int] = None
    p_holm: Optional[float] = None
    note: str = ""


@dataclass
class Ranking:
    groups: List[Group] = field(default_factory=list)
    tested: int = 0


def rank_groups(values: Sequence[Optional[float]], joint: Optional[Joint], members: Sequence[int], metric: str,
                alpha: float = ALPHA, lower_is_better: bool = False) -> Ranking:
    """Rank groups of runs ``0..len(values)-1`` (``values``: the reported metric, None when missing);
    ``members[k]`` is the position in ``joint`` of the ``k``-th tested run (``joint`` may be None: nobody
    tested)."""
    n = len(values)
    out = [Group(None, note="no per-query results: not tested") for _ in range(n)]
    pos = {run: k for k, run in enumerate(members)} if joint is not None else {}
    sign = -1.0 if lower_is_better else 1.0

    def score(run: int) -> float:
        return sign * joint.points[pos[run]][metric]  # type: ignore[union-attr]

    remaining = sorted((r for r in pos if np.isfinite(score(r))), key=lambda r: (-score(r), r))
    g = 0
    while remaining:
        g += 1
        leader, others = remaining[0], remaining[1:]
        tests = [joint.pair(pos[leader], pos[o], metric) for o in others]  # type: ignore[union-attr]
        adjusted = holm([t["p_value"] for t in tests])
        joined = [leader]
        out[leader] = Group(g, leader)
        for o, p in zip(others, adjusted):
            if not (np.isfinite(p) and p <= alpha):  # not significantly different from the leader
                joined.append(o)
                out[o] = Group(g, leader, float(p) if np.isfinite(p) else None)
        remaining = [r for r in remaining if r not in joined]
    # exact ties share a group (tested or not): the better group wins
    for i in range(n):
        for j in range(n):
            vi, vj = values[i], values[j]
            if i != j and vi is not None and vj is not None and abs(vi - vj) <= TIE_TOLERANCE \
                    and out[j].group is not None and (out[i].group is None or out[j].group < out[i].group):
                out[i] = Group(out[j].group, out[j].leader, out[i].p_holm, "exact tie")
    return Ranking(out, len(pos))


def pairwise(joint: Joint, metric: str) -> List[Dict[str, Any]]:
    """Every pair ``i < j`` on ``metric``: difference, interval, p-value and the Holm-adjusted p-value across
    all pairs."""
    n = len(joint.points)
    rows = [dict(joint.pair(i, j, metric), a=i, b=j) for i in range(n) for j in range(i + 1, n)]
    for row, adj in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = adj
    return rows
