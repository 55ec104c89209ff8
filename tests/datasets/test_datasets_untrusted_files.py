"""Names, splits and files of a downstream set are checked: an unknown name gets "did you mean", a wrong split
names the splits that exist, and images/annotations are read only as regular files inside their folder and of
bounded size (a link to /dev/zero or a FIFO is an error naming the file, never read)."""
from __future__ import annotations

import json
import os
import signal

import pytest
from click.testing import CliRunner

from ccmb import datasets as ds
from ccmb.cli import main
from ccmb.datasets.base import MAX_LINE_BYTES
from ccmb.synthetic import all_items, jpeg_bytes, render


def test_unknown_name_and_wrong_split():
    with pytest.raises(ds.UnknownDatasetError, match=r"unknown dataset 'icrr' \(did you mean 'icr'\?\)"):
        ds.get_spec("icrr")
    with pytest.raises(ds.UnknownSplitError) as err:
        ds.load_dataset("icr", "/nonexistent", split="test")
    assert str(err.value).startswith("icr has train and val") and "zero.so.com" not in str(err.value)
    with pytest.raises(ds.UnknownSplitError, match=r"did you mean 'test'"):
        ds.get_spec("flickr30k-cna").check_split("tset")
    # the names each loader accepts for a split stay accepted
    assert ds.get_spec("muge").check_split("val") == "val"
    assert ds.get_spec("aic-icc").check_split("val") == "val"
    assert ds.get_spec("imagenet-cn").check_split("val") == "val"
    assert ds.get_spec("elevater-cn/cifar-10").check_split("val") == "val"
    assert ds.get_spec("icr").check_split(None) == "val"
    # an explicit annotation file makes the split a label
    assert ds.get_spec("icr").check_split("mine", {"annotations": "x.json"}) == "mine"


def test_cli_answers_before_reading(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["datasets", "info", "icr", "--root", str(tmp_path), "--split", "test"])
    assert res.exit_code == 1 and res.output.strip() == (
        "Error: icr has train and val (the published evaluation uses val), no split 'test'")
    res = runner.invoke(main, ["datasets", "verify", "iqrr", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "did you mean 'iqr'" in res.output
    res = runner.invoke(main, ["datasets", "verify", "icr", "--root", str(tmp_path), "--max-lines", "-1"])
    assert res.exit_code == 2 and "--max-lines" in res.output


def _icr(root, names):
    images = root / "IQR_IQM_ICR_ICM_images"
    images.mkdir(parents=True)
    ann = root / "ICR" / "val" / "long_itr_val.json"
    ann.parent.mkdir(parents=True)
    ann.write_text("".join(json.dumps({"text": f"第{i}张", "image_path": n}, ensure_ascii=False) + "\n"
                           for i, n in enumerate(names)), encoding="utf-8")
    return images, ann


def _jpeg(k=0):
    return jpeg_bytes(render(all_items()[k], size=32, seed=k))


class _Timeout:
    """Fail instead of hanging (a FIFO opened for a blocking read would wait for a writer forever)."""

    def __enter__(self):
        signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("hung")))
        signal.alarm(20)

    def __exit__(self, *exc):
        signal.alarm(0)


def test_images_must_be_regular_files_inside_their_folder(tmp_path):
    root = tmp_path / "root"
    images, _ = _icr(root, ["ok.jpg", "zero.jpg", "fifo.jpg", "out.jpg", "big.jpg"])
    (images / "ok.jpg").write_bytes(_jpeg())
    os.symlink("/dev/zero", images / "zero.jpg")
    os.mkfifo(images / "fifo.jpg")
    outside = tmp_path / "store"
    outside.mkdir()
    (outside / "o.jpg").write_bytes(_jpeg(1))
    os.symlink(outside / "o.jpg", images / "out.jpg")
    with open(images / "big.jpg", "wb") as fh:
        fh.truncate(65 << 20)  # sparse, over the 64 MiB bound
    data = ds.load_dataset("icr", root)
    idx = {n: i for i, n in enumerate(data.image_ids)}
    with _Timeout():
        assert data.image_bytes(idx["ok.jpg"])[:2] == b"\xff\xd8"
        for name, reason in (("zero.jpg", "character device (a link to /dev/zero)"), ("fifo.jpg", "a FIFO"),
                             ("out.jpg", "outside"), ("big.jpg", "more than the bound")):
            with pytest.raises(ds.UnsafeFileError) as err:
                data.image_bytes(idx[name])
            assert str(images / name) in str(err.value) and reason in str(err.value), str(err.value)
        # an explicit root allows links into it; a higher bound allows bigger images
        data = ds.load_dataset("icr", root, image_root=str(outside), max_image_bytes=str(70 << 20))
        assert data.image_bytes(idx["out.jpg"])[:2] == b"\xff\xd8"
        assert len(data.image_bytes(idx["big.jpg"])) == 65 << 20
        res = CliRunner().invoke(main, ["datasets", "verify", "icr", "--root", str(root), "--json"])
    report = json.loads(res.output)
    assert res.exit_code == 1 and len(report["problems"]) == 4 and report["images_checked"] == 5
    assert any("/dev/zero" in p and "long_itr_val.json:2" in p for p in report["problems"])


def test_annotation_files_are_bounded(tmp_path):
    root = tmp_path / "root"
    _, ann = _icr(root, ["a.jpg"])
    with open(ann, "a", encoding="utf-8") as fh:  # a line longer than the bound, then a good one
        fh.write('{"text": "' + "长" * (MAX_LINE_BYTES // 3 + 10) + '", "image_path": "b.jpg"}\n')
        fh.write(json.dumps({"text": "好", "image_path": "c.jpg"}, ensure_ascii=False) + "\n")
    data = ds.load_dataset("icr", root, lenient=True)
    assert data.image_ids == ["a.jpg", "c.jpg"]
    assert any(f"{ann}:2" in m and "longer than" in m for m in data.malformed)
    with pytest.raises(ds.DatasetFormatError, match=f"{ann}:2: line longer than"):
        ds.load_dataset("icr", root)
    ann.unlink()
    os.symlink("/dev/zero", ann)  # an annotation "file" that never ends: refused, not read
    with _Timeout(), pytest.raises(ds.DatasetError) as err:
        ds.load_dataset("icr", root)
    assert str(ann) in str(err.value) or "long_itr_val.json" in str(err.value)
