"""`ccmb datasets list/info/verify/convert` end to end on fixtures."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main


def run(*args):
    res = CliRunner().invoke(main, ["datasets", *map(str, args)])
    return res


def test_list_shows_every_dataset():
    res = run("list")
    assert res.exit_code == 0, res.output
    for name in ("icm", "iqr", "flickr30k-cna", "muge", "aic-icc-caption", "elevater-cn/<name>", "text2image-cn"):
        assert name in res.output
    assert "IQR_IQM_ICR_ICM_images" in res.output
    specs = json.loads(run("list", "--json").stdout)
    assert {s["name"] for s in specs} >= {"coco-cn", "imagenet-cn"}


def test_info_json_counts(tmp_path, fx):
    fx.build_r2d2(tmp_path)
    res = run("info", "icr", "--root", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert (info["images"], info["texts"], info["positives"], info["split"]) == (3, 3, 4, "val")
    info = json.loads(run("info", "icm", "--root", tmp_path, "--json").stdout)
    assert (info["pairs"], info["positives"], info["negatives"]) == (3, 2, 1)
    fx.build_elevater(tmp_path)
    res = run("info", "elevater-cn/cifar-10", "--root", tmp_path)
    assert "classes: 3" in res.output and "images: 3" in res.output


def test_info_errors(tmp_path, fx):
    res = run("info", "nosuch", "--root", tmp_path)
    assert res.exit_code != 0 and "known:" in res.output
    res = run("info", "flickr30k-cna", "--root", tmp_path / "missing")
    assert res.exit_code != 0 and "expected layout" in res.output and "Flickr30k-images" in res.output
    fx.build_r2d2(tmp_path, malformed=True)
    res = run("info", "icr", "--root", tmp_path)
    assert res.exit_code != 0 and "long_itr_val.json:8" in res.output
    res = run("info", "icr", "--root", tmp_path, "--lenient", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["skipped_lines"] == 1


def test_verify_clean_set_passes(tmp_path, fx):
    fx.build_flickr_cna(tmp_path)
    res = run("verify", "flickr30k-cna", "--root", tmp_path)
    assert res.exit_code == 0, res.output
    assert "3 images checked, 0 problems" in res.output
    assert "warning:" in res.output and "duplicate caption id" in res.output


def test_verify_catches_every_defect(tmp_path, fx):
    root = fx.build_flickr_cna(tmp_path, malformed=True)
    (root / "Flickr30k-images" / "3000.jpg").unlink()                     # missing image
    (root / "Flickr30k-images" / "2000.jpg").write_bytes(b"not an image")  # undecodable image
    res = run("verify", "flickr30k-cna", "--root", root, "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    problems = "\n".join(report["problems"])
    assert len(report["problems"]) == 3, problems
    assert "flickr30k_cna_test.txt:3:" in problems                       # malformed line, file:line
    assert "missing image:" in problems and "3000.jpg" in problems
    assert "cannot decode image" in problems and "2000.jpg" in problems
    from ccmb.datasets.verify import verify_dataset

    serial = verify_dataset("flickr30k-cna", root, workers=1)
    assert [p[:60] for p in serial.problems] == [p[:60] for p in report["problems"]]
    assert serial.images_checked == 3
    res = run("verify", "muge", "--root", tmp_path / "none")
    assert res.exit_code == 1 and "expected layout" in res.output


def test_verify_tsv_defects(tmp_path, fx):
    fx.build_cclip(tmp_path)
    with open(tmp_path / "test_imgs.tsv", "a", encoding="utf-8") as fh:
        fh.write("104\tbm90IGFuIGltYWdl\n")   # base64 of "not an image"
        fh.write("no-tab-line\n")
    with open(tmp_path / "test_texts.jsonl", "a", encoding="utf-8") as fh:
        fh.write(fx.jl(text_id=8, text="不在TSV里的图", image_ids=[999]) + "\n")
    res = run("verify", "coco-cn", "--root", tmp_path, "--json")
    report = json.loads(res.stdout)
    assert res.exit_code == 1 and len(report["problems"]) == 3, report["problems"]
    assert any("missing image" in p and "test_imgs.tsv#999" in p for p in report["problems"])
    assert any("test_imgs.tsv:6:" in p for p in report["problems"])
    assert any("test_imgs.tsv#104" in p for p in report["problems"])


@pytest.mark.parametrize("name,build", [("icr", "build_r2d2"), ("icm", "build_r2d2"),
                                        ("coco-cn", "build_cclip"), ("elevater-cn/cifar-10", "build_elevater"),
                                        ("aic-icc-caption", "build_aic")])
def test_convert_writes_valid_shards(tmp_path, fx, name, build):
    root = tmp_path / "data"
    getattr(fx, build)(root)
    out = tmp_path / "shards"
    res = run("convert", name, "--root", root, "--output", out, "--samples-per-shard", 2)
    assert res.exit_code == 0, res.output
    report = shards.verify_shard_set(out)
    assert report.ok, report.problems
    samples = list(shards.iter_samples(out))
    manifest = shards.read_manifest(out)
    n = 2 if name == "icm" else 3
    assert manifest["dataset"] == name and manifest["total_samples"] == len(samples) == n
    assert len(manifest["shards"]) == (n + 1) // 2
    ids = [s.meta["image_key"] for s in samples]
    assert len(set(ids)) == len(ids)  # each image once
    for s in samples:
        assert s.text == s.meta["texts"][0]
    if name == "icr":
        assert [s.meta["texts"] for s in samples] == [["一只猫"], ["一只狗", "红色的车"], ["一只猫"]]
    if name == "icm":
        assert samples[0].meta["texts"] == ["猫在睡觉", "狗在跑"] and samples[0].meta["labels"] == [1, 0]
    if name == "elevater-cn/cifar-10":
        assert [s.meta["label"] for s in samples] == [0, 0, 2] and samples[2].text == "鸟"
        assert samples[1].image_ext == "png"
    res = run("convert", name, "--root", root, "--output", out)
    assert res.exit_code != 0 and "already holds shards" in res.output


def test_convert_records_missing_images_as_failures(tmp_path, fx):
    root = fx.build_flickr_cna(tmp_path / "data")
    (root / "Flickr30k-images" / "2000.jpg").unlink()
    out = tmp_path / "shards"
    res = run("convert", "flickr30k-cna", "--root", root, "--output", out)
    assert res.exit_code == 0, res.output
    assert shards.verify_shard_set(out).ok
    manifest = shards.read_manifest(out)
    assert manifest["total_samples"] == 2 and manifest["failed_images"] == 1
    table = shards.read_parquet(out / "00000.parquet")
    assert table.num_rows == 3
    status = table.column("status").to_pylist()
    assert status.count("success") == 2 and "failed_input" in status
    assert "2000.jpg" in [m for m in table.column("error_message").to_pylist() if m][0]


def test_verify_classification_defects(tmp_path, fx):
    fx.build_elevater(tmp_path)
    base = tmp_path / "cifar-10"
    (base / "test" / "5").mkdir()                                     # class index out of range
    (base / "test" / "2" / "c.jpg").write_bytes(fx.image_bytes(0)[:40])  # truncated JPEG
    res = run("verify", "elevater-cn/cifar-10", "--root", tmp_path, "--json")
    report = json.loads(res.stdout)
    assert res.exit_code == 1 and len(report["problems"]) == 2, report["problems"]
    assert any("test/5: class index 5 outside" in p for p in report["problems"])
    assert any("c.jpg" in p and "cannot decode" in p for p in report["problems"])
