"""A small download folder with planted duplicates of every level, for the engine-agreement tests.

A uniquely named module (not ``conftest``): test files import from it by name."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ccmb import shards

BASE = "北京故宫博物院秋天的红墙与金色银杏树下游客如织拍照留念的热闹景象令人难忘"


def _jpeg(seed: int, size: int = 256, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((256, 256), Image.Resampling.BILINEAR)
    if size != 256:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def dark_captioned(seed: int, quality: int = 92) -> bytes:
    """A dark, low-texture 'photo' (a fine random colour field, levels x0.08 + 6) under a white overlay
    caption: different seeds are different photos that pHash proposes as copies (the caption is their only
    strong contrast); the second image check rejects them."""
    small = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC), np.float32)
    img = Image.fromarray((6 + 0.08 * arr).clip(0, 255).astype(np.uint8))
    ImageDraw.Draw(img).text((160, 205), "SUBSCRIBE FOR MORE", fill=(255, 255, 255),
                             font=ImageFont.load_default(size=29), anchor="mm")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


#: Seeds of :func:`dark_captioned` photos planted (pHash pairs within 2-4 bits), and the one copied.
DARK_SEEDS = (5, 7, 10, 11)
DARK_COPIED = 10


def planted_rows():
    """Rows (url, caption, image bytes or None) with URL, byte, pHash and caption duplicates, chains of
    near-duplicate captions (A~B, B~C, not A~C: star groups keep A and C) and failures."""
    rows = []
    for i in range(40):
        rows.append({"url": f"http://img.example.com/{i}.jpg", "caption": f"第{i}张图片：" + "城市夜景山水花鸟人物"[i % 10] * 3
                     + "的照片" + "甲乙丙丁戊己庚辛壬癸"[i % 10] + str(i * 7919), "image": _jpeg(i)})
    rows.append({"url": "https://IMG.example.com/3.jpg/", "caption": "网址重复一", "image": _jpeg(1003)})
    rows.append({"url": "http://img.example.com/3.jpg?utm_source=x", "caption": "网址重复二", "image": _jpeg(1004)})
    rows.append({"url": "http://mirror.example.org/5.jpg", "caption": "同一字节的镜像", "image": _jpeg(5)})
    rows.append({"url": "http://mirror.example.org/6.jpg", "caption": "另一个同字节镜像", "image": _jpeg(6)})
    rows.append({"url": "http://cdn.example.net/7s.jpg", "caption": "缩小重压缩副本", "image": _jpeg(7, 200, 70)})
    rows.append({"url": "http://cdn.example.net/9s.jpg", "caption": "第二个缩小副本", "image": _jpeg(9, 180, 75)})
    a = BASE
    b = BASE[:10] + "怀" + BASE[11:]  # Jaccard(a, b) = Jaccard(b, c) = 0.84, Jaccard(a, c) = 0.7 (3-grams)
    c = b[:25] + "南" + b[26:]
    for j, text in enumerate([a, b, c, a + "！"]):
        rows.append({"url": f"http://text.example.com/{j}.jpg", "caption": text, "image": _jpeg(2000 + j)})
    for j in range(4):
        rows.append({"url": f"http://dead.example.com/{j}.jpg", "caption": "失败", "image": None})
    order = np.random.default_rng(0).permutation(len(rows))  # duplicates spread over shards
    rows = [rows[i] for i in order]
    # different dark photos under the same overlay caption (pHash candidates, not copies) and a real
    # (re-encoded) copy of one of them, in the last shards
    for seed in DARK_SEEDS:
        rows.append({"url": f"http://dark.example.com/{seed}.jpg", "caption": f"暗色照片{seed}号" + "夜" * seed,
                     "image": dark_captioned(seed)})
    rows.append({"url": "http://dark.example.com/copy.jpg", "caption": "暗色照片的重压缩副本",
                 "image": dark_captioned(DARK_COPIED, quality=40)})
    return rows


def write_planted(out: Path, per_shard: int = 7) -> Path:
    rows = planted_rows()
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(rows), per_shard):
        shard = s // per_shard
        with shards.ShardWriter(out, shard, source="test.jsonl") as w:
            for i, row in enumerate(rows[s: s + per_shard]):
                key = shards.make_key(shard, i, per_shard)
                meta = {"url": row["url"], "caption": row["caption"], "title": row["caption"], "key": key}
                if row["image"] is None:
                    w.write_failure(meta, "failed_to_download", "HTTP 404")
                    continue
                img = Image.open(io.BytesIO(row["image"]))
                meta.update(width=img.width, height=img.height, original_width=img.width,
                            original_height=img.height)
                w.write(key, row["image"], row["caption"], meta)
    return out
