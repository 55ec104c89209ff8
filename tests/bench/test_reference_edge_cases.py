"""Issue 27, reference edge cases: ``--protocol official`` behaves as the reference code does on each of them,
or refuses with the reason where the reference fails; ``--protocol strict`` keeps its documented rules.

Each reference behaviour below was read from the upstream code (not guessed from ccmb):

- R2D2 ``data/icr_dataset.py``/``iqr_dataset.py``: ``image_path.split('/')[-1][:-4]`` identifies an image
  (``x.jpg`` and ``x.png`` are one, the first file named is loaded); ``d['text']`` is kept as written, ``""``
  included;
- R2D2 ``data/flickr30k_cna_dataset.py``: ``line.strip().split('\\t')``, image ``[0].split('#')[0]`` (no
  ``#k`` needed), caption ``[1].strip()`` (a third field ignored; no second field: ``IndexError``);
- R2D2 ``data/matching_datasets.py`` + ``train_r2d2_matching.py``: labels through ``np.array`` into int64
  (``true``/``false`` work, a string label fails), AUC by ``roc_auc_score``;
- Chinese-CLIP ``eval/data.py`` (``int(img_id)`` of the LMDB key), ``make_topk_predictions(_tr).py`` (top 10),
  ``evaluation(_tr).py`` (``read_submission`` requires exactly 10 predictions, integer ids and a prediction for
  every reference id);
- CLIP_benchmark ``zeroshot_classification.evaluate``: fewer than 5 classes: ``acc5 = float("nan")``.

The re-implementations are in protocol_fixtures.py; scores come from the seven-level grid (ties everywhere).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccmb import datasets as ds
from ccmb_bench.cli import main
from ccmb_bench.options import RunOptions
from ccmb_bench.runner import run
from ccmb_bench.tasks.views import ViewError

from protocol_fixtures import (GridAdapter, ReferenceFailure, cclip_reference_eval, image_bytes, r2d2_matching,
                               r2d2_read_flickr, r2d2_read_itr, r2d2_retrieval, sklearn_roc_auc, grid_score)

RECALLS = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "MR"]


def _jl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@pytest.fixture
def grid(monkeypatch):
    import ccmb_bench.runner as runner

    monkeypatch.setattr(runner, "load_adapter", lambda *a, **k: GridAdapter())


def evaluate(root: Path, dataset: str, protocol: str, out: Path):
    paths = run("grid", [dataset], RunOptions(root=root, output=out / protocol, device="cpu", protocol=protocol,
                                              bootstrap=50, cache=False))
    return json.loads(paths[0].read_text(encoding="utf-8"))["metrics"]


def assert_same(got, want, keys):
    for k in keys:
        assert abs(got[k] - want[k]) <= 1e-9, f"{k}: ccmb {got[k]} vs reference {want[k]}"


# ------------------------------------------------------------------------------------------------ R2D2

def _r2d2_images(root: Path, names_and_indices) -> None:
    imgs = root / "IQR_IQM_ICR_ICM_images"
    imgs.mkdir(parents=True, exist_ok=True)
    for name, index in names_and_indices:
        (imgs / name).write_bytes(image_bytes(index))


def test_r2d2_image_id_without_extension_and_empty_text(tmp_path, grid):
    """x.jpg and x.png are one image to R2D2 (the first file is loaded); an empty text is a query."""
    root = tmp_path / "data"
    _r2d2_images(root, [(f"r{i}.jpg", i) for i in range(12)] + [("r1.png", 23)])  # r1.png: another picture
    lines = [{"text": ["红色圆形", "蓝色方块", "小猫", "小狗"][i % 4] + str(i % 3), "image_path": f"images/r{i}.jpg"}
             for i in range(12)]
    lines += [{"text": "蓝天", "image_path": "r1.png"}, {"text": "", "image_path": "r2.jpg"},
              {"text": " 小猫0 ", "image_path": "r3.jpg"}]
    (root / "IQR" / "val").mkdir(parents=True)
    ann = root / "IQR" / "val" / "short_itr_val.json"
    ann.write_text(_jl(lines), encoding="utf-8")
    text, images, txt2img, img2txt = r2d2_read_itr(ann)
    assert images.count("r1") == 1 and "" in text  # the reference's reading
    ref = r2d2_retrieval(text, images, txt2img, img2txt, image_index=lambda fn: int(fn[1:]))
    got = evaluate(root, "iqr", "official", tmp_path)
    assert_same(got, ref, RECALLS)
    assert got["t2i_queries"] == 15 and got["i2t_queries"] == 12 and got["images"] == 12
    # strict: r1.png is an image of its own, the empty text is not a query
    strict = evaluate(root, "iqr", "strict", tmp_path)
    data = ds.load_dataset("iqr", root)
    assert "r1.png" in data.image_ids and strict["images"] == 13 and "" not in data.texts
    assert strict["t2i_queries"] == len(data.texts) == 14 - 1  # " 小猫0 " merged with 小猫0 once stripped


def test_r2d2_flickr_lines_without_k_and_with_a_third_field(tmp_path, grid):
    root = tmp_path / "data"
    fl = root / "Flickr30k-images"
    fl.mkdir(parents=True)
    lines = []
    for i in range(12):
        (fl / f"{1000 + i}.jpg").write_bytes(image_bytes(i))
        lines.append(f"{1000 + i}#0\t{['红色圆形', '蓝色方块', '小猫'][i % 3]}的照片")
    lines += ["1003\t一张没有编号的描述", "1004#1\t小狗\t第三个字段", "1005#1\t 小猫  "]
    (root / "Flickr30k-CNA" / "test").mkdir(parents=True)
    ann = root / "Flickr30k-CNA" / "test" / "flickr30k_cna_test.txt"
    ann.write_text("\n".join(lines) + "\n", encoding="utf-8")
    text, images, txt2img, img2txt = r2d2_read_flickr(ann)
    assert "一张没有编号的描述" in text and "小狗" in text  # image 1003 by the whole field; the 2nd field only
    ref = r2d2_retrieval(text, images, txt2img, img2txt, image_index=lambda fn: int(fn) - 1000)
    got = evaluate(root, "flickr30k-cna", "official", tmp_path)
    assert_same(got, ref, RECALLS)
    assert got["t2i_queries"] == 15
    # strict: the documented reading (the tab stays in the caption; '1003' is image 1003, text id '1003')
    data = ds.load_dataset("flickr30k-cna", root)
    assert "小狗\t第三个字段" in data.texts and "1003" in data.text_ids
    assert evaluate(root, "flickr30k-cna", "strict", tmp_path)["t2i_queries"] == 15
    # a line R2D2 cannot read (an empty caption: IndexError on split('\t')[1]) is refused, naming it
    ann.write_text("\n".join(lines + ["1006#1\t  "]) + "\n", encoding="utf-8")
    with pytest.raises(ViewError, match=r"flickr30k_cna_test\.txt:16: no caption after the tab; R2D2's reader fails"):
        evaluate(root, "flickr30k-cna", "official", tmp_path)
    assert evaluate(root, "flickr30k-cna", "strict", tmp_path)["t2i_queries"] == 15  # strict: skipped, counted


def test_r2d2_matching_labels_true_false_and_strings(tmp_path, grid):
    root = tmp_path / "data"
    _r2d2_images(root, [(f"r{i}.jpg", i) for i in range(10)])
    pairs = [{"text": ["红色圆形", "蓝色方块", "小猫"][j % 3], "image_path": f"r{j % 10}.jpg",
              "label": [True, False, 1, 0][j % 4]} for j in range(20)]
    pairs.append({"text": "", "image_path": "r3.jpg", "label": False})  # an empty text: a pair to R2D2
    (root / "ICM" / "val").mkdir(parents=True)
    ann = root / "ICM" / "val" / "long_itm_val.json"
    ann.write_text(_jl(pairs), encoding="utf-8")
    ref = r2d2_matching(ann, image_index=lambda fn: int(fn[1:]))
    got = evaluate(root, "icm", "official", tmp_path)
    assert_same(got, ref, ["AUC"])
    assert got["pairs"] == 21
    strict = evaluate(root, "icm", "strict", tmp_path)  # true/false read as 1/0; repeated pairs keep the first
    data = ds.load_dataset("icm", root)
    scores = [float(grid_score(int(data.image_ids[i][1:-4]), t)) for i, t in zip(data.pair_images, data.pair_texts)]
    assert strict["AUC"] == pytest.approx(sklearn_roc_auc(data.labels, scores), abs=1e-9)
    # a string label makes R2D2's collate fail (np.array of str -> torch int64): refused under official only
    ann.write_text(_jl(pairs + [{"text": "小狗", "image_path": "r4.jpg", "label": "1"}]), encoding="utf-8")
    with pytest.raises(ViewError, match=r"long_itm_val\.json:22: label '1': R2D2 collates"):
        evaluate(root, "icm", "official", tmp_path)
    assert evaluate(root, "icm", "strict", tmp_path)["pairs"] == 22 - 1  # "1" accepted, the empty text dropped
    res = CliRunner().invoke(main, ["run", "-m", "grid", "-d", "icm", "-r", str(root), "-o", str(tmp_path / "cli"),
                                    "--device", "cpu"])
    assert res.exit_code == 1 and "long_itm_val.json:22" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------------------------ Chinese-CLIP

def _cclip_set(root: Path, folder: str, split: str, tsv_ids, texts) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    (d / f"{split}_imgs.tsv").write_text("".join(f"{iid}\t{base64.b64encode(image_bytes(k)).decode()}\n"
                                                 for k, iid in enumerate(tsv_ids)), encoding="utf-8")
    (d / f"{split}_texts.jsonl").write_text(_jl(texts), encoding="utf-8")
    return d / f"{split}_texts.jsonl"


WORDS = ["A Red Ball", "一只“小猫”", "蓝色方块", "a red ball", "GREEN 三角"]


def test_cclip_ids_read_with_int(tmp_path, grid):
    """'007' in the TSV is image 7 to Chinese-CLIP; its LMDB order follows the bytes of '007'."""
    root = tmp_path / "data"
    tsv = ["007", "8", "10", "100", "11", "2", "20", "3", "30", "4", "5", "6"]
    texts = [{"text_id": t, "text": WORDS[t % 5] + str(t % 2), "image_ids": [[7, 8, 10, 100, 11, 2][t % 6]]}
             for t in range(14)]
    path = _cclip_set(root, "COCO-CN", "test", tsv, texts)
    ref = cclip_reference_eval(path, tsv, {iid: k for k, iid in enumerate(tsv)})
    got = evaluate(root, "coco-cn", "official", tmp_path)
    assert_same(got, ref, RECALLS)
    assert got["t2i_queries"] == 14
    # strict: ids are strings; 7 is not '007' (an image the TSV lacks): refused naming it
    with pytest.raises(ds.MissingImageError, match="7"):
        evaluate(root, "coco-cn", "strict", tmp_path)


def test_cclip_gold_missing_from_the_tsv_is_a_miss(tmp_path, grid):
    """MUGE (text-to-image): a gold id the TSV lacks, or given as a string, never matches: a miss."""
    root = tmp_path / "data"
    tsv = [str(200 + k) for k in range(12)]
    texts = [{"text_id": t, "text": WORDS[t % 5] + str(t), "image_ids": [200 + (t * 5) % 12]} for t in range(9)]
    texts.append({"text_id": 9, "text": "缺失的图片", "image_ids": [999]})
    texts.append({"text_id": 10, "text": "字符串编号", "image_ids": ["201"]})
    texts.append({"text_id": 11, "text": "一半缺失", "image_ids": [999, 203]})
    path = _cclip_set(root, "MUGE", "valid", tsv, texts)
    ref = cclip_reference_eval(path, tsv, {iid: k for k, iid in enumerate(tsv)}, directions=("t2i",))
    got = evaluate(root, "muge", "official", tmp_path)
    assert_same(got, ref, ["t2i_R@1", "t2i_R@5", "t2i_R@10", "MR"])
    assert got["t2i_queries"] == 12 and ref["t2i_R@10"] < 100.0  # the two texts count as misses
    with pytest.raises(ds.MissingImageError):  # strict: the documented rule (every gold image must exist)
        evaluate(root, "muge", "strict", tmp_path)


def test_cclip_refusals_where_its_evaluation_fails(tmp_path, grid):
    # fewer than 10 images: read_submission requires 10 predictions per text
    root = tmp_path / "few"
    tsv = [str(k) for k in range(8)]
    texts = [{"text_id": t, "text": WORDS[t % 5], "image_ids": [t % 8]} for t in range(12)]
    path = _cclip_set(root, "COCO-CN", "test", tsv, texts)
    with pytest.raises(ReferenceFailure, match="10 required"):
        cclip_reference_eval(path, tsv, {iid: k for k, iid in enumerate(tsv)})
    with pytest.raises(ViewError, match=r"test_imgs\.tsv: 8 images; Chinese-CLIP's evaluation needs 10"):
        evaluate(root, "coco-cn", "official", tmp_path)
    assert evaluate(root, "coco-cn", "strict", tmp_path)["t2i_queries"] == 12  # strict evaluates it
    # fewer than 10 texts for image-to-text
    root = tmp_path / "few_texts"
    tsv = [str(k) for k in range(12)]
    path = _cclip_set(root, "COCO-CN", "test", tsv, texts[:6])
    with pytest.raises(ReferenceFailure):
        cclip_reference_eval(path, tsv, {iid: k for k, iid in enumerate(tsv)})
    with pytest.raises(ViewError, match="6 texts; Chinese-CLIP's image-to-text evaluation needs 10"):
        evaluate(root, "coco-cn", "official", tmp_path)
    # image-to-text with a gold id the TSV lacks: evaluation_tr finds no prediction for it
    root = tmp_path / "missing_i2t"
    texts = [{"text_id": t, "text": WORDS[t % 5] + str(t), "image_ids": [t % 12]} for t in range(11)]
    texts.append({"text_id": 11, "text": "缺失", "image_ids": [999]})
    path = _cclip_set(root, "COCO-CN", "test", tsv, texts)
    with pytest.raises(ReferenceFailure, match="no prediction"):
        cclip_reference_eval(path, tsv, {iid: k for k, iid in enumerate(tsv)})
    with pytest.raises(ViewError, match=r"test_texts\.jsonl:12: image 999 .*evaluation_tr\.py"):
        evaluate(root, "coco-cn", "official", tmp_path)
    # a string text_id: evaluation.py refuses it
    root = tmp_path / "string_id"
    texts = [{"text_id": t if t else "t0", "text": WORDS[t % 5], "image_ids": [t % 12]} for t in range(12)]
    _cclip_set(root, "COCO-CN", "test", tsv, texts)
    with pytest.raises(ViewError, match=r"test_texts\.jsonl:1: text_id 't0' is not an integer"):
        evaluate(root, "coco-cn", "official", tmp_path)
    assert evaluate(root, "coco-cn", "strict", tmp_path)["t2i_queries"] == 12


# -------------------------------------------------------------------------------------- CLIP_benchmark

def test_clip_benchmark_top5_with_fewer_than_5_classes_is_nan(tmp_path):
    """Read from zeroshot_classification.evaluate; the end-to-end run is in test_bench_run (3 classes)."""
    import numpy as np
    import torch

    from ccmb_bench import bootstrap as boot
    from ccmb_bench.metrics import classification_from_ranks, classification_ranks

    from protocol_fixtures import clip_benchmark_classification

    rng = np.random.default_rng(0)
    logits = torch.from_numpy((rng.integers(0, 4, size=(60, 4)) * 25.0).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 4, 60))
    ref = clip_benchmark_classification(logits, target)
    ranks = classification_ranks(logits, target.tolist(), 4, ties="torch-topk")
    got = classification_from_ranks(ranks)
    assert np.isnan(ref["top5"]) and np.isnan(got["top5"])
    assert got["top1"] == pytest.approx(ref["top1"], abs=1e-9)  # from topk(1), as the reference
    stat = boot.statistic_for("classification", {"ks": [1, 5]})
    assert np.isnan(boot.point(stat, {"images": {**ranks, "query": np.arange(60).astype(str)}})["top5"])
    ci = boot.confidence_intervals(stat, {"images": {**ranks, "query": np.arange(60).astype(str)}}, 100)
    assert "top5" not in ci and "top1" in ci
    strict = classification_from_ranks(classification_ranks(logits, target.tolist(), 4))
    assert strict["top5"] == 100.0  # strict: the documented rule (every class within the top 5)


def test_a_sweep_skips_a_set_the_protocol_refuses_and_runs_the_others(tmp_path, monkeypatch, caplog):
    import ccmb_bench.runner as runner

    done = tmp_path / "iqr.json"
    monkeypatch.setattr(runner, "check_data", lambda names, *a: list(names))
    monkeypatch.setattr(runner, "check_model", lambda *a: None)
    monkeypatch.setattr(runner, "prepare_root", lambda *a: None)
    monkeypatch.setattr(runner, "load_adapter_or_fetch", lambda *a: GridAdapter())
    monkeypatch.setattr(runner, "training_data", lambda model: None)

    def run_one(adapter, name, opts, device, provenance):
        if name == "icr":
            raise ViewError("icr_val.jsonl:3: image 'a/../b.jpg': a path outside the image folder")
        return done

    monkeypatch.setattr(runner, "run_one", run_one)
    opts = RunOptions(root=tmp_path, output=tmp_path / "out", device="cpu", protocol="official", cache=False)
    with caplog.at_level("WARNING", logger="ccmb_bench.runner"):
        assert run("grid", ["icr", "iqr"], opts) == [done]
    assert "icr/val: skipped, the official protocol refuses the data: icr_val.jsonl:3" in caplog.text
    with pytest.raises(ViewError, match="icr_val.jsonl:3"):  # one set named: the refusal is the answer
        run("grid", ["icr"], opts)
