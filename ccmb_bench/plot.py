"""``ccmb-bench plot``: recall@K per model and dataset as a PNG, drawn with PIL (no matplotlib).

One panel per retrieval dataset; x = K (1, 5, 10), y = recall (0-100); one line per (model, direction),
t2i solid, i2t dashed-by-dots, with a legend.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from ccmb.atomic import write_bytes

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
KS = (1, 5, 10)
PANEL_W, PANEL_H, MARGIN = 420, 300, 48


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def series(rows: Sequence[Dict[str, Any]]) -> Dict[str, List[Tuple[str, str, List[Optional[float]]]]]:
    """``{dataset: [(model, direction, [R@1, R@5, R@10])]}`` of the retrieval rows."""
    out: Dict[str, List[Tuple[str, str, List[Optional[float]]]]] = {}
    for r in rows:
        if r.get("task") != "retrieval":
            continue
        for d in ("i2t", "t2i"):
            vals = [r.get(f"{d}_R@{k}") for k in KS]
            if any(isinstance(v, (int, float)) for v in vals):
                label = r["model"] + (" [paper]" if r.get("reference") else "") + \
                    (f" ({r['setting']})" if r.get("setting") else "") + \
                    (f" [{r['protocol']}]" if r.get("protocol") and not r.get("reference") else "")
                out.setdefault(f"{r['dataset']}/{r['split']}", []).append(
                    (label, d, [float(v) if isinstance(v, (int, float)) else None for v in vals]))
    return out


def _dotted(draw: ImageDraw.ImageDraw, a, b, color, width: int = 2, step: int = 6) -> None:
    (x0, y0), (x1, y1) = a, b
    n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 // step))
    for i in range(0, n, 2):
        t0, t1 = i / n, min(1.0, (i + 1) / n)
        draw.line([(x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0), (x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1)],
                  fill=color, width=width)


def draw_recall_chart(rows: Sequence[Dict[str, Any]], title: str = "Recall@K") -> Image.Image:
    """The chart as a PIL image (one panel per dataset, side by side, wrapping every 3)."""
    data = series(rows)
    names = sorted(data)
    if not names:
        raise ValueError("no retrieval results to plot")
    font, small = _font(13), _font(11)
    legend_h = 16 * max(len(v) for v in data.values()) + 10
    cols = min(3, len(names))
    nrows = (len(names) + cols - 1) // cols
    cell_h = PANEL_H + legend_h + MARGIN
    img = Image.new("RGB", (cols * (PANEL_W + MARGIN) + MARGIN, nrows * cell_h + 40), "white")
    draw = ImageDraw.Draw(img)
    draw.text((MARGIN, 10), title, fill="black", font=font)
    for p, name in enumerate(names):
        ox = MARGIN + (p % cols) * (PANEL_W + MARGIN)
        oy = 40 + (p // cols) * cell_h
        x0, y0, x1, y1 = ox + 30, oy + 20, ox + PANEL_W, oy + PANEL_H
        draw.text((ox + 30, oy), name, fill="black", font=font)
        draw.rectangle([x0, y0, x1, y1], outline=(80, 80, 80))
        for v in range(0, 101, 20):
            y = y1 - (y1 - y0) * v / 100
            draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
            draw.text((ox, y - 6), str(v), fill=(60, 60, 60), font=small)
        xs = {k: x0 + (x1 - x0) * (i + 0.5) / len(KS) for i, k in enumerate(KS)}
        for k, x in xs.items():
            draw.text((x - 12, y1 + 4), f"R@{k}", fill=(60, 60, 60), font=small)
        for s, (label, direction, vals) in enumerate(data[name]):
            color = PALETTE[s % len(PALETTE)]
            pts = [(xs[k], y1 - (y1 - y0) * v / 100) for k, v in zip(KS, vals) if v is not None]
            for a, b in zip(pts, pts[1:]):
                if direction == "t2i":
                    draw.line([a, b], fill=color, width=2)
                else:
                    _dotted(draw, a, b, color)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
            ly = y1 + 22 + 16 * s
            draw.rectangle([x0, ly + 3, x0 + 14, ly + 9], fill=color)
            draw.text((x0 + 20, ly), f"{label} {direction}", fill="black", font=small)
    return img


def plot(rows: Sequence[Dict[str, Any]], out: Path, title: str = "Recall@K per model and dataset") -> Path:
    """Write the chart PNG atomically."""
    buf = io.BytesIO()
    draw_recall_chart(rows, title).save(buf, format="PNG")
    write_bytes(Path(out), buf.getvalue())
    return Path(out)
