"""Builders of small download folders (the foundation shard format) for the curation tests.

A uniquely named module (not ``conftest``): test files import from it by name."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from ccmb import shards

def rand_image(seed: int, size=(256, 256)) -> Image.Image:
    """A smooth random colour image: distinct seeds give unrelated pHashes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_download(out: Path, rows: List[Dict[str, Any]], per_shard: int = 10) -> Path:
    """Write ``rows`` as a download folder. A row: url, caption, title, image (bytes) or status/error;
    optional width/height/original_width/original_height (default: the image size)."""
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(rows), per_shard):
        shard = s // per_shard
        with shards.ShardWriter(out, shard, source="test.jsonl") as w:
            for i, row in enumerate(rows[s: s + per_shard]):
                key = shards.make_key(shard, i, per_shard)
                meta = {k: v for k, v in row.items() if k not in ("image", "status", "error")}
                meta.setdefault("title", meta.get("caption"))
                meta["key"] = key
                if row.get("image") is None:
                    w.write_failure(meta, row.get("status", "failed_to_download"), row.get("error", "HTTP 404"))
                    continue
                img = Image.open(io.BytesIO(row["image"]))
                meta.setdefault("width", img.width)
                meta.setdefault("height", img.height)
                meta.setdefault("original_width", meta["width"])
                meta.setdefault("original_height", meta["height"])
                w.write(key, row["image"], meta.get("caption") or "", meta)
    return out


CAPTIONS = [
    "北京故宫博物院秋天的红墙与金色银杏", "上海外滩夜景灯火辉煌的黄浦江畔", "可爱的橘猫在阳光下的窗台上睡觉",
    "新鲜采摘的草莓放在白色瓷盘里", "雪山脚下的湖泊倒映着蓝天白云", "城市街头骑自行车的年轻人",
    "一碗热气腾腾的兰州牛肉拉面", "海边沙滩上奔跑的金毛犬", "古镇小桥流水人家的江南风光",
    "秋天森林里铺满落叶的小路", "厨房里正在烤制的巧克力蛋糕", "夜空中绚丽多彩的烟花表演",
]


def build_planted(out: Path):
    """Write the planted download folder to ``out``; returns (dir, {label: key})."""
    rows: List[Dict[str, Any]] = []
    labels: Dict[str, str] = {}

    def add(label: Optional[str], **row):
        rows.append(row)
        if label:
            labels[label] = len(rows) - 1

    for i, cap in enumerate(CAPTIONS[:8]):
        add(f"orig{i}", url=f"http://img.example.com/{i}.jpg", caption=cap, image=jpeg(rand_image(i)))
    # URL variants of orig0 (different bytes, so only the URL level can catch them)
    add("url_https", url="https://IMG.example.com/0.jpg/", caption="完全不同的标题一号用于网址", image=jpeg(rand_image(100)))
    add("url_utm", url="http://img.example.com/0.jpg?utm_source=feed&utm_medium=x", caption="另一个完全不同的标题",
        image=jpeg(rand_image(101)))
    # same bytes as orig1 at another URL
    add("same_bytes", url="http://mirror.example.org/copy1.jpg", caption="镜像站点上的同一张图片",
        image=jpeg(rand_image(1)))
    # resized + re-encoded copy of orig2
    add("resized", url="http://cdn.example.net/small2.jpg", caption="缩小后重新压缩的图片副本",
        image=jpeg(rand_image(2).resize((200, 200), Image.Resampling.LANCZOS), quality=75))
    # near-identical caption of orig3, unrelated image
    add("caption_dup", url="http://img.example.com/x3.jpg", caption=CAPTIONS[3] + "！", image=jpeg(rand_image(103)))
    # a failure row
    add("failed", url="http://img.example.com/dead.jpg", caption="下载失败", image=None)
    for i, cap in enumerate(CAPTIONS[8:]):
        add(f"other{i}", url=f"http://img.example.com/o{i}.jpg", caption=cap, image=jpeg(rand_image(200 + i)))
    d = write_download(out, rows, per_shard=6)
    keys = {label: shards.make_key(idx // 6, idx % 6, 6) for label, idx in labels.items()}
    return d, keys
