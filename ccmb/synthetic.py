"""Synthetic Chinese image-text data and a loopback image server, for the demo and benchmarks.

Images are coloured shapes on a background; captions say what is drawn (``红色的圆形在蓝色的背景上``), so a
model trained on them has something real to learn and retrieval on held-out images is far above chance.
"""
from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

COLORS: Dict[str, Tuple[int, int, int]] = {
    "红色": (220, 40, 40), "绿色": (40, 170, 60), "蓝色": (40, 80, 220), "黄色": (235, 210, 40),
    "紫色": (150, 60, 190), "橙色": (245, 140, 30), "黑色": (20, 20, 20), "白色": (245, 245, 245),
}
SHAPES = ("圆形", "方形", "三角形", "十字")
BACKGROUNDS = ("灰色", "白色", "黑色")
_BG_RGB = {"灰色": (128, 128, 128), "白色": (250, 250, 250), "黑色": (10, 10, 10)}


@dataclass(frozen=True)
class Item:
    """One synthetic image description."""

    color: str
    shape: str
    background: str

    @property
    def title(self) -> str:
        return f"{self.color}的{self.shape}在{self.background}的背景上"

    @property
    def query(self) -> str:
        return f"{self.color}{self.shape}"

    @property
    def content(self) -> str:
        return f"这张图片里有一个{self.color}的{self.shape}，背景是{self.background}。"


def all_items() -> List[Item]:
    return [Item(c, s, b) for c in COLORS for s in SHAPES for b in BACKGROUNDS if c != b]


def render(item: Item, size: int = 256, seed: int = 0) -> Image.Image:
    """Draw ``item`` with a little random placement and size, deterministic for ``seed``."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), _BG_RGB[item.background])
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = (rng.uniform(0.4, 0.6) * size for _ in range(2))
    color = COLORS[item.color]
    if item.shape == "圆形":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif item.shape == "方形":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif item.shape == "三角形":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sample_items(n: int, seed: int = 0) -> List[Item]:
    rng = random.Random(seed)
    items = all_items()
    return [rng.choice(items) for _ in range(n)]


def write_images(items: List[Item], folder: Path, size: int = 256, seed: int = 0,
                 prefix: str = "img") -> List[str]:
    """Render ``items`` into ``folder`` as ``{prefix}{i:06d}.jpg``; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, item in enumerate(items):
        name = f"{prefix}{i:06d}.jpg"
        (folder / name).write_bytes(jpeg_bytes(render(item, size, seed=seed * 1_000_003 + i)))
        names.append(name)
    return names


def zero_records(items: List[Item], base_url: str, names: List[str]) -> List[dict]:
    """Records in the Zero release's JSON layout (keys as released)."""
    return [
        {"Url": f"{base_url}/page/{i}", "Title": it.title, "Content": it.content, "Keywords": it.query,
         "ImageKey": f"synthetic-{i:06d}", "ImageUrl": f"{base_url}/{name}", "ImageQuery": it.query}
        for i, (it, name) in enumerate(zip(items, names))
    ]


def write_jsonl(records: List[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt: str, *args) -> None:  # keep the demo's output readable
        logger.debug("http: " + fmt, *args)


@contextlib.contextmanager
def serve_folder(folder: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``folder`` over HTTP on a free loopback port; yields the base URL."""
    handler = lambda *a, **kw: _QuietHandler(*a, directory=str(folder), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
