"""Self-contained HTML leaderboard: an overview matrix (models × datasets; zero-shot, fine-tuned and
seen-in-training blocks, each with its runs and the published rows, rank groups, training status,
reproduction marks), one section per dataset and task (its metrics only, the protocols) and a bar chart with
interval whiskers per section, all built by inline JavaScript through DOM APIs (no CDN, no network). Readable
from 390 px up: tables and charts scroll in their own containers, headers wrap between words, charts are
laid out for the width they get.

No data is substituted into markup: the page is a fixed template; the title and every row travel as JSON
inside ``<script type="application/json">`` with ``<``, ``>``, ``&`` (and U+2028/9) escaped, so no value can
close the element early; the script writes them with ``textContent``/``setAttribute``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ccmb_bench import leaderboard as lb

TEMPLATE = Path(__file__).with_name("templates") / "leaderboard.html"
DATA_ELEMENT = '<script type="application/json" id="leaderboard-data"></script>'
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def script_json(payload: Any) -> str:
    """JSON that is inert inside a ``<script>`` element (cannot end it, open a comment or a CDATA)."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    return "".join(_JSON_ESCAPES.get(ch, ch) for ch in text)


def _cells(ln: Dict[str, Any], cols: Sequence[tuple]) -> List[Any]:
    return [None if c not in ln["cells"] else {k: _clean(v) for k, v in ln["cells"][c].items()} for c in cols]


def payload(rows: Sequence[Dict[str, Any]], title: str) -> Dict[str, Any]:
    """What the page script renders: the overview blocks (runs and published rows per dataset column) and
    the per-dataset sections."""
    cols, blocks = lb.overview(rows)
    over = {"columns": [{"dataset": d, "split": s, "task": t, "metric": lb.MAIN_METRIC.get(t, "")}
                        for d, s, t in cols],
            "unpublished": lb.unpublished(cols),
            "blocks": [{"block": b["block"], "title": b["title"],
                        "lines": [{"model": ln["model"], "reference": ln["reference"],
                                   "protocol": ln["protocol"] or "unspecified", "training": ln["training"],
                                   "training_data": ln["training_data"], "decontaminated": ln["decontaminated"],
                                   "sources": ln["sources"],
                                   "url": ln["url"] if str(ln["url"]).startswith("https://") else "",
                                   "cells": _cells(ln, cols)} for ln in b["lines"]]} for b in blocks]}
    sections: List[Dict[str, Any]] = []
    for (dataset, split, task), sub in lb.groups(rows):
        if all(r.get("reference") for r in sub):
            continue
        metrics = lb.task_metrics(sub, task)
        main = lb.MAIN_METRIC.get(task, "")
        sections.append({
            "dataset": dataset, "split": split, "task": task, "main": main, "metrics": metrics,
            "lower_is_better": [m for m in metrics if m in lb.LOWER_IS_BETTER],
            "protocols": sorted({r.get("protocol") or "unspecified" for r in sub}),
            "rows": [{"model": r["model"], "label": lb.model_label(r), "reference": bool(r.get("reference")),
                      "protocol": r.get("protocol") or "unspecified",
                      "protocol_detail": r.get("protocol_detail", ""), "block": r.get("block", ""),
                      "training": r.get("training", ""), "training_why": r.get("training_why", ""),
                      "training_data": r.get("training_data", ""),
                      "decontaminated": r.get("decontaminated", "unknown"),
                      "source": r.get("source", ""), "note": r.get("note", ""),
                      "url": r["url"] if str(r.get("url", "")).startswith("https://") else "",
                      "values": {m: _clean(r.get(m)) for m in metrics if lb._is_number(r.get(m))},
                      "ci": lb.interval(r, main),
                      "group": r["group"] if isinstance(r.get("group"), int) else None,
                      "group_text": lb.group_text(r),
                      "delta": _clean(r.get("delta")), "delta_metric": r.get("delta_metric", ""),
                      "published": r.get("published", ""), "reproduced": r.get("reproduced") == "yes"}
                     for r in sub]})
    return {"title": title, "overview": over, "sections": sections,
            "runs": sum(1 for r in rows if not r.get("reference")),
            "references": sum(1 for r in rows if r.get("reference"))}


def render_html(rows: Sequence[Dict[str, Any]], title: str = "CCMB leaderboard") -> str:
    """The page: the fixed template with the escaped JSON payload as the content of its data element."""
    page = TEMPLATE.read_text(encoding="utf-8")
    if page.count(DATA_ELEMENT) != 1:
        raise RuntimeError(f"{TEMPLATE}: expected exactly one {DATA_ELEMENT}")
    head, tail = page.split(DATA_ELEMENT)
    return head + DATA_ELEMENT[:-len("</script>")] + script_json(payload(rows, title)) + "</script>" + tail
