"""Every registered dataset loads from fixture files in its official layout, with exact ground truth."""
from __future__ import annotations

import pytest

from ccmb import datasets as ds


def test_icr_iqr_merge_texts_and_handle_quirks(tmp_path, fx):
    root = fx.build_r2d2(tmp_path)
    for name in ("icr", "iqr"):
        d = ds.load_dataset(name, root)
        assert isinstance(d, ds.RetrievalData) and d.split == "val" and d.name == name
        assert d.image_ids == ["a.jpg", "b.jpg", "c.jpg"]
        assert d.texts == ["一只猫", "一只狗", "红色的车"]  # BOM stripped, CRLF handled
        assert d.text_to_images == [[0, 2], [1], [1]]
        assert d.image_to_texts == [[0], [1, 2], [0]]
        assert d.directions == ("i2t", "t2i")
        assert d.stats == {"skipped_lines": 0, "duplicates": 1, "empty_texts": 1}
        assert any(":5: duplicate" in m for m in d.duplicates)
        img = d.load_image(2)
        assert img.mode == "RGB" and img.size == (12, 9)


def test_malformed_line_strict_and_lenient(tmp_path, fx):
    root = fx.build_r2d2(tmp_path, malformed=True)
    with pytest.raises(ds.DatasetFormatError, match=r"long_itr_val\.json:8: invalid JSON"):
        ds.load_dataset("icr", root)
    d = ds.load_dataset("icr", root, lenient=True)
    assert d.stats["skipped_lines"] == 1 and len(d.texts) == 3
    with pytest.raises(ds.DatasetFormatError, match=r"long_itm_val\.json:5: 'label' must be 0 or 1"):
        ds.load_dataset("icm", root)


def test_icm_iqm_matching(tmp_path, fx):
    root = fx.build_r2d2(tmp_path)
    for name in ("icm", "iqm"):
        d = ds.load_dataset(name, root)
        assert isinstance(d, ds.MatchingData)
        assert d.image_ids == ["a.jpg", "b.jpg"]
        assert d.pair_images == [0, 0, 1] and d.pair_texts == ["猫在睡觉", "狗在跑", "狗在跑"]
        assert d.pairs == [(0, "猫在睡觉"), (0, "狗在跑"), (1, "狗在跑")]
        assert d.labels == [1, 0, 1] and d.stats["duplicates"] == 1
        assert d.summary()["positives"] == 2


def test_root_may_be_the_dataset_folder(tmp_path, fx):
    root = fx.build_r2d2(tmp_path)
    d = ds.load_dataset("icr", root / "ICR")  # images found in the parent
    assert len(d.image_ids) == 3 and d.files["images"].endswith("IQR_IQM_ICR_ICM_images")


@pytest.mark.parametrize("file_name", ["flickr30k_cna_test.txt", "flickr30k_cn_test.txt"])
def test_flickr30k_cna(tmp_path, fx, file_name):
    root = fx.build_flickr_cna(tmp_path, file_name)
    d = ds.load_dataset("flickr30k-cna", root)
    assert d.split == "test" and d.image_ids == ["1000", "2000", "3000"]
    assert d.texts == ["一个男人在骑车", "男人骑自行车", "两只狗", "草地上的孩子"]
    assert d.text_ids == ["1000#0", "1000#1", "2000#0", "3000#0"]
    assert d.text_to_images == [[0], [0], [1], [2]]
    assert d.image_to_texts == [[0, 1], [2], [3]]
    assert d.stats == {"skipped_lines": 0, "duplicates": 1, "empty_texts": 1}
    assert d.image_path(0).endswith("Flickr30k-images/1000.jpg")


def test_flickr30k_cna_malformed(tmp_path, fx):
    root = fx.build_flickr_cna(tmp_path, malformed=True)
    with pytest.raises(ds.DatasetFormatError, match=r"flickr30k_cna_test\.txt:3: .*no tab"):
        ds.load_dataset("flickr30k-cna", root)
    assert ds.load_dataset("flickr30k-cna", root, lenient=True).stats["skipped_lines"] == 1


@pytest.mark.parametrize("name,sub", [("flickr30k-cn", ""), ("coco-cn", "COCO-CN"), ("flickr30k-cn", "Flickr30k-CN")])
def test_cclip_retrieval(tmp_path, fx, name, sub):
    fx.build_cclip(tmp_path / sub if sub else tmp_path)
    d = ds.load_dataset(name, tmp_path)
    assert d.image_ids == ["101", "102", "103"]  # duplicate TSV id 102 dropped (first kept)
    assert d.texts == ["一个男人在骑车", "两只狗在草地上"]
    assert d.text_ids == ["1", "2"]
    assert d.text_to_images == [[0], [1, 2]] and d.image_to_texts == [[0], [1], [1]]
    assert d.stats == {"skipped_lines": 0, "duplicates": 2, "empty_texts": 1}
    # URL-safe base64 and PNG both decode; the first copy of the duplicate id wins (colour 1)
    assert d.load_image(1).getpixel((0, 0)) == pytest.approx((30, 200, 30), abs=6)
    assert d.load_image(2).getpixel((0, 0)) == (30, 30, 200)


def test_muge_old_keys_and_hidden_test(tmp_path, fx):
    fx.build_cclip(tmp_path / "MUGE", split="valid", old_keys=True)
    fx.build_cclip(tmp_path / "MUGE", split="test", old_keys=True, hidden=True)
    d = ds.load_dataset("muge", tmp_path)
    assert d.split == "valid" and d.directions == ("t2i",)
    assert d.texts == ["红色连衣裙", "蓝色背包"] and d.text_to_images == [[0], [1, 2]]
    t = ds.load_dataset("muge", tmp_path, split="test")
    assert t.text_to_images == [[], []] and t.summary()["texts_without_image"] == 2
    assert ds.load_dataset("muge", tmp_path, split="val").split == "val"  # alias for valid


def test_flickr30k_cn_raw_strips_tags(tmp_path, fx):
    root = fx.build_flickr_cn_raw(tmp_path)
    d = ds.load_dataset("flickr30k-cn", root)
    assert d.texts == ["一个男人在骑自行车", "男人骑车", "两只狗在草地上", "A dog在跑"]
    assert d.text_to_images == [[0], [0], [1], [1]]


def test_aic_icc_retrieval_and_caption(tmp_path, fx):
    root = fx.build_aic(tmp_path)
    d = ds.load_dataset("aic-icc", root)
    assert d.split == "validation" and d.image_ids == ["a1.jpg", "b2.jpg", "c3.jpg"]
    assert d.texts[:3] == ["图0的第一句", "图0的第二句", "图0的第三句"]
    assert len(d.texts) == 8 and d.text_to_images[3:5] == [[1], [1]] and d.text_to_images[-1] == [2]
    assert d.stats == {"skipped_lines": 0, "duplicates": 1, "empty_texts": 1}
    sub = ds.load_dataset("aic-icc", root, num_images=2)
    assert sub.image_ids == ["a1.jpg", "b2.jpg"] and len(sub.texts) == 5
    c = ds.load_dataset("aic-icc-caption", root, split="val")
    assert isinstance(c, ds.CaptionData)
    assert c.references[1] == ["图1的第一句", "图1的第二句"] and len(c.references) == 3
    assert c.load_image(0).size == (12, 9)


def test_aic_bad_json_names_line(tmp_path, fx):
    root = fx.build_aic(tmp_path)
    ann = next((root / fx.AIC_DIR).glob("*.json"))
    ann.write_text('[\n {"image_id": "a.jpg",\n  "caption": [}\n]', encoding="utf-8")
    with pytest.raises(ds.DatasetFormatError, match=r"annotations_20170910\.json:3: invalid JSON"):
        ds.load_dataset("aic-icc", root)


def test_elevater_and_imagenet(tmp_path, fx):
    fx.build_elevater(tmp_path)
    d = ds.load_dataset("elevater-cn/cifar-10", tmp_path)
    assert isinstance(d, ds.ClassificationData)
    assert d.classnames == ["飞机", "汽车", "鸟"]  # BOM + CRLF
    assert d.image_ids == ["test/0/a.jpg", "test/0/b.png", "test/2/c.jpg"] and d.labels == [0, 0, 2]
    assert d.templates[0] == "{}的照片。" and all("{}" in t for t in d.templates)
    assert d.prompts(2)[0] == "鸟的照片。"
    assert d.load_image(1).mode == "RGB"
    # the dataset folder itself as root
    assert ds.load_dataset("elevater-cn/cifar-10", tmp_path / "cifar-10").labels == [0, 0, 2]
    inet = tmp_path / "inet"
    fx.build_elevater(inet, sub="", padded=True)
    d = ds.load_dataset("imagenet-cn", inet)
    assert d.image_ids == ["test/000/a.jpg", "test/000/b.png", "test/002/c.jpg"] and d.labels == [0, 0, 2]
    assert len(d.templates) > len(ds.get_templates())


def test_elevater_bad_class_folder(tmp_path, fx):
    fx.build_elevater(tmp_path)
    (tmp_path / "cifar-10" / "test" / "7").mkdir()
    with pytest.raises(ds.DatasetFormatError, match=r"test/7: class index 7 outside"):
        ds.load_dataset("elevater-cn/cifar-10", tmp_path)


def test_text2image(tmp_path, fx):
    fx.build_cclip(tmp_path)
    d = ds.load_dataset("text2image-cn", tmp_path)
    assert isinstance(d, ds.TextToImageData)
    assert d.prompts == ["一个男人在骑车", "两只狗在草地上"] and d.prompt_ids == ["1", "2"]
    assert d.image_ids == ["101", "102"] and d.reference_images == [0, 1]
    assert d.load_reference(1).getpixel((0, 0)) == pytest.approx((30, 200, 30), abs=6)


def test_missing_image_error_names_path(tmp_path, fx):
    root = fx.build_flickr_cna(tmp_path)
    (root / "Flickr30k-images" / "3000.jpg").unlink()
    d = ds.load_dataset("flickr30k-cna", root)
    with pytest.raises(ds.MissingImageError, match=r"Flickr30k-images/3000\.jpg"):
        d.load_image(2)
    fx.build_cclip(tmp_path / "c")
    lines = (tmp_path / "c" / "test_texts.jsonl").read_text(encoding="utf-8-sig").splitlines()
    lines[0] = fx.jl(text_id=1, text="t", image_ids=[999])
    (tmp_path / "c" / "test_texts.jsonl").write_text("\n".join(lines), encoding="utf-8")
    d = ds.load_dataset("coco-cn", tmp_path / "c")
    assert d.image_ids[-1] == "999" and d.text_to_images[0] == [3]
    with pytest.raises(ds.MissingImageError, match=r"test_imgs\.tsv#999"):
        d.load_image(3)


def test_params_override_paths(tmp_path, fx):
    raw = fx.build_flickr_cn_raw(tmp_path / "raw")
    moved = tmp_path / "elsewhere.txt"
    (raw / "flickr30k-cn_test.txt").rename(moved)
    d = ds.load_dataset("flickr30k-cn", raw, captions=moved)
    assert len(d.texts) == 4 and d.files["annotations"] == str(moved)
    root = fx.build_r2d2(tmp_path / "r2d2")
    imgs = root / "IQR_IQM_ICR_ICM_images"
    other = tmp_path / "imgs"
    imgs.rename(other)
    with pytest.raises(ds.DatasetNotFoundError, match="image folder"):
        ds.load_dataset("icr", root)
    assert ds.load_dataset("icr", root, images=other).load_image(0).size == (12, 9)


def test_cclip_malformed_jsonl_line(tmp_path, fx):
    fx.build_cclip(tmp_path)
    with open(tmp_path / "test_texts.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"text_id": 9, "text": "x", "image_ids": "101"}\n')  # line 5: image_ids not a list
    with pytest.raises(ds.DatasetFormatError, match=r"test_texts\.jsonl:5: 'image_ids' must be a list"):
        ds.load_dataset("coco-cn", tmp_path)
    d = ds.load_dataset("coco-cn", tmp_path, lenient=True)
    assert d.stats["skipped_lines"] == 1 and len(d.texts) == 2
