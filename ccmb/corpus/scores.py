"""Model scores of a corpus (written by ``ccmb score``): reading, thresholds, ``low_agreement`` and plots.

The scores parquet has one row per scored sample: ``key``, ``shard``, ``row`` (its row in the shard's
float16 embedding files), ``score`` (cosine of the image and the sample's primary text), ``score_title``,
``score_content``, ``score_query`` (null where the field is empty) and ``error`` (why a sample could not be
scored; its scores are null). This module never imports a model: the corpus library reads only the parquet
and the ``.npy`` embedding shards.

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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import atomic
from .table import DECISION_SCHEMA, CurationError, Summary, decision_metadata, read_decisions, write_decisions

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

SCORE_FIELDS = ("score", "score_title", "score_content", "score_query")
REASON_LOW_AGREEMENT = "low_agreement"
REASON_NOT_SCORED = "not_scored"
#: Parquet metadata of a scores file: JSON {"model", "fingerprint", "embeddings", "dim", ...}.
SCORES_INFO = b"ccmb.scores"
SCORES_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("row", pa.int32()),
    *[(f, pa.float32()) for f in SCORE_FIELDS], ("error", pa.string())])
PERCENTILES = (1, 5, 10, 25, 50, 70, 75, 90, 95, 99)


def read_scores(path: PathLike, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """The scores parquet (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: no such scores file (write it with `ccmb score`)")
    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=list(columns) if columns else None)
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable scores parquet: {exc}") from exc
    missing = [c for c in (columns or ("key", "score")) if c not in names]
    if missing:
        raise CurationError(f"{path}: not a scores file (missing columns {missing})")
    return table


def scores_info(path: PathLike) -> Dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    try:
        return json.loads(meta.get(SCORES_INFO, b"{}").decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


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


def apply_scores(table_path: PathLike, scores_path: PathLike, *, min_score: Optional[float] = None,
                 keep_top_percent: Optional[float] = None, field: str = "score",
                 output: Optional[PathLike] = None) -> Summary:
    """Add ``low_agreement`` to a decision table: rows it keeps whose ``field`` score is below the threshold.

    Exactly one of ``min_score`` (an absolute cosine) and ``keep_top_percent`` (over every scored sample of
    the scores file, so the threshold does not depend on the other rules) is given. A kept row with no score
    (its image did not decode, or the scores file misses it) gets ``not_scored``; earlier reasons win.
    Writes ``output`` (default: the table itself, atomically) and returns the new counts.
    """
    if (min_score is None) == (keep_top_percent is None):
        raise ValueError("give exactly one of min_score and keep_top_percent")
    scores = read_scores(scores_path, ["key", field])
    values = score_values(scores, field)
    threshold = float(min_score) if min_score is not None else top_percent_threshold(values, keep_top_percent)
    decisions = read_decisions(table_path)
    meta = decision_metadata(table_path)
    idx = pc.index_in(decisions.column("key"), value_set=scores.column("key"))
    found = idx.is_valid().to_numpy(zero_copy_only=False)
    row_scores = np.full(decisions.num_rows, np.nan)
    if found.any():
        col = scores.column(field).to_numpy(zero_copy_only=False).astype(np.float64)
        row_scores[found] = col[pc.drop_null(idx).to_numpy(zero_copy_only=False)]
    keep = decisions.column("keep").to_numpy(zero_copy_only=False).astype(bool)
    no_score = keep & np.isnan(row_scores)
    low = keep & ~no_score & low_agreement_mask(row_scores, threshold)
    reason_arr = decisions.column("reason").combine_chunks().cast(pa.string())
    reason_arr = pc.if_else(pa.array(no_score), pa.scalar(REASON_NOT_SCORED), reason_arr)
    reason_arr = pc.if_else(pa.array(low), pa.scalar(REASON_LOW_AGREEMENT), reason_arr)
    out = pa.Table.from_arrays([decisions.column("key"), decisions.column("shard"), pc.is_null(reason_arr),
                                reason_arr, decisions.column("duplicate_of")], schema=DECISION_SCHEMA)
    info = json.dumps({"scores": str(Path(scores_path).resolve()), "field": field, "threshold": threshold,
                       "min_score": min_score, "keep_top_percent": keep_top_percent})
    source = (meta.get("source") or {}).get("path")
    output = Path(output or table_path)
    write_decisions(output, out, kind=meta.get("kind") or "filter", info=info, source=source)
    logger.info("%s: %s < %.4f -> %d low_agreement, %d not_scored", output, field, threshold, int(low.sum()),
                int(no_score.sum()))
    summary = Summary.of(out, output)
    summary.threshold = threshold  # type: ignore[attr-defined]
    return summary


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


def read_embeddings(scores_path: PathLike, kind: str = "image") -> tuple:
    """(keys, float32 [n, D] L2-normalised embeddings) of the scored samples without an error, in the
    scores file's order, from the float16 ``NNNNN.{kind}.npy`` shards next to it."""
    table = read_scores(scores_path, ["key", "shard", "row", "error"])
    info = scores_info(scores_path)
    emb_dir = Path(info.get("embeddings") or "")
    if not emb_dir.is_absolute():
        emb_dir = Path(scores_path).parent / emb_dir
    ok = pc.is_null(table.column("error"))
    table = table.filter(ok)
    keys = table.column("key")
    shards = table.column("shard").to_pylist()
    rows = table.column("row").to_numpy(zero_copy_only=False)
    out: List[np.ndarray] = []
    cache: Dict[str, np.ndarray] = {}
    order = np.arange(len(shards))
    if not len(shards):
        return keys, np.zeros((0, int(info.get("dim") or 0)), np.float32)
    for name in dict.fromkeys(shards):
        f = emb_dir / f"{Path(name).stem}.{kind}.npy"
        if not f.is_file():
            raise CurationError(f"{f}: embedding shard missing (rerun `ccmb score`, it resumes)")
        cache[name] = np.load(f, allow_pickle=False)
    out = [cache[s][r] for s, r in zip(shards, rows)]
    emb = np.stack(out).astype(np.float32)[order]
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return keys, emb
