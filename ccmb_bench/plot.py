"""``ccmb-bench plot``: recall@K per model and dataset as a PNG, drawn with PIL (no matplotlib).

One panel per retrieval dataset; x = K (1, 5, 10), y = recall (0-100); per model one colour and one marker
shape, t2i a solid line, i2t a dotted one (explained once in the title), one legend entry per model. Stays
legible with many series: every run is drawn, published rows only the ``top_published`` best per dataset
(by MR, then R@1, of the runs' setting) beside the runs of each panel, and a dataset with more runs than a
panel holds is split into several panels (small multiples), each with its own legend.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from ccmb.atomic import write_bytes

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
MARKERS = ("circle", "square", "triangle", "diamond")
KS = (1, 5, 10)
PANEL_W, PANEL_H, MARGIN = 420, 300, 48
MAX_MODELS = 10  # models per panel; more runs go to the next panel of the same dataset
LEGEND_LINE = 16
LEGEND_CHARS = 60

Series = Tuple[str, bool, Dict[str, List[Optional[float]]]]  # label, published, {direction: [R@1, R@5, R@10]}


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _label(r: Dict[str, Any]) -> str:
    if r.get("reference"):
        return r["model"] + (" [paper, fine-tuned]" if r.get("setting") == "fine-tuned" else " [paper]")
    label = r["model"] + (f" ({r['setting']})" if r.get("setting") else "")
    return label + (f" [{r['protocol']}]" if r.get("protocol") else "")


def _strength(values: Dict[str, List[Optional[float]]], row: Dict[str, Any]) -> Tuple[float, float]:
    mr = row.get("MR")
    r1 = [v[0] for v in values.values() if v[0] is not None]
    return (float(mr) if isinstance(mr, (int, float)) else -1.0, sum(r1) / len(r1) if r1 else -1.0)


def series(rows: Sequence[Dict[str, Any]], top_published: Optional[int] = None) -> Dict[str, List[Series]]:
    """``{dataset/split: [(label, published, {direction: [R@1, R@5, R@10]})]}`` of the retrieval rows: every
    run, and the ``top_published`` best published rows of each dataset (all when None), of the runs' settings
    (zero-shot runs beside zero-shot published rows)."""
    runs: Dict[str, List[Series]] = {}
    published: Dict[str, List[Tuple[Tuple[float, float], Series]]] = {}
    run_blocks: Dict[str, set] = {}
    for r in rows:
        if r.get("task") == "retrieval" and not r.get("reference"):
            run_blocks.setdefault(f"{r['dataset']}/{r['split']}", set()).add(r.get("block", "zero-shot"))
    for r in rows:
        if r.get("task") != "retrieval":
            continue
        values: Dict[str, List[Optional[float]]] = {}
        for d in ("t2i", "i2t"):
            vals = [r.get(f"{d}_R@{k}") for k in KS]
            if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                values[d] = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                             for v in vals]
        if not values:
            continue
        name = f"{r['dataset']}/{r['split']}"
        item: Series = (_label(r), bool(r.get("reference")), values)
        if r.get("reference"):  # beside runs: only the published rows of their setting (zero-shot, fine-tuned)
            if name not in run_blocks or r.get("block", "zero-shot") in run_blocks[name]:
                published.setdefault(name, []).append((_strength(values, r), item))
        else:
            runs.setdefault(name, []).append(item)
    out: Dict[str, List[Series]] = {}
    for name in sorted(set(runs) | set(published)):
        best = [s for _, s in sorted(published.get(name, []), key=lambda p: (-p[0][0], -p[0][1], p[1][0]))]
        out[name] = runs.get(name, []) + (best if top_published is None else best[:top_published])
    return out


def panels(data: Dict[str, List[Series]]) -> List[Tuple[str, List[Series]]]:
    """Small multiples: at most :data:`MAX_MODELS` models per panel; the published rows of a dataset appear in
    each of its panels (the reference beside every group of runs), its runs are spread evenly over the panels
    (``name (1/3)`` ...)."""
    out = []
    for name, items in data.items():
        runs = [it for it in items if not it[1]]
        refs = [it for it in items if it[1]]
        room = max(1, MAX_MODELS - len(refs))
        n = max(1, -(-len(runs) // room))
        size = max(1, -(-len(runs) // n))  # balanced: 12 runs, 7 per panel -> 6 + 6
        chunks = [runs[i:i + size] for i in range(0, len(runs), size)] or [[]]
        for k, chunk in enumerate(chunks):
            out.append((name if len(chunks) == 1 else f"{name} ({k + 1}/{len(chunks)})", chunk + refs))
    return out


def _dotted(draw: ImageDraw.ImageDraw, a, b, color, width: int = 2, step: int = 6) -> None:
    (x0, y0), (x1, y1) = a, b
    n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 // step))
    for i in range(0, n, 2):
        t0, t1 = i / n, min(1.0, (i + 1) / n)
        draw.line([(x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0), (x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1)],
                  fill=color, width=width)


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, shape: str, color, r: float = 4) -> None:
    if shape == "square":
        draw.rectangle([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=color)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r - 1), (x + r, y + r - 1)], fill=color)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=color)
    else:
        draw.ellipse([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=color)


def _fit(text: str, chars: int = LEGEND_CHARS) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "\u2026"


def draw_recall_chart(rows: Sequence[Dict[str, Any]], title: str = "Recall@K",
                      top_published: Optional[int] = 3) -> Image.Image:
    """The chart as a PIL image (panels side by side, wrapping every 3)."""
    cells = panels(series(rows, top_published))
    if not cells or not any(items for _, items in cells):
        raise ValueError("no retrieval results to plot")
    font, small = _font(13), _font(11)
    legend_h = LEGEND_LINE * max(len(items) for _, items in cells) + 10
    cols = min(3, len(cells))
    nrows = (len(cells) + cols - 1) // cols
    cell_h = PANEL_H + legend_h + MARGIN
    img = Image.new("RGB", (cols * (PANEL_W + MARGIN) + MARGIN, nrows * cell_h + 56), "white")
    draw = ImageDraw.Draw(img)
    draw.text((MARGIN, 10), title, fill="black", font=font)
    draw.text((MARGIN, 28), "solid: text-to-image (t2i)   dotted: image-to-text (i2t)   [paper]: published",
              fill=(80, 80, 80), font=small)
    for p, (name, items) in enumerate(cells):
        ox = MARGIN + (p % cols) * (PANEL_W + MARGIN)
        oy = 56 + (p // cols) * cell_h
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
        for s, (label, _, values) in enumerate(items):
            color = PALETTE[s % len(PALETTE)]
            shape = MARKERS[(s // len(PALETTE)) % len(MARKERS)]
            for direction, vals in values.items():
                pts = [(xs[k], y1 - (y1 - y0) * v / 100) for k, v in zip(KS, vals) if v is not None]
                for a, b in zip(pts, pts[1:]):
                    if direction == "t2i":
                        draw.line([a, b], fill=color, width=2)
                    else:
                        _dotted(draw, a, b, color)
                for x, y in pts:
                    _marker(draw, x, y, shape, color)
            ly = y1 + 22 + LEGEND_LINE * s
            draw.line([(x0, ly + 6), (x0 + 16, ly + 6)], fill=color, width=2)
            _marker(draw, x0 + 8, ly + 6, shape, color)
            draw.text((x0 + 22, ly), _fit(label + ("" if set(values) == {"t2i", "i2t"} else
                                                   f" ({'/'.join(values)} only)")), fill="black", font=small)
    return img


def plot(rows: Sequence[Dict[str, Any]], out: Path, title: str = "Recall@K per model and dataset",
         top_published: Optional[int] = 3) -> Path:
    """Write the chart PNG atomically."""
    buf = io.BytesIO()
    draw_recall_chart(rows, title, top_published).save(buf, format="PNG")
    write_bytes(Path(out), buf.getvalue())
    return Path(out)
