"""A corpus with planted copies of a tiny ICR val set (exact, re-encoded, resized, brighter copies, copied
captions, an undecodable image) and that set in its official layout. Builders for the decontamination tests.

A uniquely named module (not ``conftest``): test files import from it by name."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, ImageEnhance

from ccmb import shards as fmt

EVAL_TEXTS = ["一只橘色的猫趴在木头桌子上晒太阳", "傍晚时分海边的灯塔和归来的渔船", "雨后的城市街道上撑伞的行人",
              "山谷里开满黄色油菜花的梯田", "厨房台面上摆着新鲜的蔬菜和水果"]


def _image(seed: int, size=(320, 240)) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _photo_levels(img: Image.Image) -> Image.Image:
    """x0.78 + 16: colour channels below 216, so a +20% brighter copy does not clip colours over large areas
    (the second image check can lose such copies; perf/bench_neardup.py measures it on photos)."""
    return Image.fromarray((16 + 0.78 * np.asarray(img, np.float32)).clip(0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def eval_root(root):
    """A tiny ICR val set (official layout); returns its image bytes."""
    (root / "IQR_IQM_ICR_ICM_images").mkdir(parents=True)
    (root / "ICR" / "val").mkdir(parents=True)
    out = []
    with open(root / "ICR" / "val" / "long_itr_val.json", "w", encoding="utf-8") as fh:
        for i, text in enumerate(EVAL_TEXTS):
            data = _jpeg(_photo_levels(_image(500 + i)))
            (root / "IQR_IQM_ICR_ICM_images" / f"val{i}.jpg").write_bytes(data)
            out.append(data)
            fh.write(json.dumps({"text": text, "image_path": f"images/val{i}.jpg"}, ensure_ascii=False) + "\n")
    return out


def contaminated_download(out, eval_bytes):
    """Corpus rows: exact copies, near copies (re-encoded, resized, brighter), caption copies, a copy whose
    caption is copied too, an undecodable image, failures and distinct samples, over several tars."""
    rows = []
    rows.append(("exact0", "网页上的图片甲", eval_bytes[0]))
    rows.append(("exact0b", "另一处原样复制", eval_bytes[0]))
    ev1 = Image.open(io.BytesIO(eval_bytes[1]))
    rows.append(("near1", "压缩过的副本", _jpeg(ev1, 35)))
    rows.append(("near1b", "缩小的副本", _jpeg(ev1.resize((160, 120)))))
    rows.append(("near2", "调亮的副本", _jpeg(ImageEnhance.Brightness(Image.open(io.BytesIO(eval_bytes[2])))
                                              .enhance(1.2))))
    rows.append(("caption3", EVAL_TEXTS[3] + "。", _jpeg(_image(900))))
    rows.append(("caption3b", "  " + EVAL_TEXTS[3] + "！！", _jpeg(_image(901))))
    rows.append(("caption4", EVAL_TEXTS[4][:-1] + "呀", _jpeg(_image(902))))
    rows.append(("both4", EVAL_TEXTS[4], _jpeg(Image.open(io.BytesIO(eval_bytes[4])), 60)))
    rows.append(("broken", "坏掉的图片文件", b"\xff\xd8\xff\xe0 not really a jpeg"))
    for j in range(3):
        rows.append((f"failed{j}", "下载失败", None))
    for j in range(12):
        rows.append((f"distinct{j}", f"普通的训练图片第{j}张有自己的说明", _jpeg(_image(1000 + j))))
    order = np.random.default_rng(3).permutation(len(rows))
    rows = [rows[i] for i in order]
    per_shard = 6
    labels = {}
    out.mkdir(parents=True)
    for s in range(0, len(rows), per_shard):
        shard = s // per_shard
        with fmt.ShardWriter(out, shard, source="test.jsonl") as w:
            for i, (label, caption, data) in enumerate(rows[s: s + per_shard]):
                key = fmt.make_key(shard, i, per_shard)
                labels[label] = key
                meta = {"url": f"http://c.example.com/{label}.jpg", "caption": caption, "title": caption, "key": key}
                if data is None:
                    w.write_failure(meta, "failed_to_download", "HTTP 404")
                    continue
                meta.update(width=320, height=240, original_width=320, original_height=240)
                w.write(key, data, caption, meta)
    return out, labels
