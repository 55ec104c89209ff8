"""Hostile or damaged annotations (issue 17 items 10 and 11): ids leading outside the image folder, missing
images named with the annotation line that references them, JSON lines nested 1,000 levels deep."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ccmb.cli import main
from ccmb.datasets import load_dataset
from ccmb.datasets.base import DatasetFormatError, MissingImageError, UnsafeImagePathError
from ccmb.datasets.imagesource import FolderImages
from ccmb.datasets.verify import verify_dataset

DEEP = "[" * 1000 + "]" * 1000


def run(*args):
    return CliRunner().invoke(main, ["datasets", *map(str, args)])


def _cna_file(root):
    return root / "Flickr30k-CNA" / "test" / "flickr30k_cna_test.txt"


def _secret(tmp_path, fx):
    """An image outside the data root that a traversing id would reach."""
    (tmp_path / "X.jpg").write_bytes(fx.image_bytes(4))


def test_flickr_id_with_dot_dot_is_refused_naming_the_line(tmp_path, fx):
    root = fx.build_flickr_cna(tmp_path / "data")
    _secret(tmp_path, fx)
    with open(_cna_file(root), "a", encoding="utf-8") as fh:
        fh.write("../../X#0\t外面的图片\n")  # line 7: Flickr30k-images/../../X.jpg is tmp_path/X.jpg
    with pytest.raises(DatasetFormatError, match=r"flickr30k_cna_test.txt:7: image '../../X': '..' leads outside"):
        load_dataset("flickr30k-cna", root)
    data = load_dataset("flickr30k-cna", root, lenient=True)
    assert "../../X" not in data.image_ids and data.stats["skipped_lines"] == 1
    report = verify_dataset("flickr30k-cna", root)
    assert not report.ok and any("flickr30k_cna_test.txt:7:" in p and "outside" in p for p in report.problems)
    res = run("convert", "flickr30k-cna", "--root", root, "--output", tmp_path / "out")
    assert res.exit_code != 0 and "flickr30k_cna_test.txt:7" in res.output
    assert not (tmp_path / "out" / "00000.tar").exists()


def test_absolute_ids_are_refused_in_aic_and_r2d2(tmp_path, fx):
    root = fx.build_aic(tmp_path / "aic")
    ann = next((root / fx.AIC_DIR).glob("caption_validation_annotations_*.json"))
    items = json.loads(ann.read_text(encoding="utf-8"))
    items.append({"image_id": str(tmp_path / "X.jpg"), "caption": ["绝对路径"]})
    ann.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="item 4: image_id .*absolute path"):
        load_dataset("aic-icc-caption", root)
    r2d2 = fx.build_r2d2(tmp_path / "r2d2")
    path = r2d2 / "ICR" / "val" / "long_itr_val.json"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(fx.jl(text="上一级", image_path="..") + "\n")  # line 8: the basename itself is '..'
    with pytest.raises(DatasetFormatError, match="long_itr_val.json:8: image '..'"):
        load_dataset("icr", r2d2)


def test_folder_images_never_leave_the_folder(tmp_path):
    images = FolderImages(tmp_path / "imgs")
    for bad in ("../x", "/etc/passwd", "a/../../x", "..\\x"):
        with pytest.raises(UnsafeImagePathError):
            images.path_of(bad)
    assert images.path_of("sub/ok") == str(tmp_path / "imgs" / "sub" / "ok.jpg")


def test_missing_image_names_the_image_and_the_annotation_line(tmp_path, fx):
    root = fx.build_flickr_cna(tmp_path)
    (root / "Flickr30k-images" / "3000.jpg").unlink()
    report = verify_dataset("flickr30k-cna", root)
    (problem,) = report.problems
    assert "flickr30k_cna_test.txt:6: missing image:" in problem and "3000.jpg" in problem
    data = load_dataset("flickr30k-cna", root)
    i = data.image_ids.index("3000")
    with pytest.raises(MissingImageError, match=r"flickr30k_cna_test.txt:6: missing image: .*3000.jpg"):
        data.load_image(i)
    r2d2 = fx.build_r2d2(tmp_path / "r2d2")
    (r2d2 / "IQR_IQM_ICR_ICM_images" / "b.jpg").unlink()
    (problem,) = verify_dataset("icm", r2d2).problems
    assert "long_itm_val.json:3: missing image:" in problem and "b.jpg" in problem


def test_missing_tsv_image_names_the_texts_line(tmp_path, fx):
    fx.build_cclip(tmp_path)
    with open(tmp_path / "test_texts.jsonl", "a", encoding="utf-8") as fh:
        fh.write(fx.jl(text_id=8, text="不在TSV里的图", image_ids=[999]) + "\n")  # line 5
    problems = verify_dataset("coco-cn", tmp_path).problems
    assert any("test_texts.jsonl:5: missing image:" in p and "test_imgs.tsv#999" in p for p in problems)


@pytest.mark.parametrize("name,build,rel", [
    ("icr", "build_r2d2", "ICR/val/long_itr_val.json"),
    ("coco-cn", "build_cclip", "test_texts.jsonl"),
])
def test_deeply_nested_json_line_is_a_located_counted_problem(tmp_path, fx, name, build, rel):
    getattr(fx, build)(tmp_path)
    path = tmp_path / rel
    n = len(path.read_bytes().splitlines())
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(DEEP + "\n")
    res = run("info", name, "--root", tmp_path, "--lenient", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["skipped_lines"] == 1
    res = run("info", name, "--root", tmp_path)
    assert res.exit_code != 0 and f"{path.name}:{n + 1}: invalid JSON: nested deeper than" in res.output
    report = verify_dataset(name, tmp_path)
    assert any(f"{path.name}:{n + 1}:" in p for p in report.problems)


def test_deeply_nested_aic_file_is_a_format_error(tmp_path, fx):
    root = fx.build_aic(tmp_path)
    ann = next((root / fx.AIC_DIR).glob("caption_validation_annotations_*.json"))
    ann.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="nested too deeply"):
        load_dataset("aic-icc-caption", root)
    assert not verify_dataset("aic-icc-caption", root).ok
