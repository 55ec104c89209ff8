"""Leaderboard: validate result JSONs, collect them into rows with stable sorted columns; CSV / Markdown /
HTML exports.

Rows are one per (model, checkpoint fingerprint, dataset, split, task, protocol); when several result files
share that key, the newest (``created``) wins. ``include_paper`` adds the published rows of
``data/paper_results.json`` marked ``reference=paper`` (their protocol: ``as published``). Rows of different
protocols are never ranked against each other: the best of a column is marked per protocol.
``fmt="clip-benchmark"`` writes CLIP_benchmark's column names and 0-1 fractions.

A result file that is not a valid result (a JSON list, ``"metrics": "high"``, ``"model": null``...) is
reported by name: skipped with a warning, or an error with ``strict=True``.
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
from ccmb_bench.results import SCHEMA

logger = logging.getLogger(__name__)

PAPER_FILE = Path(__file__).with_name("data") / "paper_results.json"

ID_COLUMNS = ["dataset", "split", "task", "model", "setting", "protocol", "decontaminated", "reference",
              "checkpoint_fingerprint", "device"]
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
MD_OVERVIEW_COLUMNS = 7  # datasets per Markdown overview table (+ model, protocol, decontaminated = 10)
CI_SUFFIX = ("_ci95_lo", "_ci95_hi")
DECONTAMINATED = {True: "yes", False: "no", None: "unknown"}


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


# ---------------------------------------------------------------------------------------------- validation
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
        bad = [k for k, v in metrics.items() if not (v is None or isinstance(v, (str, int, float, bool)))]
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
    return problems


@dataclass
class Scan:
    """The valid results of a folder and the files that were not usable (``(path, reason)``)."""

    results: List[Dict[str, Any]] = field(default_factory=list)
    bad: List[Tuple[str, str]] = field(default_factory=list)


def scan_results(directory: Path) -> Scan:
    """Every result JSON under ``directory`` (recursively, ``cache`` folders aside), validated.

    JSON objects of another schema (manifests, provenance files) are not results and pass unnoticed; a file
    that claims our schema but is malformed, a result-like object without the schema, an unparsable file and
    a JSON that is not an object (unless a result names it as its ``per_query_file``) are reported."""
    scan = Scan()
    suspects: List[Tuple[Path, str]] = []
    referenced = set()
    for path in sorted(Path(directory).rglob("*.json")):
        if "cache" in path.relative_to(directory).parts:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            suspects.append((path, f"not readable JSON ({exc})"))
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
        if isinstance(data.get("per_query_file"), str):
            referenced.add((path.parent / data["per_query_file"]).resolve())
        data["_path"] = str(path)
        scan.results.append(data)
    for path, reason in suspects:
        if path.resolve() not in referenced:
            scan.bad.append((str(path), reason))
    scan.bad.sort()
    return scan


def report_bad(bad: Sequence[Tuple[str, str]], strict: bool) -> None:
    """Warn about each bad file, or raise :class:`ResultFileError` naming all of them."""
    if not bad:
        return
    if strict:
        raise ResultFileError(f"{len(bad)} bad result file(s):\n" + "\n".join(f"  {p}: {r}" for p, r in bad))
    for p, r in bad:
        logger.warning("%s: skipped, %s", p, r)


# ---------------------------------------------------------------------------------------------- rows
def paper_rows() -> List[Dict[str, Any]]:
    """The published reference rows, each with its source and its protocol as published."""
    data = json.loads(PAPER_FILE.read_text(encoding="utf-8"))
    rows = []
    for r in data["rows"]:
        row = {"dataset": r["dataset"], "split": r["split"], "task": r["task"], "model": r["model"],
               "setting": r.get("setting", ""), "protocol": r.get("protocol") or PAPER_PROTOCOL,
               "decontaminated": "unknown", "reference": "paper", "checkpoint_fingerprint": "", "device": "",
               "source": r.get("source", ""), "url": r.get("url", ""), "note": r.get("note", "")}
        row.update(r["metrics"])
        rows.append(row)
    return rows


def _row(res: Dict[str, Any]) -> Dict[str, Any]:
    proto = res.get("protocol") or {}
    td = res.get("training_data") or {}
    row: Dict[str, Any] = {"dataset": res["dataset"], "split": res["split"], "task": res["task"],
                           "model": res["model"], "setting": (res.get("settings") or {}).get("setting", ""),
                           "protocol": proto.get("name", ""),
                           "decontaminated": DECONTAMINATED.get(td.get("decontaminated"), "unknown"),
                           "reference": "", "checkpoint_fingerprint": res.get("checkpoint_fingerprint") or "",
                           "device": res.get("device") or ""}
    if proto.get("reference"):
        row["protocol_detail"] = str(proto["reference"]) + (f" v{proto['version']}" if proto.get("version") else "")
    for k, v in res["metrics"].items():
        if _is_number(v):
            row[k] = round(v, 4) if math.isfinite(v) else ""
        elif isinstance(v, (str, bool)):
            row[k] = v
    for k, (lo, hi) in (res.get("metrics_ci95") or {}).items():
        if _finite(lo) and _finite(hi):
            row[k + CI_SUFFIX[0]], row[k + CI_SUFFIX[1]] = round(lo, 4), round(hi, 4)
    return row


def collect(results_dir: Path, include_paper: bool = False, strict: bool = False) -> List[Dict[str, Any]]:
    """Leaderboard rows from every valid result JSON under ``results_dir`` (+ the paper's rows); bad files are
    warned about by name (``strict``: a :class:`ResultFileError`)."""
    scan = scan_results(results_dir)
    report_bad(scan.bad, strict)
    latest: Dict[tuple, Dict[str, Any]] = {}
    for res in scan.results:
        key = (res["model"], res.get("checkpoint_fingerprint") or "", res["dataset"], res["split"], res["task"],
               (res.get("protocol") or {}).get("name", ""))
        if key not in latest or (res.get("created") or "") >= (latest[key].get("created") or ""):
            latest[key] = res
    rows = [_row(res) for res in latest.values()]
    if include_paper:
        rows += paper_rows()
    return sort_rows(rows)


def main_value(row: Dict[str, Any]) -> Optional[float]:
    v = row.get(MAIN_METRIC.get(row["task"], ""))
    return float(v) if _finite(v) else None


def sort_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Stable order: dataset, task, split; our runs before the reference rows; grouped by protocol (so no
    order ranks one protocol against another); then the main metric (best first), then model name."""
    def key(r):
        metric = MAIN_METRIC.get(r["task"], "")
        v = main_value(r)
        score = math.inf if v is None else (v if metric in LOWER_IS_BETTER else -v)
        return (r["dataset"], r["task"], r["split"], r.get("reference", ""), r.get("protocol", ""), score,
                r["model"], r.get("checkpoint_fingerprint", ""))
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
        out.setdefault((r["dataset"], r["split"], r["task"]), []).append(r)
    return list(out.items())


def best_marks(rows: Sequence[Dict[str, Any]], metric: str) -> List[bool]:
    """Per row: is it the best of its protocol on ``metric``? Only runs of this harness compete (published
    rows are references), only among at least two runs of that protocol with a value (a protocol is never
    ranked against another)."""
    by_proto: Dict[str, List[int]] = {}
    for i, r in enumerate(rows):
        if _finite(r.get(metric)) and not r.get("reference"):
            by_proto.setdefault(str(r.get("protocol", "")), []).append(i)
    marks = [False] * len(rows)
    for idx in by_proto.values():
        if len(idx) < 2:
            continue
        vals = [rows[i][metric] for i in idx]
        best = min(vals) if metric in LOWER_IS_BETTER else max(vals)
        for i in idx:
            marks[i] = rows[i][metric] == best
    return marks


def interval(row: Dict[str, Any], metric: str) -> Optional[Tuple[float, float]]:
    lo, hi = row.get(metric + CI_SUFFIX[0]), row.get(metric + CI_SUFFIX[1])
    return (lo, hi) if _finite(lo) and _finite(hi) else None


def model_label(row: Dict[str, Any]) -> str:
    return row["model"] + (f" ({row['setting']})" if row.get("setting") else "")


def overview(rows: Sequence[Dict[str, Any]]) -> Tuple[List[Tuple[str, str, str]], List[Dict[str, Any]]]:
    """The models × datasets matrix of the runs (reference rows stay in their dataset's section): the columns
    ``(dataset, split, task)`` and one line per (model, setting, fingerprint, protocol) with ``cells``
    ``{column: (value, interval, best)}``."""
    runs = [r for r in rows if not r.get("reference")]
    cols = [g for g, _ in groups(runs)]
    lines: Dict[tuple, Dict[str, Any]] = {}
    for (col, sub) in groups(runs):
        metric = MAIN_METRIC.get(col[2], "")
        for r, best in zip(sub, best_marks(sub, metric)):
            key = (r["model"], r.get("setting", ""), r.get("checkpoint_fingerprint", ""), r.get("protocol", ""))
            line = lines.setdefault(key, {"model": model_label(r), "protocol": r.get("protocol", ""),
                                          "decontaminated": r.get("decontaminated", "unknown"),
                                          "fingerprint": r.get("checkpoint_fingerprint", ""), "cells": {}})
            line["cells"][col] = (main_value(r), interval(r, metric), best)
            flags = line.setdefault("_flags", set())
            flags.add(r.get("decontaminated", "unknown"))
    for line in lines.values():  # decontamination is per evaluated set: one value, or "mixed"
        flags = line.pop("_flags")
        line["decontaminated"] = flags.pop() if len(flags) == 1 else "mixed"
    ordered = sorted(lines.values(), key=lambda ln: (ln["protocol"], -sum(1 for c in ln["cells"].values() if c[2]),
                                                    ln["model"], ln["fingerprint"]))
    # the same label twice (two checkpoints of one name): tell them apart by fingerprint
    seen: Dict[Tuple[str, str], int] = {}
    for ln in ordered:
        seen[(ln["model"], ln["protocol"])] = seen.get((ln["model"], ln["protocol"]), 0) + 1
    for ln in ordered:
        if seen[(ln["model"], ln["protocol"])] > 1 and ln["fingerprint"]:
            ln["model"] += f" [{ln['fingerprint'][:8]}]"
    return cols, ordered


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


def to_markdown(rows: Sequence[Dict[str, Any]], title: str = "CCMB leaderboard") -> str:
    """The overview matrix (main metric per dataset, interval in brackets, best per protocol in bold), then
    one compact table per dataset and task with only that task's metrics."""
    out = [f"# {md_escape(title)}", ""]
    if not rows:
        return "\n".join(out + ["(no results)"]) + "\n"
    all_cols, lines = overview(rows)
    if lines:
        out += ["## Overview", "", "Main metric per dataset (95% interval); **bold** = best within the same "
                "protocol.", ""]
    for start in range(0, len(all_cols) if lines else 0, MD_OVERVIEW_COLUMNS):  # <= 10 columns per table
        cols = all_cols[start:start + MD_OVERVIEW_COLUMNS]
        head = ["model", "protocol", "decontaminated"] + [f"{d} {s} ({MAIN_METRIC.get(t, '?')})" for d, s, t in cols]
        body = []
        for ln in lines:
            if not any(c in ln["cells"] for c in cols):
                continue
            cells = [md_escape(ln["model"]), md_escape(ln["protocol"] or "unspecified"), ln["decontaminated"]]
            for c in cols:
                value, ci, best = ln["cells"].get(c, (None, None, False))
                text = md_escape(_fmt_ci(value, ci))
                cells.append(f"**{text}**" if best and text else text)
            body.append(cells)
        out += _md_table(head, body)
    for (dataset, split, task), sub in groups(rows):
        metrics = task_metrics(sub, task)
        main = MAIN_METRIC.get(task, "")
        marks = {m: best_marks(sub, m) for m in metrics}
        protocols = sorted({r.get("protocol") or "unspecified" for r in sub})
        out += [f"## {md_escape(dataset)} / {md_escape(split)} — {md_escape(task)}", "",
                f"Protocols: {', '.join(md_escape(p) for p in protocols)}.", ""]
        body = []
        for i, r in enumerate(sub):
            label = model_label(r) + (" [paper]" if r.get("reference") else "")
            cells = [md_escape(label), md_escape(r.get("protocol") or "unspecified"), r.get("decontaminated", "")]
            for m in metrics:
                v = r.get(m)
                text = md_escape(_fmt_ci(float(v), interval(r, m)) if (m == main and _finite(v)) else _fmt(v))
                cells.append(f"**{text}**" if marks[m][i] and text else text)
            body.append(cells)
        out += _md_table(["model", "protocol", "decont."] + metrics, body)
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
                               "task": task_names.get(r["task"], r["task"])}
        for ours, theirs in CLIP_BENCHMARK_NAMES.items():
            for k in (1, 5, 10):
                name = ours.format(k=k)
                if _is_number(r.get(name)):
                    row[theirs.format(k=k)] = round(r[name] / 100.0, 6)
        for extra in ("BLEU-4", "ROUGE-L", "CIDEr", "clip_score", "frechet_distance", "MR"):
            if _is_number(r.get(extra)):
                row[extra] = r[extra] / 100.0 if extra != "frechet_distance" else r[extra]
        out.append(row)
    return out


def _plain_csv(rows: Sequence[Dict[str, Any]]) -> str:
    head = ["dataset", "model", "pretrained", "task"]
    return _write_csv(rows, head + sorted(set(k for r in rows for k in r) - set(head), key=natural_key))


def export(results_dir: Path, csv_path: Optional[Path] = None, markdown: Optional[Path] = None,
           html: Optional[Path] = None, include_paper: bool = False, fmt: str = "ccmb",
           title: str = "CCMB leaderboard", strict: bool = False) -> List[Dict[str, Any]]:
    """Build the leaderboard and write the requested files atomically; returns the rows."""
    from ccmb_bench.html import render_html

    rows = collect(results_dir, include_paper=include_paper, strict=strict)
    table = to_clip_benchmark(rows) if fmt == "clip-benchmark" else rows
    if csv_path:
        write_text(Path(csv_path), to_csv(table) if fmt == "ccmb" else _plain_csv(table))
    if markdown:
        write_text(Path(markdown), to_markdown(rows, title=title))
    if html:
        write_text(Path(html), render_html(rows, title=title))
    return table
