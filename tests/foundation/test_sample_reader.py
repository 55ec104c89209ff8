"""One sample reader: every consumer of the tar layout (ccmb.shards.iter_tar_samples, build-shards' reader
by offset, the trainer's webdataset pipeline) turns the same odd tars into the same samples."""
from __future__ import annotations

import io
import json
import random
import tarfile

import pytest
import torch
import webdataset as wds
from PIL import Image

from ccmb import shards as fmt
from ccmb.corpus.steps.build import plan_samples, tar_members
from ccmb.corpus.tables.schema import CurationError
from models.train.data import ShardStream, image_id


def _png(color, size=(12, 8), fmt_name="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt_name)
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _js(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


ODD = [  # (members, expected text, expected image size)
    # no .txt: the json caption
    ([("001.jpg", _png((255, 0, 0), (10, 6), "JPEG")), ("001.json", _js({"caption": "json里的标题", "title": "别的"}))],
     "json里的标题", (10, 6)),
    # no .json: empty meta, the .txt
    ([("002.jpg", _png((0, 255, 0), (11, 6), "JPEG")), ("002.txt", "只有文字".encode())], "只有文字", (11, 6)),
    # upper-case extensions
    ([("003.JPG", _png((0, 0, 255), (12, 6), "JPEG")), ("003.TXT", "大写扩展名".encode()),
      ("003.Json", _js({"title": "t"}))], "大写扩展名", (12, 6)),
    # extra members are ignored
    ([("004.png", _png((9, 9, 9), (13, 6))), ("004.cls", b"3"), ("004.txt", "多余成员".encode()),
      ("004.npy", b"\x93NUMPY"), ("004.json", _js({"caption": "不用这个"}))], "多余成员", (13, 6)),
    # neither .txt nor a caption: the first Zero text
    ([("005.webp", _png((5, 50, 5), (14, 6), "WEBP")), ("005.json", _js({"content": "内容文字", "query": "查询"}))],
     "内容文字", (14, 6)),
]


@pytest.fixture
def odd_tar(tmp_path):
    members = [m for sample, _, _ in ODD for m in sample]
    return _tar(tmp_path / "00000.tar", members)


def _build_sample(tar_path, key):
    """build-shards' reader: the member offsets of the plan's tar scan, then the sample read by byte range."""
    members = tar_members(tar_path)
    s = next(plan_samples(tar_path.parent, [(key, tar_path.name, members[key])]))
    return s.image, s.text, s.meta, s.image_ext


def _stream(choice="txt"):
    return ShardStream([], batch_size=1, image_transform=lambda img, rng: torch.tensor(img.size),
                       tokenize=lambda texts: {}, text_choice=choice)


def _train_items(tar_path):
    stream = _stream()
    out = []
    for raw in wds.tarfile_samples([{"url": str(tar_path)}]):
        out.append(stream._decode(raw, random.Random(0)))
    return out, stream


def test_every_consumer_reads_the_same_samples(odd_tar):
    reference = list(fmt.iter_tar_samples(odd_tar))
    assert [s.key for s in reference] == ["001", "002", "003", "004", "005"]
    assert [s.text for s in reference] == [text for _, text, _ in ODD]
    assert [Image.open(io.BytesIO(s.image)).size for s in reference] == [size for _, _, size in ODD]
    assert reference[1].meta == {} and reference[2].meta == {"title": "t"}
    assert [s.image_ext for s in reference] == ["jpg", "jpg", "jpg", "png", "webp"]

    for s in reference:
        assert _build_sample(odd_tar, s.key) == (s.image, s.text, s.meta, s.image_ext), s.key

    items, stream = _train_items(odd_tar)
    assert not stream.failures
    assert [it["key"] for it in items] == [s.key for s in reference]
    assert [it["text"] for it in items] == [s.text for s in reference]
    assert [tuple(it["pixel_values"].tolist()) for it in items] == [size for _, _, size in ODD]
    assert [it["image_id"] for it in items] == [image_id(s.meta, s.key) for s in reference]


@pytest.mark.parametrize("members, reason", [
    ([("007.txt", b"no image"), ("007.json", b"{}")], "no image member"),
    ([("007.jpg", _png((1, 2, 3), fmt_name="JPEG")), ("007.json", b"[" * 1000 + b"]" * 1000)], "nested deeper"),
    ([("007.jpg", _png((1, 2, 3), fmt_name="JPEG")), ("007.json", b"[1, 2]")], "not a JSON object"),
    ([("007.jpg", _png((1, 2, 3), fmt_name="JPEG")), ("007.txt", b"\xff\xfe bad")], "not UTF-8"),
])
def test_every_consumer_refuses_the_same_bad_samples(tmp_path, members, reason):
    tar = _tar(tmp_path / "00000.tar", members)
    with pytest.raises(fmt.ShardFormatError, match=reason):
        list(fmt.iter_tar_samples(tar))
    with pytest.raises(CurationError, match=reason):
        _build_sample(tar, "007")
    items, stream = _train_items(tar)
    assert items == [None] and stream.failures == {"bad sample": 1}


def test_text_fields_are_defined_once():
    import ccmb.corpus.stats as stats
    import models.train.data as data

    assert data.TEXT_FIELDS is fmt.TEXT_FIELDS
    assert stats.TEXT_FIELDS[1:] == fmt.TEXT_FIELDS


def test_every_consumer_refuses_a_key_with_two_members_of_one_extension(tmp_path):
    img = _png((1, 2, 3), fmt_name="JPEG")
    tar = _tar(tmp_path / "00000.tar", [("008.jpg", img), ("008.JPG", img), ("008.txt", b"x")])
    with pytest.raises(fmt.ShardFormatError, match="two .jpg members"):
        list(fmt.iter_tar_samples(tar))
    with pytest.raises(CurationError, match="two .jpg members"):
        _build_sample(tar, "008")
    with pytest.raises(ValueError, match="duplicate file name"):  # webdataset refuses it as well
        list(wds.tarfile_samples([{"url": str(tar)}]))
