"""Fixtures for the benchmark harness: one data root with every task's official layout (tiny), and tiny
random models of every adapter type (R2D2, PRD2, Chinese-CLIP), built once per session."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
_loaded = sys.modules.get("models")
if _loaded is not None and getattr(_loaded, "__file__", None) is None:  # tests/models as a namespace package
    del sys.modules["models"]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ccmb.synthetic import all_items, jpeg_bytes, render  # noqa: E402

ITEMS = all_items()


def _img(k: int, size: int = 40) -> bytes:
    return jpeg_bytes(render(ITEMS[k % len(ITEMS)], size=size, seed=k))


def _jl(rows) -> str:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"


def build_root(root: Path) -> Path:
    """ICR/IQR/ICM/IQM, Flickr30k-CNA, MUGE, AIC-ICC (caption, train + validation), ELEVATER-CN, text2image-cn."""
    imgs = root / "IQR_IQM_ICR_ICM_images"
    imgs.mkdir(parents=True)
    for k in range(8):
        (imgs / f"r{k}.jpg").write_bytes(_img(k))
    itr = [{"text": ITEMS[k].title, "image_path": f"images/r{k}.jpg"} for k in range(8)]
    itr += [{"text": ITEMS[k].content, "image_path": f"r{k}.jpg"} for k in range(0, 8, 2)]
    for folder, name in (("ICR", "long_itr_val.json"), ("IQR", "short_itr_val.json")):
        (root / folder / "val").mkdir(parents=True)
        (root / folder / "val" / name).write_text(_jl(itr), encoding="utf-8")
    itm = [{"text": ITEMS[k].title, "image_path": f"r{k}.jpg", "label": 1} for k in range(6)]
    itm += [{"text": ITEMS[k + 1].title, "image_path": f"r{k}.jpg", "label": 0} for k in range(6)]
    for folder, name in (("ICM", "long_itm_val.json"), ("IQM", "short_itm_val.json")):
        (root / folder / "val").mkdir(parents=True)
        (root / folder / "val" / name).write_text(_jl(itm), encoding="utf-8")
    # Flickr30k-CNA: 6 images x 3 captions
    fl = root / "Flickr30k-images"
    fl.mkdir()
    lines = []
    for k in range(6):
        (fl / f"{1000 + k}.jpg").write_bytes(_img(10 + k))
        it = ITEMS[10 + k]
        lines += [f"{1000 + k}#0\t{it.title}", f"{1000 + k}#1\t{it.query}", f"{1000 + k}#2\t{it.content}"]
    (root / "Flickr30k-CNA" / "test").mkdir(parents=True)
    (root / "Flickr30k-CNA" / "test" / "flickr30k_cna_test.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # MUGE valid (Chinese-CLIP TSV layout), text-to-image only
    muge = root / "MUGE"
    muge.mkdir()
    (muge / "valid_imgs.tsv").write_text("".join(f"{200 + k}\t{base64.b64encode(_img(20 + k)).decode()}\n"
                                                 for k in range(10)), encoding="utf-8")  # Chinese-CLIP needs 10
    (muge / "valid_texts.jsonl").write_text(_jl(
        [{"text_id": t, "text": ITEMS[20 + t % 5].query + str(t), "image_ids": [200 + t % 5]} for t in range(7)]),
        encoding="utf-8")
    # text2image-cn (root-level Chinese-CLIP layout, split test)
    # (10 of each: also read as COCO-CN/Flickr30k-CN in an `all` sweep, where Chinese-CLIP's evaluation needs 10)
    (root / "test_imgs.tsv").write_text("".join(f"{300 + k}\t{base64.b64encode(_img(30 + k)).decode()}\n"
                                                for k in range(10)), encoding="utf-8")
    (root / "test_texts.jsonl").write_text(_jl(
        [{"text_id": 50 + k, "text": ITEMS[30 + k].title, "image_ids": [300 + k]} for k in range(10)]),
        encoding="utf-8")
    # AIC-ICC captioning: validation (4 images) + train (6 images, the baseline's pool)
    for split, n, off in (("validation", 4, 40), ("train", 6, 50)):
        base = root / f"ai_challenger_caption_{split}_20170910"
        im = base / f"caption_{split}_images_20170910"
        im.mkdir(parents=True)
        items = []
        for k in range(n):
            (im / f"{split[0]}{k}.jpg").write_bytes(_img(off + k))
            it = ITEMS[off + k]
            items.append({"url": f"http://x/{k}.jpg", "image_id": f"{split[0]}{k}.jpg",
                          "caption": [it.title, it.content, f"一个{it.color}的{it.shape}"]})
        (base / f"caption_{split}_annotations_20170910.json").write_text(json.dumps(items, ensure_ascii=False),
                                                                           encoding="utf-8")
    # ELEVATER-CN: 3 classes, 2 images each
    ev = root / "shapes"
    (ev).mkdir()
    (ev / "label_cn.txt").write_text("圆形\n方形\n三角形\n", encoding="utf-8")
    for c in range(3):
        d = ev / "test" / str(c)
        d.mkdir(parents=True)
        for j in range(2):
            (d / f"{c}_{j}.jpg").write_bytes(_img(60 + 3 * j + c))
    return root


def build_models(base: Path) -> SimpleNamespace:
    import torch
    from transformers import ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    import models
    from models.tokenizer import load_tokenizer, write_test_vocab

    chars = "".join(sorted(set("".join(i.title + i.content + i.query for i in ITEMS))))
    out = {}
    for name in ("r2d2-tiny", "prd2-tiny"):
        torch.manual_seed(0)
        d = base / name
        models.build_model(name).save_pretrained(d)
        write_test_vocab(d, extra_chars=chars)
        out[name.split("-")[0]] = d
    d = base / "cclip-tiny"
    d.mkdir()
    tok = load_tokenizer(write_test_vocab(d, extra_chars=chars))
    torch.manual_seed(0)
    cfg = ChineseCLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=32, patch_size=8),
        projection_dim=16)
    ChineseCLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    ChineseCLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    out["cclip"] = d
    return SimpleNamespace(**out)


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory) -> Path:
    return build_root(tmp_path_factory.mktemp("bench_data"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> SimpleNamespace:
    return build_models(tmp_path_factory.mktemp("bench_models"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Model lookups and TSV index caches never touch the user's home."""
    monkeypatch.setenv("CCMB_HOME", str(tmp_path / "ccmb_home"))
