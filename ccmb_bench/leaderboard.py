"""Leaderboard: collect result JSONs into rows with stable sorted columns; CSV / Markdown / HTML exports.

Rows are one per (model, checkpoint fingerprint, dataset, split, task); when several result files share that
key, the newest (``created``) wins. ``include_paper`` adds the published rows of ``data/paper_results.json``
marked ``reference=paper``. ``fmt="clip-benchmark"`` writes CLIP_benchmark's column names and 0-1 fractions.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ccmb.atomic import write_text
from ccmb_bench.results import load_results

PAPER_FILE = Path(__file__).with_name("data") / "paper_results.json"

ID_COLUMNS = ["dataset", "split", "task", "model", "setting", "reference", "checkpoint_fingerprint", "device"]
METRIC_ORDER = ["MR", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_mean", "t2i_mean",
                "AUC", "accuracy", "top1", "top5", "mean_per_class_recall", "BLEU-4", "ROUGE-L", "CIDEr",
                "clip_score", "frechet_distance"]
# the metric that ranks models within a dataset (and the chart's bar)
MAIN_METRIC = {"retrieval": "MR", "matching": "AUC", "classification": "top1", "captioning": "CIDEr",
               "text-to-image": "clip_score"}
LOWER_IS_BETTER = {"frechet_distance"}


def paper_rows() -> List[Dict[str, Any]]:
    data = json.loads(PAPER_FILE.read_text(encoding="utf-8"))
    rows = []
    for r in data["rows"]:
        row = {"dataset": r["dataset"], "split": r["split"], "task": r["task"], "model": r["model"],
               "setting": r.get("setting", ""), "reference": "paper", "checkpoint_fingerprint": "",
               "device": "", "source": r.get("source", ""), "note": r.get("note", "")}
        row.update(r["metrics"])
        rows.append(row)
    return rows


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def collect(results_dir: Path, include_paper: bool = False) -> List[Dict[str, Any]]:
    """Leaderboard rows from every result JSON under ``results_dir`` (+ the paper's rows)."""
    latest: Dict[tuple, Dict[str, Any]] = {}
    for res in load_results(results_dir):
        key = (res["model"], res.get("checkpoint_fingerprint", ""), res["dataset"], res["split"], res["task"])
        if key not in latest or res.get("created", "") >= latest[key].get("created", ""):
            latest[key] = res
    rows = []
    for res in latest.values():
        row: Dict[str, Any] = {"dataset": res["dataset"], "split": res["split"], "task": res["task"],
                               "model": res["model"], "setting": res.get("settings", {}).get("setting", ""),
                               "reference": "", "checkpoint_fingerprint": res.get("checkpoint_fingerprint", ""),
                               "device": res.get("device", "")}
        for k, v in res.get("metrics", {}).items():
            row[k] = round(v, 4) if _is_number(v) and not math.isnan(v) else ("" if _is_number(v) else v)
        rows.append(row)
    if include_paper:
        rows += paper_rows()
    return sort_rows(rows)


def sort_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Stable order: dataset, task, then the main metric (best first; reference rows after ours on ties),
    then model name."""
    def key(r):
        metric = MAIN_METRIC.get(r["task"], "")
        v = r.get(metric)
        score = -v if _is_number(v) else math.inf
        return (r["dataset"], r["task"], r["split"], score, r.get("reference", ""), r["model"],
                r.get("checkpoint_fingerprint", ""))
    return sorted(rows, key=key)


def columns(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """ID columns, then known metrics in a fixed order, then any other column alphabetically."""
    present = set(k for r in rows for k in r)
    cols = [c for c in ID_COLUMNS if c in present or c in ("dataset", "model")]
    cols += [c for c in METRIC_ORDER if c in present]
    cols += sorted(present - set(cols))
    return cols


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if _is_number(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    return str(v)


def to_csv(rows: Sequence[Dict[str, Any]]) -> str:
    cols = columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    return buf.getvalue()


def to_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """One table per dataset, the main columns only (ID columns without fingerprint/device, metrics present)."""
    out = ["# CCMB leaderboard", ""]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for d in datasets:
        sub = [r for r in rows if r["dataset"] == d]
        cols = [c for c in columns(sub) if c not in ("checkpoint_fingerprint", "device", "dataset", "source")
                and any(r.get(c) not in (None, "") for r in sub)]
        out += [f"## {d}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in sub:
            cells = [_fmt(r.get(c, "")).replace("|", "\\|") for c in cols]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if not datasets:
        out.append("(no results)")
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


def export(results_dir: Path, csv_path: Optional[Path] = None, markdown: Optional[Path] = None,
           html: Optional[Path] = None, include_paper: bool = False, fmt: str = "ccmb",
           title: str = "CCMB leaderboard") -> List[Dict[str, Any]]:
    """Build the leaderboard and write the requested files atomically; returns the rows."""
    from ccmb_bench.html import render_html

    rows = collect(results_dir, include_paper=include_paper)
    table = to_clip_benchmark(rows) if fmt == "clip-benchmark" else rows
    if csv_path:
        write_text(Path(csv_path), to_csv(table) if fmt == "ccmb" else _plain_csv(table))
    if markdown:
        write_text(Path(markdown), to_markdown(rows))
    if html:
        write_text(Path(html), render_html(rows, columns(rows), MAIN_METRIC, title=title))
    return table


def _plain_csv(rows: Sequence[Dict[str, Any]]) -> str:
    head = ["dataset", "model", "pretrained", "task"]
    cols = head + sorted(set(k for r in rows for k in r) - set(head))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    return buf.getvalue()
