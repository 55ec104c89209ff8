"""Conformance: ``ccmb-bench run --protocol official`` against independent re-implementations of the reference
evaluations (R2D2, Chinese-CLIP, CLIP_benchmark), and ``--protocol strict`` against today's rules, on fixtures
with repeated texts, repeated lines, repeated ``<id>#<k>``, shared captions, exact ties and queries without
positives (see tests/bench/protocol_fixtures.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ccmb_bench.metrics import classification_from_ranks, classification_ranks, query_ranks
from ccmb_bench.options import RunOptions
from ccmb_bench.runner import run

from protocol_fixtures import (CCLIP_IDS, GridAdapter, build_all, clip_benchmark_classification, cclip_retrieval,
                               grid_score, merge_pairs, r2d2_itm_eval, r2d2_matching, r2d2_read_flickr, r2d2_read_itr,
                               r2d2_retrieval, sklearn_roc_auc, strict_retrieval)

RECALLS = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "MR"]
DATASETS = ["iqr", "icm", "flickr30k-cna", "coco-cn"]


def r2d2_index(fn: str) -> int:
    return int(fn[1:])


def flickr_index(fn: str) -> int:
    return int(fn) - 1000


@pytest.fixture(scope="module")
def conf_root(tmp_path_factory) -> Path:
    return build_all(tmp_path_factory.mktemp("conformance"))


@pytest.fixture(scope="module")
def runs(conf_root, tmp_path_factory):
    """{protocol: {dataset: result}} from ccmb-bench's run API with the score-grid model."""
    import ccmb_bench.runner as runner

    out = {}
    original = runner.load_adapter
    runner.load_adapter = lambda *a, **k: GridAdapter()
    try:
        for protocol in ("official", "strict"):
            folder = tmp_path_factory.mktemp(f"out_{protocol}")
            opts = RunOptions(root=conf_root, output=folder, device="cpu", batch_size=7, protocol=protocol,
                              bootstrap=200, cache=False)
            paths = run("grid", DATASETS, opts)
            out[protocol] = {json.loads(p.read_text(encoding="utf-8"))["dataset"]:
                             dict(json.loads(p.read_text(encoding="utf-8")), _path=str(p)) for p in paths}
    finally:
        runner.load_adapter = original
    return out


def assert_same(got, want, keys):
    for k in keys:
        if want[k] != want[k]:  # NaN in the reference (CLIP_benchmark's top-5 of fewer than 5 classes)
            assert got[k] != got[k], f"{k}: ccmb {got[k]} vs reference NaN"
            continue
        assert abs(got[k] - want[k]) <= 1e-9, f"{k}: ccmb {got[k]} vs reference {want[k]}"


# ------------------------------------------------------------------------------------------ official

def test_official_iqr_is_r2d2_itm_eval(runs, conf_root):
    ref = r2d2_retrieval(*r2d2_read_itr(conf_root / "IQR" / "val" / "short_itr_val.json"), image_index=r2d2_index)
    got = runs["official"]["iqr"]["metrics"]
    assert_same(got, ref, RECALLS)
    assert got["t2i_queries"] == 44 and got["i2t_queries"] == 24  # every line a query, repeats included


def test_official_flickr30k_cna_is_r2d2_itm_eval(runs, conf_root):
    path = conf_root / "Flickr30k-CNA" / "test" / "flickr30k_cna_test.txt"
    ref = r2d2_retrieval(*r2d2_read_flickr(path), image_index=flickr_index)
    got = runs["official"]["flickr30k-cna"]["metrics"]
    assert_same(got, ref, RECALLS)
    assert got["t2i_queries"] == 50


def test_official_icm_is_sklearn_roc_auc(runs, conf_root):
    ref = r2d2_matching(conf_root / "ICM" / "val" / "long_itm_val.json", r2d2_index)
    got = runs["official"]["icm"]["metrics"]
    assert_same(got, ref, ["AUC"])
    assert got["pairs"] == 39  # repeated pairs kept, each with its own label


def test_official_coco_cn_is_chinese_clip_evaluation(runs, conf_root):
    ref = cclip_retrieval(conf_root / "COCO-CN" / "test_texts.jsonl", CCLIP_IDS)
    got = runs["official"]["coco-cn"]["metrics"]
    assert_same(got, ref, RECALLS)
    assert got["t2i_queries"] == 30  # texts without images count (as misses), as in evaluation.py


def test_sklearn_reading_on_its_documented_example():
    assert sklearn_roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(75.0)  # roc_auc_score docs
    assert sklearn_roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(87.5)  # a tie counts half


# ------------------------------------------------------------------------------------------ strict

def _r2d2_pairs(path):
    return [(json.loads(l)["text"], json.loads(l)["image_path"].split("/")[-1][:-4])
            for l in open(path, encoding="utf-8")]


def test_strict_iqr_merges_texts_ties_against(runs, conf_root):
    pairs = _r2d2_pairs(conf_root / "IQR" / "val" / "short_itr_val.json")
    texts, positives = merge_pairs(pairs)
    images = list(dict.fromkeys(im for _, im in pairs))
    ref = strict_retrieval(texts, positives, images, r2d2_index)
    got = runs["strict"]["iqr"]["metrics"]
    assert_same(got, ref, RECALLS)
    assert got["t2i_queries"] == len(texts) == 8


def test_strict_flickr_keeps_first_caption_of_an_id(runs, conf_root):
    seen, texts, positives = set(), [], []
    for line in open(conf_root / "Flickr30k-CNA" / "test" / "flickr30k_cna_test.txt", encoding="utf-8"):
        key, caption = line.rstrip("\n").split("\t")
        if key in seen:
            continue
        seen.add(key)
        texts.append(caption)
        positives.append({key.split("#")[0]})
    images = list(dict.fromkeys(next(iter(p)) for p in positives))
    ref = strict_retrieval(texts, positives, images, flickr_index)
    assert_same(runs["strict"]["flickr30k-cna"]["metrics"], ref, RECALLS)


def test_strict_icm_keeps_first_label(runs, conf_root):
    labels, scores, seen = [], [], set()
    for line in open(conf_root / "ICM" / "val" / "long_itm_val.json", encoding="utf-8"):
        d = json.loads(line)
        key = (d["text"], d["image_path"])
        if key in seen:
            continue
        seen.add(key)
        labels.append(d["label"])
        scores.append(float(grid_score(r2d2_index(d["image_path"][:-4]), d["text"])))
    got = runs["strict"]["icm"]["metrics"]
    assert got["pairs"] == len(labels) < 39
    assert abs(got["AUC"] - sklearn_roc_auc(labels, scores)) <= 1e-9


def test_strict_coco_cn_raw_texts_ties_against(runs, conf_root):
    rows = [json.loads(l) for l in open(conf_root / "COCO-CN" / "test_texts.jsonl", encoding="utf-8")]
    ref = strict_retrieval([r["text"] for r in rows], [set(r["image_ids"]) for r in rows], CCLIP_IDS,
                           CCLIP_IDS.index)
    got = runs["strict"]["coco-cn"]["metrics"]
    assert_same(got, ref, RECALLS)
    assert got["t2i_queries"] == 28  # texts without images are not counted


def test_protocols_differ_on_fixtures(runs):
    for name in ("iqr", "flickr30k-cna", "coco-cn"):
        off, st = runs["official"][name]["metrics"], runs["strict"][name]["metrics"]
        assert any(abs(off[k] - st[k]) > 1 for k in RECALLS), name
    assert runs["official"]["icm"]["metrics"]["AUC"] != runs["strict"]["icm"]["metrics"]["AUC"]


# ------------------------------------------------------------------------------ result documents

def test_results_carry_protocol_intervals_and_per_query(runs):
    from ccmb_bench import bootstrap as boot
    from ccmb_bench.results import read_per_query

    for protocol, by_name in runs.items():
        for name, res in by_name.items():
            assert res["protocol"]["name"] == protocol and res["protocol"]["version"]
            assert Path(res["_path"]).name.endswith(f"__{protocol}.json")
            assert res["bootstrap"] == {"resamples": 200, "seed": 0}
            assert res["training_data"] == {"provenance": False, "decontaminated_against": [],
                                            "decontaminated": None}
            metrics = RECALLS if res["task"] == "retrieval" else ["AUC", "accuracy"]
            for m in metrics:
                lo, hi = res["metrics_ci95"][m]
                assert lo <= res["metrics"][m] + 1e-9 and res["metrics"][m] <= hi + 1e-9, (name, m)
            pq, meta = read_per_query(res)
            point = boot.point(boot.statistic_for(res["task"], meta), pq)
            for m in metrics:
                assert abs(point[m] - res["metrics"][m]) <= 1e-9, (protocol, name, m)
    assert runs["official"]["iqr"]["protocol"]["reference"].startswith("R2D2")
    assert runs["official"]["coco-cn"]["protocol"]["reference"].startswith("Chinese-CLIP")


# ------------------------------------------------------------------------------ tie orders, directly

def test_numpy_ties_are_the_argsort_order():
    rng = np.random.default_rng(0)
    for n in (5, 17, 40, 300):  # below and above numpy's insertion-sort cut-off
        s = (rng.integers(0, 4, size=(60, n)) / 4).astype(np.float32)
        pos = [sorted(set(rng.integers(0, n, size=rng.integers(1, 3)).tolist())) for _ in range(60)]
        want = [min(int(np.flatnonzero(np.argsort(row)[::-1] == c)[0]) for c in p) for row, p in zip(s, pos)]
        got = query_ranks(s, pos, n, ties="numpy", exact_below=None)
        assert got.tolist() == want


def test_first_ties_are_a_stable_descending_sort():
    rng = np.random.default_rng(1)
    n = 30
    s = (rng.integers(0, 3, size=(50, n)) / 3).astype(np.float32)
    key = rng.permutation(n)
    pos = [[int(c)] for c in rng.integers(0, n, 50)]
    got = query_ranks(s, pos, n, ties="first", order_key=key)
    for q, row in enumerate(s):
        cand = sorted(range(n), key=lambda c: key[c])  # the candidates in the reference's order
        ordered = [c for c, _ in sorted(((c, row[c]) for c in cand), key=lambda x: x[1], reverse=True)]
        assert got[q] == ordered.index(pos[q][0])


@pytest.mark.parametrize("n_classes", [3, 12])
def test_classification_is_clip_benchmark(n_classes):
    rng = np.random.default_rng(n_classes)
    logits = torch.from_numpy((rng.integers(0, 5, size=(80, n_classes)) * 20.0).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, n_classes, 80))
    ref = clip_benchmark_classification(logits, target)
    got = classification_from_ranks(classification_ranks(logits, target.tolist(), n_classes, ties="torch-topk"))
    assert_same(got, ref, ["top1", "top5", "mean_per_class_recall"])
    strict = classification_from_ranks(classification_ranks(logits, target.tolist(), n_classes))
    assert strict["top1"] <= got["top1"]  # ties against the image never help it


def test_reranked_matrices_with_fills_are_itm_eval():
    """R2D2's two-stage matrices: top-k candidates scored, every other -100 (ties among the fills)."""
    from ccmb_bench.metrics import recall_metrics, retrieval_ranks

    rng = np.random.default_rng(5)
    n_i, n_t, k = 20, 45, 12
    txt2img = {t: int(rng.integers(n_i)) for t in range(n_t)}
    img2txt = {i: [t for t in range(n_t) if txt2img[t] == i] for i in range(n_i)}
    img2txt = {i: v or [int(rng.integers(n_t))] for i, v in img2txt.items()}
    i2t = np.full((n_i, n_t), -100.0, dtype=np.float32)
    t2i = np.full((n_t, n_i), -100.0, dtype=np.float32)
    for i in range(n_i):
        cols = rng.choice(n_t, k, replace=False)
        i2t[i, cols] = (rng.integers(0, 4, k) / 4).astype(np.float32)
    for t in range(n_t):
        cols = rng.choice(n_i, k, replace=False)
        t2i[t, cols] = (rng.integers(0, 4, k) / 4).astype(np.float32)
    ref = r2d2_itm_eval(i2t, t2i, txt2img, img2txt)
    ranks = retrieval_ranks(i2t, t2i, [img2txt[i] for i in range(n_i)], [[txt2img[t]] for t in range(n_t)],
                            ties="numpy", no_positive={"i2t": "miss", "t2i": "miss"})
    assert_same(recall_metrics(ranks), ref, RECALLS)
