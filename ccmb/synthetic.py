"""Synthetic Chinese image-text data and a loopback image server, for the demo and benchmarks.

A scene is a coloured shape of some size at some position on a textured background; its captions say
what is drawn (``左上角有一个大大的红色圆形，背景是灰色的``), so a model trained on them has something real to
learn and retrieval on held-out images is far above chance. Like a web corpus, distinct scenes are
distinct at every dedup level: every image has its own smooth random texture (so pHashes differ as much
as between unrelated photos; :func:`write_images` re-draws the rare image whose pHash comes within
``MIN_PHASH_DISTANCE`` of another), and distinct items' captions stay below 0.8 character-trigram Jaccard.
:func:`near_copy` makes the kinds of copies a web crawl holds (re-encoded, resized, cropped, darker,
watermarked), for the demo to plant.
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
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

logger = logging.getLogger(__name__)

COLORS: Dict[str, Tuple[int, int, int]] = {
    "红色": (220, 40, 40), "绿色": (40, 170, 60), "蓝色": (40, 80, 220), "黄色": (235, 210, 40),
    "紫色": (150, 60, 190), "橙色": (245, 140, 30), "黑色": (20, 20, 20), "白色": (245, 245, 245),
}
SHAPES = ("圆形", "方形", "三角形", "十字")
BACKGROUNDS = ("灰色", "白色", "黑色")
_BG_RGB = {"灰色": (128, 128, 128), "白色": (200, 200, 200), "黑色": (40, 40, 40)}


# words chosen so that two items' captions share few character trigrams (max Jaccard 0.71 < 0.8)
POSITIONS: Dict[str, Tuple[float, float]] = {
    "左上角": (0.3, 0.3), "右上方": (0.7, 0.3), "正中间": (0.5, 0.5), "左下边": (0.3, 0.7), "靠右下": (0.7, 0.7),
}
SIZES: Dict[str, Tuple[float, float]] = {"大大的": (0.24, 0.3), "小小的": (0.12, 0.16)}
#: Images whose pHash variants are closer than this are re-drawn (the dedup default threshold is 4).
MIN_PHASH_DISTANCE = 12


@dataclass(frozen=True)
class Item:
    """One synthetic scene description."""

    color: str
    shape: str
    background: str
    position: str = "正中间"
    size: str = "大大的"

    @property
    def title(self) -> str:
        return f"{self.position}有一个{self.size}{self.color}{self.shape}，背景是{self.background}的"

    @property
    def query(self) -> str:
        return f"{self.color}{self.shape}"

    @property
    def content(self) -> str:
        return f"这张图片的{self.position}画着一个{self.size}{self.color}{self.shape}，背景是{self.background}的。"


def all_items() -> List[Item]:
    return [Item(c, s, b, p, z) for c in COLORS for s in SHAPES for b in BACKGROUNDS if c != b
            for p in POSITIONS for z in SIZES]


def caption_chars() -> str:
    """Every character a synthetic caption, content or query can contain (for a test vocabulary)."""
    return "".join(sorted({ch for it in all_items() for t in (it.title, it.content, it.query) for ch in t}))


def _texture(rng: random.Random, size: int, base: Tuple[int, int, int]) -> Image.Image:
    """A smooth random texture around ``base``: every image gets its own low-frequency structure."""
    g = np.random.default_rng(rng.getrandbits(32))
    grid = g.integers(-45, 46, size=(6, 6, 1)) + g.integers(-15, 16, size=(6, 6, 3))  # light, a little hue
    small = np.clip(np.asarray(base)[None, None, :] + grid, 0, 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def render(item: Item, size: int = 256, seed: int = 0) -> Image.Image:
    """Draw ``item`` on its own texture with a little random placement and size, deterministic for ``seed``."""
    rng = random.Random(seed)
    img = _texture(rng, size, _BG_RGB[item.background])
    draw = ImageDraw.Draw(img)
    lo, hi = SIZES.get(item.size, SIZES["大大的"])
    r = rng.uniform(lo, hi) * size
    px, py = POSITIONS.get(item.position, POSITIONS["正中间"])
    cx, cy = (rng.uniform(p - 0.05, p + 0.05) * size for p in (px, py))
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


def sample_items(n: int, seed: int = 0, distinct: bool = False, exclude: Sequence[Item] = ()) -> List[Item]:
    """``n`` random items; ``distinct=True`` draws without replacement (and never one of ``exclude``), so
    no two captions are caption-level duplicates."""
    rng = random.Random(seed)
    items = all_items()
    if not distinct:
        return [rng.choice(items) for _ in range(n)]
    pool = [it for it in items if it not in set(exclude)]
    if n > len(pool):
        raise ValueError(f"only {len(pool)} distinct synthetic items, asked for {n}")
    return rng.sample(pool, n)


def write_images(items: List[Item], folder: Path, size: int = 256, seed: int = 0,
                 prefix: str = "img", avoid: Optional[np.ndarray] = None) -> List[str]:
    """Render ``items`` into ``folder`` as ``{prefix}{i:06d}.jpg``; returns the file names.

    An image whose pHash variants come within :data:`MIN_PHASH_DISTANCE` of an earlier one (or of the
    hash rows in ``avoid``) is re-drawn with the next seed, so the images are distinct for pHash dedup."""
    from .corpus.primitives.phash import phash_variants_bytes, variant_distance

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    seen = [np.asarray(avoid, np.uint64).reshape(-1, avoid.shape[-1])] if avoid is not None and len(avoid) else []
    for i, item in enumerate(items):
        name = f"{prefix}{i:06d}.jpg"
        for attempt in range(50):
            data = jpeg_bytes(render(item, size, seed=seed * 1_000_003 + i + attempt * 7_919))
            h = phash_variants_bytes([data])
            if not seen:
                break
            known = np.concatenate(seen)
            if variant_distance(np.repeat(h, len(known), 0), known).min() >= MIN_PHASH_DISTANCE:
                break
        seen.append(h)
        (folder / name).write_bytes(data)
        names.append(name)
    return names


def image_hashes(folder: Path, names: Sequence[str]) -> np.ndarray:
    """pHash variants of written images (to keep later images distinct from them)."""
    from .corpus.primitives.phash import phash_variants_bytes

    return phash_variants_bytes([(folder / n).read_bytes() for n in names])


def _overlay(img: Image.Image) -> Image.Image:
    img = img.copy()
    ImageDraw.Draw(img).text((int(img.width * 0.05), int(img.height * 0.9)), "@ccmb", fill=(255, 255, 255))
    return img


def _border_crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((w // 20, h // 20, w - w // 20, h - h // 20))


#: The near-copies a web crawl holds: name -> (PIL image -> image, JPEG quality).
NEAR_COPIES = {
    "reencoded": (lambda im: im, 30),
    # 80%: the demo's filter drops images under 200 px, a copy must survive it to reach dedup
    "resized": (lambda im: im.resize((im.width * 4 // 5, im.height * 4 // 5), Image.Resampling.BILINEAR), 85),
    "cropped": (_border_crop, 90),
    "darker": (lambda im: ImageEnhance.Brightness(im).enhance(0.8), 90),
    "watermarked": (_overlay, 90),
}


def near_copy(data: bytes, kind: str) -> bytes:
    """A near-copy of encoded image ``data``: one of :data:`NEAR_COPIES`."""
    fn, quality = NEAR_COPIES[kind]
    return jpeg_bytes(fn(Image.open(io.BytesIO(data)).convert("RGB")), quality=quality)


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
