"""``ccmb decontaminate --engine spark``: caption matching and the decision table on the executors give the
in-process table row by row (a partitioned table), the same report, and the shard set's provenance lists it."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from ccmb import shards as fmt
from ccmb.cli import main
from ccmb.corpus import parts
from ccmb.corpus.decontaminate import DecontaminationConfig, decontaminate
from ccmb.corpus.table import decision_metadata, read_decisions

pytestmark = [pytest.mark.spark, pytest.mark.slow]

EVAL_TEXTS = ["一只橘色的猫趴在木头桌子上晒太阳", "傍晚时分海边的灯塔和归来的渔船", "雨后的城市街道上撑伞的行人",
              "山谷里开满黄色油菜花的梯田", "厨房台面上摆着新鲜的蔬菜和水果"]


def _image(seed: int, size=(320, 240)) -> Image.Image:
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _eval_root(root):
    """A tiny ICR val set (official layout); returns its image bytes."""
    (root / "IQR_IQM_ICR_ICM_images").mkdir(parents=True)
    (root / "ICR" / "val").mkdir(parents=True)
    out = []
    with open(root / "ICR" / "val" / "long_itr_val.json", "w", encoding="utf-8") as fh:
        for i, text in enumerate(EVAL_TEXTS):
            data = _jpeg(_image(500 + i))
            (root / "IQR_IQM_ICR_ICM_images" / f"val{i}.jpg").write_bytes(data)
            out.append(data)
            fh.write(json.dumps({"text": text, "image_path": f"images/val{i}.jpg"}, ensure_ascii=False) + "\n")
    return out


def _download(out, eval_bytes):
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


@pytest.fixture(scope="module")
def contaminated(tmp_path_factory):
    base = tmp_path_factory.mktemp("decon")
    root = base / "eval"
    d, labels = _download(base / "download", _eval_root(root))
    return d, root, labels


def test_spark_table_equals_in_process_and_build_lists_it(contaminated, spark, tmp_path):
    d, root, k = contaminated
    config = DecontaminationConfig(drop_caption_matches=True)
    local, local_report = decontaminate(d, ["icr"], root, tmp_path / "local.parquet", config=config)
    remote, remote_report = decontaminate(d, ["icr"], root, tmp_path / "spark.parquet", config=config,
                                          engine="spark", spark=spark)
    # the executors wrote a partitioned table (marker, kind, source, the report in its info)
    out = tmp_path / "spark.parquet"
    assert out.is_dir() and (out / parts.MARKER).exists()
    meta = decision_metadata(out)
    assert meta["kind"] == "decontaminate" and meta["source"]["path"] == str(d.resolve())
    assert json.loads(meta["info"])["report"] == remote_report
    a, b = read_decisions(tmp_path / "local.parquet"), read_decisions(out)
    assert a.equals(b), [(x, y) for x, y in zip(a.to_pylist(), b.to_pylist()) if x != y]
    assert (local.rows, local.kept, local.dropped) == (remote.rows, remote.kept, remote.dropped)
    assert local_report == remote_report
    # what was planted is what was found
    rows = {r["key"]: r for r in b.to_pylist()}
    expect = {"exact0": "val0", "exact0b": "val0", "near1": "val1", "near1b": "val1", "near2": "val2",
              "caption3": "val3", "caption3b": "val3", "caption4": "val4", "both4": "val4"}
    for label, image in expect.items():
        assert (rows[k[label]]["reason"], rows[k[label]]["duplicate_of"]) == ("eval_overlap",
                                                                              f"icr/val/{image}.jpg"), label
    assert rows[k["broken"]]["reason"] == "undecodable_image"
    assert all(rows[k[f"distinct{j}"]]["keep"] for j in range(12))
    p = remote_report["datasets"]["icr/val"]
    assert p["by_method"] == {"sha256": 2, "phash": 4} and p["images_with_copies"] == 4
    assert p["texts_with_copies"] == 2 and p["corpus_samples_copying_texts"] == 4
    assert remote_report["undecodable"] == 1 and remote_report["dropped"] == 10

    # caption matches only reported by default: the same on both engines
    plain = DecontaminationConfig()
    decontaminate(d, ["icr"], root, tmp_path / "l2.parquet", config=plain)
    decontaminate(d, ["icr"], root, tmp_path / "s2.parquet", config=plain, engine="spark", spark=spark)
    assert read_decisions(tmp_path / "l2.parquet").equals(read_decisions(tmp_path / "s2.parquet"))

    # the CLI writes the folder and build-shards (Spark tasks) records it in the shard set's provenance
    res = CliRunner().invoke(main, ["decontaminate", "--input", str(d), "--against", "icr", "--root", str(root),
                                    "--output", str(tmp_path / "cli.parquet"), "--drop-caption-matches",
                                    "--engine", "spark", "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "icr/val: 4 of 5 images have copies" in res.output
    assert read_decisions(tmp_path / "cli.parquet").equals(a)
    res = CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(tmp_path / "shards"),
                                    "--keep", str(tmp_path / "cli.parquet"), "--samples-per-shard", "5",
                                    "--engine", "spark"])
    assert res.exit_code == 0, res.output
    prov = fmt.read_manifest(tmp_path / "shards")["provenance"]
    assert prov["decision_tables"][0]["kind"] == "decontaminate"
    assert prov["decision_tables"][0]["fingerprint"] == parts.table_fingerprint(tmp_path / "cli.parquet")
    assert prov["decontamination"]["against"] == ["icr/val"]
    assert prov["decontamination"]["report"]["datasets"] == remote_report["datasets"]
    kept = {s.meta["source_key"] for tar in fmt.list_shards(tmp_path / "shards") for s in fmt.iter_tar_samples(tar)}
    assert kept == {k[f"distinct{j}"] for j in range(12)}
