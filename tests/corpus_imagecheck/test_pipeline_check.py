"""The second image check wired into the pipeline: ``ccmb dedup`` (the pHash level) and ``ccmb decontaminate``
never merge different dark photos that carry the same overlay caption, although pHash proposes them; real
copies still merge; both engines decide alike. Images are generated here (no download)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from ccmb import shards as fmt
from ccmb.cli import main
from ccmb.corpus import api
from ccmb.corpus.primitives.phash import phash_variants_bytes, phash_with_mirror
from ccmb.corpus.steps.decontaminate import DecontaminationConfig, pairs_within
from ccmb.corpus.tables.decisions import decision_metadata, read_decisions

DARK = (3, 5, 7, 11, 16)  # different dark photos, the same overlay: pHash pairs within 2-6 bits
EVAL_DARK = 10            # the dark photo copied (and, for decontamination, the evaluation image)


def dark(seed: int, quality: int = 92) -> bytes:
    """A dark, low-texture photo (a fine random colour field, levels x0.08 + 6) under a white caption."""
    small = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC), np.float32)
    img = Image.fromarray((6 + 0.08 * arr).clip(0, 255).astype(np.uint8))
    ImageDraw.Draw(img).text((160, 205), "SUBSCRIBE FOR MORE", fill=(255, 255, 255),
                             font=ImageFont.load_default(size=29), anchor="mm")
    return _jpeg(img, quality)


def plain(seed: int) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((320, 256), Image.Resampling.BICUBIC), np.float32)
    return Image.fromarray((16 + 0.78 * arr).clip(0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A download folder (dark photos, a re-encoded copy of one, a plain photo and its copies, in key order:
    the originals first) and an ICR val set whose images are that dark photo and the plain one."""
    base = tmp_path_factory.mktemp("pipeline_check")
    rows = [(f"dark{s}", dark(s)) for s in DARK]
    rows += [("dark_copy", dark(EVAL_DARK, quality=40)), ("plain", _jpeg(plain(1))),
             ("plain_small", _jpeg(plain(1).resize((160, 128)))), ("plain_jpeg30", _jpeg(plain(1), 30))]
    rows.insert(0, (f"dark{EVAL_DARK}", dark(EVAL_DARK)))
    out, labels = base / "download", {}
    out.mkdir()
    per = 4
    for s in range(0, len(rows), per):
        with fmt.ShardWriter(out, s // per, source="test.jsonl") as w:
            for i, (label, image) in enumerate(rows[s: s + per]):
                key = fmt.make_key(s // per, i, per)
                labels[label] = key
                meta = {"url": f"http://x.example.com/{label}.jpg", "caption": f"图片{label}的说明文字",
                        "title": "", "key": key, "width": 320, "height": 256, "original_width": 320,
                        "original_height": 256}
                w.write(key, image, meta["caption"], meta)
    root = base / "eval"
    (root / "IQR_IQM_ICR_ICM_images").mkdir(parents=True)
    (root / "ICR" / "val").mkdir(parents=True)
    with open(root / "ICR" / "val" / "long_itr_val.json", "w", encoding="utf-8") as fh:
        for i, image in enumerate([dark(EVAL_DARK), _jpeg(plain(1))]):
            (root / "IQR_IQM_ICR_ICM_images" / f"val{i}.jpg").write_bytes(image)
            fh.write(json.dumps({"text": f"评测图片{i}号的描述", "image_path": f"images/val{i}.jpg"},
                                ensure_ascii=False) + "\n")
    # the premise: pHash alone proposes the different dark photos (to each other and to the evaluation one)
    h = phash_variants_bytes([dark(s) for s in DARK])
    assert len(pairs_within(h, np.stack([phash_with_mirror(dark(EVAL_DARK))]), 6)[0]) >= 3
    return out, labels, root


def _dedup_cli(d, out, *flags):
    res = CliRunner().invoke(main, ["dedup", "--input", str(d), "--output", str(out), "--no-url", "--no-sha256",
                                    "--no-caption", *flags])
    assert res.exit_code == 0, res.output
    return {r["key"]: r for r in read_decisions(out).to_pylist()}


def test_dedup_merges_copies_not_dark_photos_with_one_overlay(data, tmp_path):
    d, k, _ = data
    rows = _dedup_cli(d, tmp_path / "dedup.parquet")
    dropped = {label: rows[key]["duplicate_of"] for label, key in k.items() if rows[key]["reason"]}
    assert dropped == {"dark_copy": k[f"dark{EVAL_DARK}"], "plain_small": k["plain"], "plain_jpeg30": k["plain"]}
    info = json.loads(decision_metadata(tmp_path / "dedup.parquet")["info"])
    assert info["levels"] == ["phash"] and info["params"]["phash"]["image_check"] is True
    # without the check, pHash alone merges different photos (what the check prevents)
    rows = _dedup_cli(d, tmp_path / "off.parquet", "--no-image-check")
    merged = [label for label, key in k.items() if label.startswith("dark") and label != "dark_copy"
              and rows[key]["reason"] == "duplicate_phash"]
    assert merged
    assert json.loads(decision_metadata(tmp_path / "off.parquet")["info"])["params"]["phash"]["image_check"] is False


def _decon_cli(d, root, out, *flags):
    res = CliRunner().invoke(main, ["decontaminate", "--input", str(d), "--against", "icr", "--root", str(root),
                                    "--output", str(out), *flags])
    assert res.exit_code == 0, res.output
    return {r["key"]: r for r in read_decisions(out).to_pylist()}, json.loads(decision_metadata(out)["info"])


def test_decontaminate_drops_copies_not_dark_photos_with_one_overlay(data, tmp_path):
    d, k, root = data
    rows, info = _decon_cli(d, root, tmp_path / "decon.parquet")
    dropped = {label: rows[key]["duplicate_of"] for label, key in k.items() if rows[key]["reason"]}
    assert dropped == {f"dark{EVAL_DARK}": "icr/val/val0.jpg", "dark_copy": "icr/val/val0.jpg",
                       "plain": "icr/val/val1.jpg", "plain_small": "icr/val/val1.jpg",
                       "plain_jpeg30": "icr/val/val1.jpg"}
    report = info["report"]
    assert report["settings"]["image_check"] is True and report["phash_candidates_rejected_by_image_check"] >= 3
    rows, info = _decon_cli(d, root, tmp_path / "off.parquet", "--no-image-check")
    assert [label for label in k if label.startswith("dark") and rows[k[label]]["reason"]
            and label not in (f"dark{EVAL_DARK}", "dark_copy")]
    assert info["report"]["settings"]["image_check"] is False


@pytest.mark.spark
def test_spark_decontaminates_like_the_local_engine(data, spark, tmp_path):
    """(The pHash level's check on Spark: the engine-conformance suite, whose planted folder has such dark
    photos.)"""
    d, k, root = data
    for engine in ("local", "spark"):
        kw = {"engine": engine, "spark": spark} if engine == "spark" else {}
        api.decontaminate(d, ["icr"], root, tmp_path / f"{engine}.parquet", config=DecontaminationConfig(), **kw)
    local, on_spark = (read_decisions(tmp_path / f"{e}.parquet") for e in ("local", "spark"))
    assert local.equals(on_spark)
    assert {r["key"] for r in on_spark.to_pylist() if r["reason"]} == {
        k[x] for x in (f"dark{EVAL_DARK}", "dark_copy", "plain", "plain_small", "plain_jpeg30")}
