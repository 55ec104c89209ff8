"""Issue 12 item 3: ccmb decontaminate finds transformed copies of evaluation images; build-shards drops them."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from curation_helpers import jpeg, rand_image
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from ccmb import shards as fmt
from ccmb.cli import main
from ccmb.corpus.api import build_shards
from ccmb.corpus.api import decontamination_table
from ccmb.corpus.steps.decontaminate import DecontaminationConfig, build_index

EVAL_TEXTS = ["一只橘色的猫趴在木头桌子上晒太阳", "傍晚时分海边的灯塔和归来的渔船", "雨后的城市街道上撑伞的行人",
              "山谷里开满黄色油菜花的梯田", "厨房台面上摆着新鲜的蔬菜和水果", "雪地里奔跑玩耍的两只哈士奇"]


def write_icr(root, n=6):
    """A tiny ICR val set in the official layout; returns the eval images (PIL)."""
    img_dir = root / "IQR_IQM_ICR_ICM_images"
    img_dir.mkdir(parents=True)
    (root / "ICR" / "val").mkdir(parents=True)
    (root / "ICM" / "val").mkdir(parents=True)
    images = []
    with open(root / "ICR" / "val" / "long_itr_val.json", "w", encoding="utf-8") as fh, \
            open(root / "ICM" / "val" / "long_itm_val.json", "w", encoding="utf-8") as fm:
        for i in range(n):
            img = photo_levels(rand_image(500 + i, (320, 240)))
            (img_dir / f"val{i}.jpg").write_bytes(jpeg(img))
            images.append(img)
            fh.write(json.dumps({"text": EVAL_TEXTS[i], "image_path": f"images/val{i}.jpg"}, ensure_ascii=False) + "\n")
            if i < 3:  # ICM uses the same image folder: its first 3 images
                fm.write(json.dumps({"text": EVAL_TEXTS[i], "image_path": f"val{i}.jpg", "label": 1},
                                    ensure_ascii=False) + "\n")
    return images


def photo_levels(img):
    """Levels of a photo (x0.78 + 16: colour channels below 216): the random fields span every channel
    0..255, so a +20% brighter copy would clip the colours over large areas, which changes the grey tones
    non-monotonically; the second image check can lose such copies (docs/curation.md, measured in
    perf/bench_neardup.py)."""
    arr = np.asarray(img, np.float32)
    return Image.fromarray((16 + 0.78 * arr).clip(0, 255).astype(np.uint8))


def _overlay(img):
    img = img.copy()
    ImageDraw.Draw(img).text((10, img.height - 20), "© ccmb", fill=(255, 255, 255))
    return img


def _crop(img, share=0.05):
    w, h = img.size
    return img.crop((int(w * share), int(h * share), w - int(w * share), h - int(h * share)))


COPIES = {
    "jpeg30": lambda im: Image.open(io.BytesIO(jpeg(im, 30))),
    "resize50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "crop5": _crop,
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "overlay": _overlay,
    "flip": ImageOps.mirror,
}


@pytest.fixture
def corpus(tmp_path, make_download):
    eval_images = write_icr(tmp_path / "eval")
    rows, labels = [], {}
    for i, img in enumerate(eval_images[:4]):
        for name, fn in COPIES.items():
            labels[len(rows)] = f"{name}{i}"
            rows.append(dict(url=f"http://c/{name}{i}.jpg", caption=f"网页上的图片{name}{i}", image=jpeg(fn(img))))
    labels[len(rows)] = "exact5"
    rows.append(dict(url="http://c/exact.jpg", caption="原样复制的评测图片",
                     image=(tmp_path / "eval" / "IQR_IQM_ICR_ICM_images" / "val5.jpg").read_bytes()))
    labels[len(rows)] = "caption_copy"
    rows.append(dict(url="http://c/cap.jpg", caption=EVAL_TEXTS[4] + "。", image=jpeg(rand_image(900))))
    for j in range(20):
        labels[len(rows)] = f"distinct{j}"
        rows.append(dict(url=f"http://c/d{j}.jpg", caption=f"普通的训练图片第{j}张", image=jpeg(rand_image(1000 + j))))
    d = make_download(rows, per_shard=8)
    keys = {labels[i]: fmt.make_key(i // 8, i % 8, 8) for i in labels}
    return d, tmp_path / "eval", keys


def test_finds_transformed_copies_and_nothing_else(corpus):
    d, root, k = corpus
    index = build_index(["icr"], root)
    res = decontamination_table(d, index, DecontaminationConfig())
    rows = {r["key"]: r for r in res.table.to_pylist()}
    for label, key in k.items():
        r = rows[key]
        if label[:-1] in COPIES or label == "exact5":
            i = label[-1]
            assert (r["reason"], r["duplicate_of"]) == ("eval_overlap", f"icr/val/val{i}.jpg"), label
        else:
            assert r["keep"], (label, r)
    p = res.report["datasets"]["icr/val"]
    assert p["images"] == 6 and p["images_with_copies"] == 5
    assert p["corpus_samples_copying_images"] == 4 * len(COPIES) + 1
    assert p["by_method"] == {"sha256": 1, "phash": 4 * len(COPIES)}
    assert p["texts_with_copies"] == 1 and p["text_examples"][0]["corpus_key"] == k["caption_copy"]
    assert p["examples"] and all(e["eval_image"].startswith("val") for e in p["examples"])
    # caption copies are dropped only when asked
    res = decontamination_table(d, index, DecontaminationConfig(drop_caption_matches=True))
    r = {r["key"]: r for r in res.table.to_pylist()}[k["caption_copy"]]
    assert (r["reason"], r["duplicate_of"]) == ("eval_overlap", "icr/val/val4.jpg")


def test_report_counts_an_image_in_every_set_that_holds_it(corpus):
    d, root, k = corpus
    res = decontamination_table(d, build_index(["icr", "icm"], root), DecontaminationConfig())
    icr, icm = res.report["datasets"]["icr/val"], res.report["datasets"]["icm/val"]
    assert icr["images_with_copies"] == 5 and icm["images"] == 3 and icm["images_with_copies"] == 3
    assert icm["corpus_samples_copying_images"] == 3 * len(COPIES)
    assert {e["eval_image"] for e in icm["examples"]} <= {"val0.jpg", "val1.jpg", "val2.jpg"}
    # the decision names the first set that holds the image
    rows = {r["key"]: r for r in res.table.to_pylist()}
    assert rows[k["flip0"]]["duplicate_of"] == "icr/val/val0.jpg"


def test_cli_then_build_shards_removes_them(corpus, tmp_path):
    d, root, k = corpus
    res = CliRunner().invoke(main, ["decontaminate", "--input", str(d), "--against", "icr", "--root", str(root),
                                    "--output", str(tmp_path / "dc.parquet"), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "icr/val: 5 of 6 images have copies" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["against"] == ["icr/val"]
    out = tmp_path / "shards"
    build_shards(d, out, keep_tables=[tmp_path / "dc.parquet"])
    kept = {s.meta["source_key"] for tar in fmt.list_shards(out) for s in fmt.iter_tar_samples(tar)}
    assert kept == {k[f"distinct{j}"] for j in range(20)} | {k["caption_copy"]}
    prov = fmt.read_manifest(out)["provenance"]
    assert prov["decision_tables"][0]["kind"] == "decontaminate"
    assert prov["decontamination"]["against"] == ["icr/val"]
    assert prov["decontamination"]["report"]["datasets"]["icr/val"]["images_with_copies"] == 5
    t = pq.read_table(tmp_path / "dc.parquet")
    assert t.num_rows == 4 * len(COPIES) + 22
    # the same input gives the same table file (its fingerprint goes into the provenance)
    res = CliRunner().invoke(main, ["decontaminate", "--input", str(d), "--against", "icr", "--root", str(root),
                                    "--output", str(tmp_path / "dc2.parquet")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dc2.parquet").read_bytes() == (tmp_path / "dc.parquet").read_bytes()


def test_bad_input_is_a_clear_error(corpus, tmp_path):
    d, root, _ = corpus
    res = CliRunner().invoke(main, ["decontaminate", "--input", str(d), "--against", "no-such-set", "--root",
                                    str(root), "--output", str(tmp_path / "x.parquet")])
    assert res.exit_code != 0 and "unknown dataset" in res.output
    res = CliRunner().invoke(main, ["decontaminate", "--input", str(d), "--against", "coco-cn", "--root",
                                    str(root), "--output", str(tmp_path / "x.parquet")])
    assert res.exit_code != 0 and "Error" in res.output and not (tmp_path / "x.parquet").exists()
