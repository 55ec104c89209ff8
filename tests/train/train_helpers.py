"""Shared helpers of the trainer tests: a tiny synthetic shard set, a vocab, a tiny config."""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import List, Tuple

from PIL import Image, ImageDraw

from ccmb.shards import ShardWriter, finalize_shard_set, make_key

COLORS = {"红": (220, 40, 40), "绿": (40, 170, 60), "蓝": (40, 80, 220), "黄": (235, 210, 40)}
SHAPES = ("圆", "方")


def concepts() -> List[Tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES]


def draw(color: str, shape: str, size: int = 48, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (128, 128, 128))
    d = ImageDraw.Draw(img)
    if shape == "圆":  # a small disc in the middle
        r = size * rng.uniform(0.18, 0.24)
        c = size / 2 + rng.uniform(-2, 2)
        d.ellipse([c - r, c - r, c + r, c + r], fill=COLORS[color])
    else:  # a large square
        m = rng.randint(2, 5)
        d.rectangle([m, m, size - m, size - m], fill=COLORS[color])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_shards(root: Path, n_shards: int = 2, per_shard: int = 16, size: int = 48) -> Path:
    """A finished shard set of coloured shapes with title/content/query texts naming colour and shape."""
    root.mkdir(parents=True, exist_ok=True)
    items = concepts()
    k = 0
    for s in range(n_shards):
        with ShardWriter(root, s, source="test") as w:
            for i in range(per_shard):
                color, shape = items[k % len(items)]
                img = draw(color, shape, size, seed=k)
                title = f"{color}色{shape}形"
                w.write(make_key(s, i, per_shard), img, title,
                        {"title": title, "content": f"一个{color}色的{shape}形", "query": f"{color}{shape}",
                         "image_key": f"{color}{shape}"})
                k += 1
    finalize_shard_set(root, command="test")
    return root


def write_vocab(root: Path) -> Path:
    from models.tokenizer import write_test_vocab

    return write_test_vocab(root, extra_chars="".join(COLORS) + "".join(SHAPES) + "色形一个的")
