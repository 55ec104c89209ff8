"""Model-score curation (``ccmb filter --scores``, ``ccmb stats --scores``): thresholds over the scores file,
``low_agreement`` / ``not_scored`` added to a decision table, the score distribution and its histogram.

Cosines are model-specific (0.28 under OpenAI CLIP means nothing under another model), so a threshold is
best given as a share: ``keep_top_percent=30`` keeps the samples whose score is at least the score of the
``ceil(0.3 * n)``-th best of the ``n`` scored samples. Ties at that score are all kept (so slightly more
than 30% may stay; never a random pick among equal scores).
"""
from __future__ import annotations

import io
import json
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ... import atomic
from ...types import PathLike
from ..tables.dataflow import Fn
from ..tables.decisions import DecisionTable
from ..tables.schema import DECISION_SCHEMA, CurationError
from ..tables.scores import SCORE_FIELDS, read_scores, scores_info

logger = logging.getLogger(__name__)

REASON_LOW_AGREEMENT = "low_agreement"
REASON_NOT_SCORED = "not_scored"
PERCENTILES = (1, 5, 10, 25, 50, 70, 75, 90, 95, 99)
SCORED_SCHEMA = pa.schema(list(DECISION_SCHEMA) + [pa.field("s", pa.float64())])


def score_values(table: pa.Table, field: str) -> np.ndarray:
    """The non-null scores of ``field`` as float64."""
    if field not in table.column_names:
        raise CurationError(f"no score column {field!r}; one of {[f for f in SCORE_FIELDS if f in table.column_names]}")
    return pc.drop_null(table.column(field)).to_numpy(zero_copy_only=False).astype(np.float64)


def top_percent_threshold(values: np.ndarray, percent: float) -> float:
    """The score of the ``ceil(percent/100 * n)``-th best value: keeping ``score >= threshold`` keeps the top
    ``percent`` percent (plus ties at the threshold). 100 keeps all; 0 keeps none (+inf)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"keep_top_percent must be within 0..100, got {percent}")
    n = len(values)
    k = math.ceil(percent / 100.0 * n - 1e-9)
    if n == 0 or k == 0:
        return math.inf
    return float(np.partition(values, n - k)[n - k])


def low_agreement_mask(scores: np.ndarray, threshold: float) -> np.ndarray:
    """True where a score is below ``threshold`` (NaN never passes)."""
    with np.errstate(invalid="ignore"):
        return ~(scores >= threshold)


def threshold_of(scores_path: PathLike, field: str, min_score: Optional[float],
                 keep_top_percent: Optional[float]) -> float:
    """The score threshold: ``min_score``, or the ``keep_top_percent`` threshold over every scored sample
    (reads only the score column)."""
    if (min_score is None) == (keep_top_percent is None):
        raise ValueError("give exactly one of min_score and keep_top_percent")
    if min_score is not None:
        return float(min_score)
    read_scores(scores_path, ["key", field])  # a clear error for a bad file or field
    values = pq.read_table(scores_path, columns=[field]).column(field)
    return top_percent_threshold(pc.drop_null(values).to_numpy(zero_copy_only=False).astype(np.float64),
                                 keep_top_percent)


def _score_rows(field: str, t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("key"), "s": pc.cast(t.column(field), pa.float64())})


def _assign(threshold: float, t: pa.Table) -> pa.Table:
    keep = pc.fill_null(t.column("keep"), False).to_numpy(zero_copy_only=False)
    s = pc.fill_null(t.column("s"), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    no_score = keep & np.isnan(s)
    low = keep & ~no_score & low_agreement_mask(s, threshold)
    reason = t.column("reason")
    reason = pc.if_else(pa.array(no_score), pa.scalar(REASON_NOT_SCORED), reason)
    reason = pc.if_else(pa.array(low), pa.scalar(REASON_LOW_AGREEMENT), reason)
    return pa.table({"key": t.column("key"), "shard": t.column("shard"), "keep": pc.is_null(reason),
                     "reason": reason, "duplicate_of": t.column("duplicate_of")})


def scored_dataset(engine, table: DecisionTable, scores_path: PathLike, field: str, threshold: float):
    """The rows of ``table`` with ``low_agreement`` / ``not_scored`` added (a decision dataset on ``engine``)."""
    rows = engine.read_table(table, DECISION_SCHEMA.names)
    scores = engine.read_files([scores_path], ["key", field], Fn(partial(_score_rows, field),
                                                                  pa.schema([("key", pa.string()),
                                                                             ("s", pa.float64())])))
    joined = engine.join(rows, scores, ["key"], "left", desc="scores")
    return engine.map(joined, Fn(partial(_assign, threshold), DECISION_SCHEMA))


def scores_table_info(scores_path: PathLike, field: str, threshold: float, min_score, keep_top_percent) -> str:
    return json.dumps({"scores": str(Path(scores_path).resolve()), "field": field, "threshold": threshold,
                       "min_score": min_score, "keep_top_percent": keep_top_percent})


# --------------------------------------------------------------------------------- distribution / plot

def score_stats(path: PathLike, fields: Sequence[str] = SCORE_FIELDS, bins: int = 40) -> Dict[str, Any]:
    """Per score field: count, mean, min, max, percentiles and a histogram (``bins`` equal-width bins)."""
    table = read_scores(path)
    out: Dict[str, Any] = {"scores": str(path), "rows": table.num_rows, "model": scores_info(path).get("model"),
                           "errors": int(table.num_rows - pc.count(table.column("error"), mode="only_null").as_py())
                           if "error" in table.column_names else 0, "fields": {}}
    for f in fields:
        if f not in table.column_names:
            continue
        v = score_values(table, f)
        if not len(v):
            out["fields"][f] = {"count": 0}
            continue
        counts, edges = np.histogram(v, bins=bins)
        d = {"count": int(len(v)), "mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
             "max": round(float(v.max()), 4)}
        d.update({f"p{p}": round(float(x), 4) for p, x in zip(PERCENTILES, np.percentile(v, PERCENTILES))})
        d["top_percent_thresholds"] = {str(p): round(top_percent_threshold(v, p), 4) for p in (10, 30, 50, 70, 90)}
        d["histogram"] = {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}
        out["fields"][f] = d
    return out


def format_score_stats(stats: Dict[str, Any]) -> str:
    lines = [f"scores {stats['scores']} ({stats['rows']} samples, model {stats.get('model')}, "
             f"{stats['errors']} not scored)"]
    for f, d in stats["fields"].items():
        if not d.get("count"):
            lines.append(f"  {f}: no values")
            continue
        pct = " ".join(f"p{p}={d[f'p{p}']:.3f}" for p in PERCENTILES)
        lines.append(f"  {f}: n={d['count']} mean={d['mean']:.3f} min={d['min']:.3f} max={d['max']:.3f}")
        lines.append(f"    {pct}")
        lines.append("    keep-top-percent P -> min score: " + ", ".join(
            f"{p}%: {t:.3f}" for p, t in d["top_percent_thresholds"].items()))
        hist = d["histogram"]
        peak = max(hist["counts"]) or 1
        step = max(1, len(hist["counts"]) // 20)
        for i in range(0, len(hist["counts"]), step):
            c = sum(hist["counts"][i:i + step])
            lines.append(f"    {hist['edges'][i]:7.3f} {'#' * max(0, round(40 * c / (peak * step)))} {c}")
    return "\n".join(lines)


def histogram_png(stats: Dict[str, Any], out: PathLike, field: str = "score",
                  marks: Sequence[int] = (10, 30, 50, 70, 90)) -> Path:
    """Draw the histogram of ``field`` with the keep-top-percent thresholds marked (PIL, no matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    d = stats["fields"].get(field)
    if not d or not d.get("count"):
        raise CurationError(f"{stats['scores']}: no {field} values to plot")
    counts, edges = d["histogram"]["counts"], d["histogram"]["edges"]
    w, h, m = 720, 360, 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    peak = max(counts) or 1
    x_of = lambda v: m + (v - lo) / span * (w - 2 * m)  # noqa: E731
    bar_w = (w - 2 * m) / len(counts)
    for i, c in enumerate(counts):
        x0 = m + i * bar_w
        y0 = h - m - c / peak * (h - 2 * m)
        draw.rectangle([x0, y0, x0 + bar_w - 1, h - m], fill=(31, 119, 180))
    draw.line([m, h - m, w - m, h - m], fill="black")
    draw.line([m, m, m, h - m], fill="black")
    for v in np.linspace(lo, hi, 6):
        draw.text((x_of(v) - 14, h - m + 6), f"{v:.2f}", fill="black", font=font)
    draw.text((4, m - 14), f"max {peak}", fill="black", font=font)
    for p in marks:
        t = d["top_percent_thresholds"].get(str(p))
        if t is None or not math.isfinite(t):
            continue
        x = x_of(t)
        draw.line([x, m, x, h - m], fill=(214, 39, 40))
        draw.text((x + 2, m + 2 + 12 * (marks.index(p) % 3)), f"top {p}%", fill=(214, 39, 40), font=font)
    draw.text((m, 8), f"{field} ({d['count']} samples, {stats.get('model')}); red: keep-top-percent thresholds",
              fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(out, buf.getvalue())
    return out


