"""Registry: names, specs, errors that list known names and print the expected layout."""
from __future__ import annotations

import pytest

from ccmb import datasets as ds

EXPECTED = {"icm": "matching", "iqm": "matching", "icr": "retrieval", "iqr": "retrieval",
            "flickr30k-cna": "retrieval", "flickr30k-cn": "retrieval", "coco-cn": "retrieval",
            "muge": "retrieval", "aic-icc": "retrieval", "aic-icc-caption": "captioning",
            "imagenet-cn": "classification", "elevater-cn/<name>": "classification",
            "text2image-cn": "text-to-image"}


def test_every_dataset_registered_with_task():
    specs = {s.name: s for s in ds.list_datasets()}
    assert {n: s.task for n, s in specs.items()} == EXPECTED
    assert specs["muge"].directions == ("t2i",) and specs["icr"].directions == ("i2t", "t2i")
    assert specs["muge"].default_split == "valid" and specs["icm"].default_split == "val"
    assert specs["flickr30k-cna"].default_split == "test" and specs["coco-cn"].default_split == "test"
    for s in specs.values():
        d = s.to_dict()
        assert d["layout"] and "{split}" not in d["layout"] and d["format"] and d["source"]


def test_get_spec_elevater_and_unknown():
    s = ds.get_spec("elevater-cn/cifar-10")
    assert s.task == "classification" and s.name == "elevater-cn/cifar-10"
    assert ds.get_spec("ICR").name == "icr"
    with pytest.raises(ds.UnknownDatasetError) as err:
        ds.get_spec("flickr8k")
    assert "flickr30k-cna" in str(err.value) and "muge" in str(err.value)


def test_missing_root_prints_layout(tmp_path):
    with pytest.raises(ds.DatasetNotFoundError) as err:
        ds.load_dataset("icr", tmp_path / "nope")
    assert "expected layout" in str(err.value) and "ICR/val/long_itr_val.json" in str(err.value)
    tmp_path.joinpath("ICR").mkdir()
    with pytest.raises(ds.DatasetNotFoundError, match="IQR_IQM_ICR_ICM_images|long_itr_val"):
        ds.load_dataset("icr", tmp_path)
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError for generic callers
        ds.load_dataset("muge", tmp_path)


def test_templates_are_data():
    t = ds.get_templates()
    assert "{}的照片。" in t and len(t) >= 5 and all(x.count("{}") == 1 for x in t)
    assert ds.get_templates("unknown-set") == t
