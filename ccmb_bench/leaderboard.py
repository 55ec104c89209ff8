"""Leaderboard: validate result JSONs, collect them into rows beside the published numbers, rank groups from
paired bootstraps, training-data status; CSV / Markdown / HTML exports.

Rows are one per (model, checkpoint fingerprint, dataset, split, task, protocol); when several result files
share that key, the newest (``created``) wins. Each run row carries its **training status** (zero-shot,
fine-tuned on the set, seen in training, not declared: :mod:`ccmb_bench.training`) and the **block** it is
ranked in (``zero-shot``, which includes undeclared runs, ``fine-tuned`` or ``seen``). The published rows of
``data/paper_results.json`` (``reference=paper``, protocol ``as published``) join the blocks of their setting,
for the datasets that have runs (``include_paper``, on by default). Runs of one (dataset, split, task,
protocol, block) get **rank groups** (:mod:`ccmb_bench.groups`: paired bootstrap on the per-query results,
5 %, Holm-corrected, exact ties one group); published rows are never ranked. A run of a model that a
published row names (``registered``) in the same setting carries its difference from it (``delta``,
``reproduced`` within 1 point; official protocol only). ``fmt="clip-benchmark"`` writes CLIP_benchmark's
column names and 0-1 fractions.

Result files are read within bounds (:mod:`ccmb_bench.resultfiles`); a file that is not a valid result (a
JSON list, ``"metrics": "high"``, a FIFO, a 400-digit integer, a ``per_query_file`` outside the folder...) is
reported by name: a warning, or an error with ``strict=True``. A folder without any valid result is an error.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ccmb.atomic import write_text
from ccmb_bench import groups as grp
from ccmb_bench import training
from ccmb_bench.options import DEFAULT_RESAMPLES, DEFAULT_SEED
from ccmb_bench.protocols import detail as protocol_detail
from ccmb_bench.resultfiles import UnsafeFileError, json_files, per_query_path, read_json, real_root
from ccmb_bench.results import SCHEMA

logger = logging.getLogger(__name__)

PAPER_FILE = Path(__file__).with_name("data") / "paper_results.json"

ID_COLUMNS = ["dataset", "split", "task", "model", "setting", "block", "training", "protocol", "group",
              "decontaminated", "reference", "checkpoint_fingerprint", "device"]
METRIC_ORDER = ["MR", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_mean", "t2i_mean",
                "AUC", "accuracy", "top1", "top5", "mean_per_class_recall", "BLEU-4", "ROUGE-L", "CIDEr",
                "clip_score", "frechet_distance"]
#: the metrics a reader looks at per task (the per-dataset tables); everything else stays in the CSV
TASK_METRICS = {
    "retrieval": ["MR", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"],
    "matching": ["AUC", "accuracy"],
    "classification": ["top1", "top5", "mean_per_class_recall"],
    "captioning": ["CIDEr", "BLEU-4", "ROUGE-L"],
    "text-to-image": ["clip_score", "frechet_distance"],
}
LOWER_IS_BETTER = {"frechet_distance"}
PAPER_PROTOCOL = "as published"
MD_OVERVIEW_COLUMNS = 7  # datasets per Markdown overview table (+ model, protocol, training = 10)
CI_SUFFIX = ("_ci95_lo", "_ci95_hi")
DECONTAMINATED = {True: "yes", False: "no", None: "unknown"}
#: the blocks runs are ranked in (zero-shot includes runs whose training data is not declared)
BLOCKS = ("zero-shot", "fine-tuned", "seen")
BLOCK_OF_STATUS = {"zero-shot": "zero-shot", "unknown": "zero-shot", "fine-tuned": "fine-tuned", "seen": "seen"}
BLOCK_TITLES = {"zero-shot": "Zero-shot", "fine-tuned": "Fine-tuned on the evaluated set",
                "seen": "Seen in training"}
REPRODUCED_WITHIN = 1.0  # points: a run within this of the published number reproduces it


def _main_metric_map() -> Dict[str, str]:
    try:  # the one task -> main metric map of the harness
        from ccmb_bench.tasks import MAIN_METRIC as shared
        return dict(shared)
    except ImportError:  # pragma: no cover - torch-less installs
        return {"retrieval": "MR", "matching": "AUC", "classification": "top1", "captioning": "CIDEr",
                "text-to-image": "clip_score"}


MAIN_METRIC = _main_metric_map()


class ResultFileError(ValueError):
    """One or more result files are malformed (the message names each file and what is wrong)."""


class NoResultsError(ValueError):
    """A results folder without any usable result (the message says what was found instead)."""


# ---------------------------------------------------------------------------------------------- validation
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, float) or abs(v) < 2 ** 63)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def validate_result(data: Any) -> List[str]:
    """What is wrong with a parsed result (empty when it is usable)."""
    if not isinstance(data, dict):
        return [f"a JSON {type(data).__name__}, not a result object"]
    problems = []
    for key in ("model", "dataset", "split", "task"):
        v = data.get(key)
        if not isinstance(v, str) or not v.strip():
            problems.append(f'"{key}" must be a non-empty string, got {json.dumps(v)[:40]}')
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        problems.append(f'"metrics" must be an object of name: number, got {json.dumps(metrics)[:40]}')
    else:
        bad = [k for k, v in metrics.items() if not (v is None or isinstance(v, (str, bool)) or _is_number(v))]
        if bad:
            problems.append(f'"metrics" values must be numbers or strings: {", ".join(map(str, bad[:5]))}')
    ci = data.get("metrics_ci95")
    if ci is not None:
        if not isinstance(ci, dict) or not all(
                isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v) for v in ci.values()):
            problems.append('"metrics_ci95" must map metric names to [lo, hi]')
    proto = data.get("protocol")
    if proto is not None and not (isinstance(proto, dict) and isinstance(proto.get("name"), str)):
        problems.append('"protocol" must be an object with a string "name"')
    td = data.get("training_data")
    if td is not None and not (isinstance(td, dict) and td.get("decontaminated") in (True, False, None)):
        problems.append('"training_data" must be an object whose "decontaminated" is true, false or null')
    for key, kind in (("settings", dict), ("created", str), ("checkpoint_fingerprint", str), ("device", str)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            problems.append(f'"{key}" must be a {"object" if kind is dict else "string"}')
    pq = data.get("per_query_file")
    if pq is not None and not isinstance(pq, str):
        problems.append('"per_query_file" must be a string (a file name relative to the result)')
    return problems


@dataclass
class Scan:
    """The valid results of a folder, the files that were not usable (``(path, reason)``), the usable results
    with a problem of their own (``notes``: e.g. a ``per_query_file`` outside the folder) and how many JSON
    files were looked at."""

    results: List[Dict[str, Any]] = field(default_factory=list)
    bad: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[Tuple[str, str]] = field(default_factory=list)
    files: int = 0


def scan_results(directory: Path) -> Scan:
    """Every result JSON under ``directory`` (recursively, ``cache`` folders aside), read within bounds and
    validated.

    JSON objects of another schema (manifests, provenance files) are not results and pass unnoticed; a file
    that claims our schema but is malformed, a result-like object without the schema, an unreadable file (not
    a regular file, outside the folder, too large, too deep, not JSON) and a JSON that is not an object (unless
    a result names it as its ``per_query_file``) are reported."""
    scan = Scan()
    root = real_root(directory)
    suspects: List[Tuple[Path, str]] = []
    referenced = set()
    for path in json_files(directory):
        scan.files += 1
        try:
            data = read_json(path, root)
        except UnsafeFileError as exc:
            suspects.append((path, str(exc)))
            continue
        if not isinstance(data, dict):
            suspects.append((path, f"a JSON {type(data).__name__}, not a result object"))
            continue
        schema = data.get("schema")
        if schema != SCHEMA:
            if isinstance(schema, str) and schema.startswith("ccmb-bench/result/"):
                scan.bad.append((str(path), f"result schema {schema!r} is not {SCHEMA!r}"))
            elif schema is None and "metrics" in data and "model" in data:
                scan.bad.append((str(path), f'result-like object without "schema": {SCHEMA!r}'))
            continue
        problems = validate_result(data)
        if problems:
            scan.bad.append((str(path), "; ".join(problems)))
            continue
        data["_path"] = str(path)
        if isinstance(data.get("per_query_file"), str):
            try:
                referenced.add(str(per_query_path(data, root).resolve()))
            except UnsafeFileError as exc:
                scan.notes.append((str(path), f"{exc} (not read; no rank group)".replace(f"{path}: ", "", 1)))
                data["per_query_file"] = None
        scan.results.append(data)
    for path, reason in suspects:
        if str(path.resolve()) not in referenced:
            scan.bad.append((str(path), reason))
    scan.bad.sort()
    scan.notes.sort()
    return scan


def report_bad(bad: Sequence[Tuple[str, str]], strict: bool, notes: Sequence[Tuple[str, str]] = ()) -> None:
    """Warn about each bad file (one line each), or raise :class:`ResultFileError` naming all of them."""
    if not bad and not notes:
        return
    if strict:
        lines = [f"  {p}: {r}" for p, r in bad] + [f"  {p}: {r}" for p, r in notes]
        raise ResultFileError(f"{len(lines)} bad result file(s):\n" + "\n".join(lines))
    for p, r in bad:
        logger.warning("%s: skipped, %s", p, r)
    for p, r in notes:
        logger.warning("%s: %s", p, r)


# ---------------------------------------------------------------------------------------------- rows
def paper_rows() -> List[Dict[str, Any]]:
    """The published reference rows, each with its source, its protocol as published and the block of its
    setting."""
    data = json.loads(PAPER_FILE.read_text(encoding="utf-8"))
    rows = []
    for r in data["rows"]:
        setting = r.get("setting", "")
        row = {"dataset": r["dataset"], "split": r["split"], "task": r["task"], "model": r["model"],
               "setting": setting, "block": "fine-tuned" if setting == "fine-tuned" else "zero-shot",
               "training": training.STATUS_LABELS["fine-tuned" if setting == "fine-tuned" else "zero-shot"],
               "protocol": r.get("protocol") or PAPER_PROTOCOL, "decontaminated": "unknown", "reference": "paper",
               "checkpoint_fingerprint": "", "device": "", "source": r.get("source", ""), "url": r.get("url", ""),
               "note": r.get("note", ""), "registered": " ".join(r.get("registered", []))}
        row.update(r["metrics"])
        rows.append(row)
    return rows


def _row(res: Dict[str, Any], decl: training.Declarations) -> Dict[str, Any]:
    proto = res.get("protocol") or {}
    info = training.classify(res, decl)
    row: Dict[str, Any] = {"dataset": res["dataset"], "split": res["split"], "task": res["task"],
                           "model": res["model"], "setting": (res.get("settings") or {}).get("setting", ""),
                           "block": BLOCK_OF_STATUS[info.status], "training": info.label,
                           "protocol": proto.get("name", ""), "decontaminated": info.decontaminated,
                           "reference": "", "checkpoint_fingerprint": res.get("checkpoint_fingerprint") or "",
                           "device": res.get("device") or "", "training_data": info.summary,
                           "training_why": info.why, "training_source": info.source}
    text = protocol_detail(proto, res["task"])
    if text:
        row["protocol_detail"] = text
    for k, v in res["metrics"].items():
        if _is_number(v):
            row[k] = round(v, 4) if math.isfinite(v) else ""
        elif isinstance(v, (str, bool)):
            row[k] = v
    for k, (lo, hi) in (res.get("metrics_ci95") or {}).items():
        if _finite(lo) and _finite(hi):
            row[k + CI_SUFFIX[0]], row[k + CI_SUFFIX[1]] = round(lo, 4), round(hi, 4)
    return row


def _column(r: Dict[str, Any]) -> Tuple[str, str, str]:
    return (r["dataset"], r["split"], r["task"])


def reproduction(row: Dict[str, Any], published: Sequence[Dict[str, Any]]) -> None:
    """Set ``published``/``delta_metric``/``delta``/``reproduced`` on an official run row whose model and setting a
    published row names (``registered``); the main metric, else the first metric both have."""
    status = {"zero-shot": "zero-shot", "fine-tuned on this set": "fine-tuned"}.get(row.get("training", ""))
    if row.get("reference") or row.get("protocol") != "official" or status is None:
        return
    for ref in published:
        if _column(ref) != _column(row) or ref.get("setting") != status \
                or row["model"] not in str(ref.get("registered", "")).split():
            continue
        order = TASK_METRICS.get(row["task"], [MAIN_METRIC.get(row["task"], "")])
        metric = next((m for m in order if _finite(row.get(m)) and _finite(ref.get(m))), None)
        if metric is None:
            continue
        delta = float(row[metric]) - float(ref[metric])
        row.update(published=f"{ref['model']} ({ref.get('source', '')})", delta_metric=metric,
                   delta=round(delta, 4), reproduced="yes" if abs(delta) <= REPRODUCED_WITHIN + 1e-9 else "no")
        return


def _rank(rows: List[Dict[str, Any]], results: Dict[int, Dict[str, Any]], root: Path, resamples: int,
          seed: int, strict: bool = False) -> None:
    """Rank groups per (dataset, split, task, protocol, block) of the run rows (``results[id(row)]`` is the
    result behind a row); sets ``group`` (1 = top), ``group_leader``, ``group_p_holm``. An unusable per-query
    file is a warning (the row gets no group), or with ``strict`` a :class:`ResultFileError`."""
    problems: List[str] = []
    classes: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        if not r.get("reference"):
            classes.setdefault(_column(r) + (r.get("protocol", ""), r.get("block", "")), []).append(r)
    for key, members in classes.items():
        metric = MAIN_METRIC.get(key[2], "")
        for r in members:
            r["group"], r["group_note"] = "", "nothing to rank it against (the only run of its protocol and block)"
        members = [r for r in members if _finite(r.get(metric))]
        if len(members) < 2:
            continue
        loaded, positions = [], []
        for k, r in enumerate(members):
            res = results[id(r)]
            if not res.get("per_query_file"):
                continue
            try:
                loaded.append(grp.load_per_query(res, root))
                positions.append(k)
            except grp.PerQueryError as exc:
                problems.append(str(exc))
                if not strict:
                    logger.warning("%s; no rank group for it", exc)
        joint = None
        if len(loaded) >= 2:
            statistic = _statistic(key[2], loaded[0][1])
            try:
                joint = grp.joint_bootstrap(statistic, [pq for pq, _ in loaded], resamples, seed)
            except (grp.PerQueryError, ValueError) as exc:
                logger.warning("%s: %s; no rank groups", "/".join(key[:3]), exc)
        if joint is None:
            positions = []
        ranking = grp.rank_groups([float(r[metric]) for r in members], joint, positions, metric,
                                  lower_is_better=metric in LOWER_IS_BETTER)
        for r, g in zip(members, ranking.groups):
            if g.group is None:
                r["group"] = ""
                r["group_note"] = g.note
                continue
            r["group"] = g.group
            r.pop("group_note", None)
            r["group_leader"] = model_label(members[g.leader]) if g.leader is not None else ""
            if g.p_holm is not None:
                r["group_p_holm"] = round(g.p_holm, 4)
            if g.note:
                r["group_note"] = g.note
    if strict and problems:
        raise ResultFileError(f"{len(problems)} bad per-query file(s):\n" + "\n".join(f"  {p}" for p in problems))


def _statistic(task: str, meta: Dict[str, Any]):
    from ccmb_bench import bootstrap as boot

    return boot.statistic_for(task, meta)


def collect(results_dir: Path, include_paper: bool = True, strict: bool = False,
            declarations: Optional[training.Declarations] = None, resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED, rank: bool = True) -> List[Dict[str, Any]]:
    """Leaderboard rows from every valid result JSON under ``results_dir`` with training status, rank groups
    (``rank``; ``resamples``/``seed`` of the paired bootstraps) and reproduction marks, plus the published rows
    of the datasets that have runs (``include_paper``). Bad files are warned about by name (``strict``: a
    :class:`ResultFileError`); a folder without any valid result raises :class:`NoResultsError`."""
    scan = scan_results(results_dir)
    if strict:  # name every unusable per-query file too, before anything is built
        for res in scan.results:
            if res.get("per_query_file"):
                try:
                    grp.load_per_query(res, real_root(results_dir))
                except grp.PerQueryError as exc:
                    scan.notes.append((res["_path"], str(exc).replace(f"{res['_path']}: ", "", 1)))
    report_bad(scan.bad, strict, scan.notes)
    if not scan.results:
        what = (f"{scan.files} JSON file(s), none a valid result" if scan.files else "no JSON files")
        raise NoResultsError(f"{results_dir}: no ccmb-bench results ({what}; expected the results/ folder of "
                             "`ccmb-bench run --output DIR`)")
    decl = declarations or training.load_declarations()
    latest: Dict[tuple, Dict[str, Any]] = {}
    for res in scan.results:
        key = (res["model"], res.get("checkpoint_fingerprint") or "", res["dataset"], res["split"], res["task"],
               (res.get("protocol") or {}).get("name", ""))
        if key not in latest or (res.get("created") or "") >= (latest[key].get("created") or ""):
            latest[key] = res
    behind: Dict[int, Dict[str, Any]] = {}
    rows = []
    for res in latest.values():
        row = _row(res, decl)
        behind[id(row)] = res
        rows.append(row)
    columns_run = {_column(r) for r in rows}
    published = [r for r in paper_rows() if _column(r) in columns_run]
    for r in rows:
        reproduction(r, published)
    if rank:
        _rank(rows, behind, real_root(results_dir), resamples, seed, strict)
    if include_paper:
        rows += published
    return sort_rows(rows)


def main_value(row: Dict[str, Any]) -> Optional[float]:
    v = row.get(MAIN_METRIC.get(row["task"], ""))
    return float(v) if _finite(v) else None


def _block_index(r: Dict[str, Any]) -> int:
    return BLOCKS.index(r["block"]) if r.get("block") in BLOCKS else len(BLOCKS)


def sort_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Stable order: dataset, task, split; block (zero-shot, fine-tuned, seen); our runs before the reference
    rows; grouped by protocol (so no order ranks one protocol against another); then the main metric (best
    first), then model name."""
    def key(r):
        metric = MAIN_METRIC.get(r["task"], "")
        v = main_value(r)
        score = math.inf if v is None else (v if metric in LOWER_IS_BETTER else -v)
        return (r["dataset"], r["task"], r["split"], _block_index(r), r.get("reference", ""), r.get("protocol", ""),
                score, r["model"], r.get("checkpoint_fingerprint", ""))
    return sorted(rows, key=key)


def natural_key(name: str) -> tuple:
    """``R@1 < R@5 < R@10``: digit runs compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))


def columns(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """ID columns, then known metrics in a fixed order (each followed by its interval), then any other column
    in natural order (R@1, R@5, R@10)."""
    present = set(k for r in rows for k in r)
    cols = [c for c in ID_COLUMNS if c in present or c in ("dataset", "model")]
    for m in METRIC_ORDER:
        cols += [c for c in (m, m + CI_SUFFIX[0], m + CI_SUFFIX[1]) if c in present]
    cols += sorted(present - set(cols), key=natural_key)
    return cols


def groups(rows: Sequence[Dict[str, Any]]) -> List[Tuple[Tuple[str, str, str], List[Dict[str, Any]]]]:
    """Rows per (dataset, split, task), in row order."""
    out: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(_column(r), []).append(r)
    return list(out.items())


def interval(row: Dict[str, Any], metric: str) -> Optional[Tuple[float, float]]:
    lo, hi = row.get(metric + CI_SUFFIX[0]), row.get(metric + CI_SUFFIX[1])
    return (lo, hi) if _finite(lo) and _finite(hi) else None


def model_label(row: Dict[str, Any]) -> str:
    setting = row.get("setting")
    if row.get("reference") or not setting:
        return row["model"]
    return f"{row['model']} ({setting})"


def group_text(row: Dict[str, Any]) -> str:
    """Why a row is in its rank group (a tooltip)."""
    g = row.get("group")
    if not isinstance(g, int):
        return row.get("group_note", "")
    if row.get("group_p_holm") is None:
        return f"rank group {g}: leads it" + (" (exact tie)" if row.get("group_note") == "exact tie" else "")
    return (f"rank group {g}: not significantly different from {row.get('group_leader')} (paired bootstrap, "
            f"Holm-adjusted p = {row['group_p_holm']:.3g})")


def _alt(row: Dict[str, Any]) -> str:
    """The metrics a published row has when it lacks the main one (e.g. R@1 only)."""
    known = TASK_METRICS.get(row["task"], [])
    return ", ".join(f"{m} {row[m]:.1f}" for m in known if _finite(row.get(m)))


def _cell(r: Dict[str, Any]) -> Dict[str, Any]:
    main = MAIN_METRIC.get(r["task"], "")
    cell = {"value": main_value(r), "ci": interval(r, main), "group": r.get("group") if isinstance(
        r.get("group"), int) else None, "group_text": group_text(r), "status": r.get("training", ""),
        "why": r.get("training_why", ""), "reference": bool(r.get("reference")), "source": r.get("source", "")}
    if cell["value"] is None and r.get("reference"):
        cell["alt"] = _alt(r)
    if r.get("delta_metric"):
        cell.update(published=r["published"], delta=r["delta"], delta_metric=r["delta_metric"],
                    reproduced=r["reproduced"] == "yes")
    return cell


def _one_or_mixed(values: Iterable[str]) -> str:
    vals = sorted(set(values))
    return vals[0] if len(vals) == 1 else "mixed"


def overview(rows: Sequence[Dict[str, Any]]) -> Tuple[List[Tuple[str, str, str]], List[Dict[str, Any]]]:
    """The models × datasets matrix: the columns ``(dataset, split, task)`` that have runs, and blocks
    (zero-shot, fine-tuned, seen in training), each with its run lines (one per model, setting, fingerprint
    and protocol) then its published lines (one per model and setting, with their sources); ``cells`` maps a
    column to the main metric, interval, rank group, training status and reproduction of that row."""
    cols = [g for g, sub in groups(rows) if any(not r.get("reference") for r in sub)]
    colset = set(cols)
    blocks = []
    for block in BLOCKS:
        lines: Dict[tuple, Dict[str, Any]] = {}
        for r in rows:
            col = _column(r)
            if col not in colset or r.get("block") != block:
                continue
            if r.get("reference"):
                key: tuple = ("paper", r["model"], r.get("setting", ""))
                line = lines.setdefault(key, {"model": r["model"], "reference": True, "protocol": r["protocol"],
                                              "training": r.get("training", ""), "training_data": "",
                                              "decontaminated": "", "fingerprint": "", "sources": [], "url": "",
                                              "cells": {}})
                if r.get("source") and r["source"] not in line["sources"]:
                    line["sources"].append(r["source"])
                if not line["url"] and str(r.get("url", "")).startswith("https://"):
                    line["url"] = r["url"]
            else:
                key = ("run", r["model"], r.get("setting", ""), r.get("checkpoint_fingerprint", ""),
                       r.get("protocol", ""))
                line = lines.setdefault(key, {"model": model_label(r), "reference": False,
                                              "protocol": r.get("protocol", ""), "training": "",
                                              "training_data": r.get("training_data", ""),
                                              "fingerprint": r.get("checkpoint_fingerprint", ""), "sources": [],
                                              "url": "", "cells": {}, "_status": [], "_decont": []})
                line["_status"].append(r.get("training", ""))
                line["_decont"].append(r.get("decontaminated", "unknown"))
            line["cells"][col] = _cell(r)
        runs = [ln for k, ln in lines.items() if k[0] == "run"]
        refs = [ln for k, ln in lines.items() if k[0] == "paper"]
        for ln in runs:
            ln["training"] = " / ".join(sorted(set(ln.pop("_status"))))
            ln["decontaminated"] = _one_or_mixed(ln.pop("_decont"))
        runs.sort(key=lambda ln: (ln["protocol"], -sum(1 for c in ln["cells"].values() if c["group"] == 1),
                                  ln["model"], ln["fingerprint"]))
        first = {ln["model"]: next((cols.index(c) for c in cols if c in ln["cells"]), len(cols)) for ln in refs}
        refs.sort(key=lambda ln: (first[ln["model"]], -max((c["value"] or 0) for c in ln["cells"].values()),
                                  ln["model"]))
        seen: Dict[Tuple[str, str], int] = {}  # the same label twice (two checkpoints): tell them apart
        for ln in runs:
            seen[(ln["model"], ln["protocol"])] = seen.get((ln["model"], ln["protocol"]), 0) + 1
        for ln in runs:
            if seen[(ln["model"], ln["protocol"])] > 1 and ln["fingerprint"]:
                ln["model"] += f" [{ln['fingerprint'][:8]}]"
        if runs or refs:
            blocks.append({"block": block, "title": BLOCK_TITLES[block], "lines": runs + refs})
    return cols, blocks


def unpublished(columns_of: Sequence[Tuple[str, str, str]]) -> List[str]:
    """The overview columns for which ``data/paper_results.json`` has no published row (a note under the
    overview says so)."""
    have = {_column(r) for r in paper_rows()}
    return [f"{d}/{s}" for d, s, t in columns_of if (d, s, t) not in have]


# ---------------------------------------------------------------------------------------------- exports
def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if _is_number(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    return str(v)


def _fmt_ci(value: Optional[float], ci: Optional[Tuple[float, float]]) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" + (f" ({ci[0]:.1f}–{ci[1]:.1f})" if ci else "")


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(v: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first) gets a
    leading apostrophe; numbers stay numbers."""
    if isinstance(v, str) and v.startswith(FORMULA_PREFIXES):
        return "'" + v
    return v


def _write_csv(rows: Sequence[Dict[str, Any]], cols: List[str]) -> str:
    buf = io.StringIO()
    # RFC 4180 line ends: a CR or LF inside a cell gets quoted (with LF-only line ends a CR would split the row)
    w = csv.DictWriter(buf, fieldnames=[csv_safe(c) for c in cols], extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({csv_safe(c): csv_safe(r.get(c, "")) for c in cols})
    return buf.getvalue()


def to_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """Every column of every row (formula prefixes neutralised)."""
    return _write_csv(rows, columns(rows))


_MD_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "\\": "\\\\", "`": "\\`", "[": "\\[",
               "]": "\\]", "\n": " ", "\r": " "}


def md_escape(v: Any) -> str:
    """A cell for a Markdown table: HTML and link syntax escaped, pipes and newlines neutralised."""
    return "".join(_MD_ESCAPES.get(ch, ch) for ch in _fmt(v))


def _md_table(head: List[str], body: Iterable[List[str]]) -> List[str]:
    out = ["| " + " | ".join(md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cells) + " |" for cells in body]
    return out + [""]


def task_metrics(rows: Sequence[Dict[str, Any]], task: str) -> List[str]:
    """The task's reader-facing metrics that some row has (main metric first)."""
    known = TASK_METRICS.get(task) or [MAIN_METRIC.get(task, "")]
    return [m for m in known if any(_finite(r.get(m)) for r in rows)]


def _md_cell(cell: Optional[Dict[str, Any]]) -> str:
    """An overview cell in Markdown: value (interval), rank group (G1 in bold), the training status when it is
    not plain zero-shot, the difference from the published row."""
    if not cell:
        return ""
    if cell["value"] is None:
        return md_escape(cell.get("alt", ""))
    text = md_escape(_fmt_ci(cell["value"], cell["ci"]))
    if cell["group"] is not None:
        text = f"**{text} G1**" if cell["group"] == 1 else f"{text} G{cell['group']}"
    if cell.get("delta_metric"):
        text += md_escape(f" Δ{cell['delta']:+.1f} vs published" + (" (reproduced)" if cell["reproduced"] else ""))
    if cell["status"] == training.STATUS_LABELS["unknown"]:
        text += " ?"
    return text


def _line_training(ln: Dict[str, Any]) -> str:
    if ln["reference"]:
        return "published: " + ", ".join(ln["sources"])
    text = ln["training"] or ""
    if ln.get("decontaminated") == "yes":
        text += ", decontaminated"
    return text


def to_markdown(rows: Sequence[Dict[str, Any]], title: str = "CCMB leaderboard") -> str:
    """The overview per block (zero-shot, fine-tuned, seen in training; runs then published rows; main
    metric with interval, rank groups G1/G2 with G1 in bold), then one compact table per dataset and task with
    only that task's metrics."""
    out = [f"# {md_escape(title)}", ""]
    if not rows:
        return "\n".join(out + ["(no results)"]) + "\n"
    all_cols, blocks = overview(rows)
    if blocks:
        out += ["## Overview", "", "Main metric per dataset (95% interval). G1, G2...: rank groups within the block "
                "and protocol (paired bootstrap on the per-query results, 5%, Holm-corrected; **G1** = not "
                "significantly below the best). ? = training data not declared. Δ = difference from the published "
                "number of the same model and setting (reproduced: within 1 point).", ""]
        missing = unpublished(all_cols)
        if missing:
            out += [f"No published numbers for {md_escape(', '.join(missing))}.", ""]
    for block in blocks:
        out += [f"### {block['title']}", ""]
        for start in range(0, len(all_cols), MD_OVERVIEW_COLUMNS):  # <= 10 columns per table
            cols = all_cols[start:start + MD_OVERVIEW_COLUMNS]
            lines = [ln for ln in block["lines"] if any(c in ln["cells"] for c in cols)]
            if not lines:
                continue
            head = ["model", "protocol", "training"] + [f"{d} {s} ({MAIN_METRIC.get(t, '?')})" for d, s, t in cols]
            body = []
            for ln in lines:
                cells = [md_escape(ln["model"] + (" [paper]" if ln["reference"] else "")),
                         md_escape(ln["protocol"] or "unspecified"), md_escape(_line_training(ln))]
                cells += [_md_cell(ln["cells"].get(c)) for c in cols]
                body.append(cells)
            out += _md_table(head, body)
    for (dataset, split, task), sub in groups(rows):
        if not any(not r.get("reference") for r in sub):
            continue
        metrics = task_metrics(sub, task)
        main = MAIN_METRIC.get(task, "")
        protocols = sorted({r.get("protocol") or "unspecified" for r in sub})
        out += [f"## {md_escape(dataset)} / {md_escape(split)} — {md_escape(task)}", "",
                f"Protocols: {', '.join(md_escape(p) for p in protocols)}.", ""]
        body = []
        for r in sub:
            label = model_label(r) + (" [paper]" if r.get("reference") else "")
            cells = [md_escape(label), md_escape(r.get("protocol") or "unspecified"), md_escape(r.get("training", ""))]
            for m in metrics:
                v = r.get(m)
                text = md_escape(_fmt_ci(float(v), interval(r, m)) if (m == main and _finite(v)) else _fmt(v))
                if m == main and isinstance(r.get("group"), int) and text:
                    text = f"**{text} G1**" if r["group"] == 1 else f"{text} G{r['group']}"
                cells.append(text)
            body.append(cells)
        out += _md_table(["model", "protocol", "training"] + metrics, body)
    return "\n".join(out) + "\n"


CLIP_BENCHMARK_NAMES = {"i2t_R@{k}": "text_retrieval_recall@{k}", "t2i_R@{k}": "image_retrieval_recall@{k}",
                        "top1": "acc1", "top5": "acc5", "mean_per_class_recall": "mean_per_class_recall",
                        "AUC": "auc", "accuracy": "accuracy"}


def to_clip_benchmark(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows in CLIP_benchmark's CSV style: ``dataset, model, pretrained, task`` + its metric names as 0-1
    fractions (``image_retrieval_recall@K`` = text-to-image, ``text_retrieval_recall@K`` = image-to-text)."""
    task_names = {"retrieval": "zeroshot_retrieval", "classification": "zeroshot_classification"}
    out = []
    for r in rows:
        row: Dict[str, Any] = {"dataset": r["dataset"], "model": r["model"],
                               "pretrained": r.get("checkpoint_fingerprint") or r.get("reference", ""),
                               "task": task_names.get(r["task"], r["task"]), "protocol": r.get("protocol", ""),
                               "protocol_detail": r.get("protocol_detail", ""), "training": r.get("training", "")}
        for ours, theirs in CLIP_BENCHMARK_NAMES.items():
            for k in (1, 5, 10):
                name = ours.format(k=k)
                if _is_number(r.get(name)):
                    row[theirs.format(k=k)] = round(r[name] / 100.0, 6)
        for extra in ("BLEU-4", "ROUGE-L", "CIDEr", "clip_score", "frechet_distance", "MR"):
            if _is_number(r.get(extra)):
                row[extra] = round(r[extra] / 100.0, 6) if extra != "frechet_distance" else round(r[extra], 6)
        out.append(row)
    return out


def _plain_csv(rows: Sequence[Dict[str, Any]]) -> str:
    head = ["dataset", "model", "pretrained", "task", "protocol", "protocol_detail", "training"]
    return _write_csv(rows, head + sorted(set(k for r in rows for k in r) - set(head), key=natural_key))


def export(results_dir: Path, csv_path: Optional[Path] = None, markdown: Optional[Path] = None,
           html: Optional[Path] = None, include_paper: bool = True, fmt: str = "ccmb",
           title: str = "CCMB leaderboard", strict: bool = False,
           declarations: Optional[training.Declarations] = None, resamples: int = DEFAULT_RESAMPLES,
           seed: int = DEFAULT_SEED) -> List[Dict[str, Any]]:
    """Build the leaderboard and write the requested files atomically; returns the rows."""
    from ccmb_bench.html import render_html

    rows = collect(results_dir, include_paper=include_paper, strict=strict, declarations=declarations,
                   resamples=resamples, seed=seed)
    table = to_clip_benchmark(rows) if fmt == "clip-benchmark" else rows
    if csv_path:
        write_text(Path(csv_path), to_csv(table) if fmt == "ccmb" else _plain_csv(table))
    if markdown:
        write_text(Path(markdown), to_markdown(rows, title=title))
    if html:
        write_text(Path(html), render_html(rows, title=title))
    return table
