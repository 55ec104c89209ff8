"""End to end: every task from the CLI on fixture datasets with tiny models of every adapter type."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ccmb import datasets as ds
from ccmb_bench.adapters import load_adapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.cli import main
from ccmb_bench.metrics import query_ranks
from ccmb_bench.protocols import STRICT
from ccmb_bench.results import make_result, write_result
from ccmb_bench.tasks import retrieval

ALL = "flickr30k-cna,muge,icr,icm,elevater-cn/shapes,aic-icc-caption,text2image-cn"


def invoke(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


def results(out: Path, model: str):
    return {(r["dataset"], r["task"]): r for r in
            (json.loads(p.read_text(encoding="utf-8")) for p in (out / "results").glob(f"{model}__*.json"))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("generated")
    for k, pid in enumerate((50, 51, 53)):  # prompts 52, 54..59 missing
        Image.new("RGB", (36, 36), (60 * k, 120, 200)).save(d / f"{pid}.png")
    return d


@pytest.mark.parametrize("kind", ["r2d2", "prd2", "cclip"])
def test_every_task_every_adapter(kind, tiny_models, bench_root, generated, tmp_path):
    model_dir = getattr(tiny_models, kind)
    out = tmp_path / "out"
    res = invoke("run", "--model", model_dir, "--dataset", ALL, "--root", bench_root, "--output", out,
                 "--device", "cpu", "--batch-size", "4", "--generated", generated)
    assert res.exit_code == 0, res.output + repr(res.exception)
    got = results(out, model_dir.name)
    assert set(got) == {("flickr30k-cna", "retrieval"), ("muge", "retrieval"), ("icr", "retrieval"),
                        ("icm", "matching"), ("elevater-cn/shapes", "classification"),
                        ("aic-icc-caption", "captioning"), ("text2image-cn", "text-to-image")}
    for r in got.values():
        assert r["model"] == model_dir.name and r["device"] == "cpu"
        assert r["checkpoint_fingerprint"] and r["versions"]["torch"] and "evaluate_s" in r["timing"]
    fl = got[("flickr30k-cna", "retrieval")]["metrics"]
    six = [fl[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert all(0 <= v <= 100 for v in six) and fl["MR"] == pytest.approx(np.mean(six))
    assert fl["t2i_R@10"] == 100.0  # 6 images: at most 5 negatives can beat a text's image
    muge = got[("muge", "retrieval")]["metrics"]
    assert "i2t_R@1" not in muge and muge["MR"] == pytest.approx(np.mean([muge[f"t2i_R@{k}"] for k in (1, 5, 10)]))
    icm = got[("icm", "matching")]["metrics"]
    assert 0 <= icm["AUC"] <= 100 and icm["pairs"] == 12
    assert icm["score"] == ("match-probability" if kind == "r2d2" else "cosine")
    cls = got[("elevater-cn/shapes", "classification")]["metrics"]
    assert cls["top5"] != cls["top5"] and cls["classes"] == 3  # 3 classes: top-5 is NaN, as in CLIP_benchmark
    assert "top5" not in got[("elevater-cn/shapes", "classification")]["metrics_ci95"]
    cap = got[("aic-icc-caption", "captioning")]["metrics"]
    assert cap["caption_source"] == "retrieval-baseline" and cap["images"] == 4
    assert 0 <= cap["BLEU-4"] <= 100 and cap["CIDEr"] >= 0
    t2i = got[("text2image-cn", "text-to-image")]["metrics"]
    assert t2i["generated"] == 3 and t2i["missing"] == 7 and t2i["frechet_distance"] >= 0
    if kind == "r2d2":
        assert fl["ranking"] == "two-stage" and "prerank_MR" in fl
    else:
        assert fl["ranking"] == "dual-encoder" and "prerank_MR" not in fl


def test_two_stage_matches_reference_and_cache(tiny_models, bench_root, tmp_path):
    adapter = load_adapter(str(tiny_models.r2d2), device="cpu")
    data = ds.load_dataset("flickr30k-cna", bench_root)
    cache = EmbeddingCache(tmp_path / "cache", adapter.name, adapter.fingerprint, data.name, data.split)
    m = retrieval.evaluate(adapter, data, cache, batch_size=4, top_k=4, rules=STRICT)
    assert cache.misses == 2 and m["top_k"] == 4
    # reference: model.rank on freshly encoded inputs, plain-loop ranks (strict ties: a tie ranks first)
    imgs = adapter.encode_images(adapter.preprocess([data.load_image(i) for i in range(data.num_images)]), True)
    txts = adapter.encode_texts(data.texts, True)
    i2t, t2i = adapter.model.rank(imgs["embeds"], imgs["hidden"], txts["embeds"], txts["hidden"], txts["mask"],
                                  top_k=4)
    assert (i2t == -100).any()  # candidates outside the top-k
    for k in (1, 5, 10):
        hits = []
        for i, pos in enumerate(data.image_to_texts):
            best = max(float(i2t[i, t]) for t in pos)
            hits.append(sum(1 for t in range(data.num_texts) if t not in pos and float(i2t[i, t]) >= best) < k)
        assert m[f"i2t_R@{k}"] == pytest.approx(100 * np.mean(hits))
    assert list(query_ranks(t2i, data.text_to_images, data.num_images)) == \
        list(query_ranks(t2i.numpy(), data.text_to_images, data.num_images))
    # second run: served from the cache, same numbers
    cache2 = EmbeddingCache(tmp_path / "cache", adapter.name, adapter.fingerprint, data.name, data.split)
    m2 = retrieval.evaluate(adapter, data, cache2, batch_size=4, top_k=4, rules=STRICT)
    assert cache2.hits == 2 and cache2.misses == 0
    assert {k: v for k, v in m2.items()} == pytest.approx(m)


@pytest.mark.parametrize("name", ["icr", "flickr30k-cna"])
def test_library_evaluator_defaults_to_the_official_protocol(tiny_models, bench_root, name):
    """Called directly, a task evaluator follows the dataset's reference evaluation as ``ccmb-bench run`` does
    by default; the strict rules only on request, or for data that is no registered dataset."""
    from ccmb_bench.protocols import evaluation_rules, resolve

    adapter = load_adapter(str(tiny_models.r2d2), device="cpu")
    data = ds.load_dataset(name, bench_root)
    spec = ds.get_spec(name)
    official = resolve("official", spec).rules
    assert evaluation_rules(data) == (official, spec.format)
    assert evaluation_rules(data, STRICT, "x") == (STRICT, "x")

    def run(**kw):
        return retrieval.evaluate(adapter, data, EmbeddingCache(None, "", "", "", ""), batch_size=4, top_k=4, **kw)
    assert run() == pytest.approx(run(rules=official, data_format=spec.format))
    data.name = "my-own-set"  # not registered: nothing official to follow
    assert evaluation_rules(data) == (STRICT, "")


def test_second_run_uses_cache_and_skip_existing(tiny_models, bench_root, tmp_path):
    out = tmp_path / "out"
    args = ("run", "-m", tiny_models.prd2, "-d", "flickr30k-cna", "-r", bench_root, "-o", out, "--device", "cpu")
    assert invoke(*args).exit_code == 0
    first = results(out, "prd2-tiny")[("flickr30k-cna", "retrieval")]
    assert first["settings"]["cache_misses"] == 2
    assert invoke(*args).exit_code == 0
    second = results(out, "prd2-tiny")[("flickr30k-cna", "retrieval")]
    assert second["settings"]["cache_hits"] == 2 and second["metrics"] == first["metrics"]
    res = invoke(*args, "--skip-existing")
    assert res.exit_code == 0 and "nothing evaluated" in res.output
    assert list((out / "cache").rglob("*.safetensors"))


def test_config_name_with_checkpoint_file(tiny_models, bench_root, tmp_path):
    res = invoke("run", "-m", "r2d2-tiny", "--checkpoint", tiny_models.r2d2 / "model.safetensors", "--tokenizer",
                 tiny_models.r2d2 / "vocab.txt", "-d", "icm", "-r", bench_root, "-o", tmp_path, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert results(tmp_path, "r2d2-tiny")[("icm", "matching")]["metrics"]["score"] == "match-probability"


def test_caption_predictions_file(tiny_models, bench_root, tmp_path):
    data = ds.load_dataset("aic-icc-caption", bench_root)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(json.dumps({"image_id": i, "caption": refs[0]}, ensure_ascii=False)
                               for i, refs in zip(data.image_ids, data.references)), encoding="utf-8")
    res = invoke("run", "-m", tiny_models.prd2, "-d", "aic-icc-caption", "-r", bench_root, "-o", tmp_path,
                 "--predictions", preds)
    assert res.exit_code == 0, res.output
    m = results(tmp_path, "prd2-tiny")[("aic-icc-caption", "captioning")]["metrics"]
    assert m["caption_source"] == "predictions" and m["BLEU-4"] == pytest.approx(100, rel=1e-6)
    assert m["unknown_predictions"] == 0
    foreign = tmp_path / "foreign.jsonl"  # predictions for another split: no image in common
    foreign.write_text('{"image_id": "t0.jpg", "caption": "x"}\n', encoding="utf-8")
    res = invoke("run", "-m", tiny_models.prd2, "-d", "aic-icc-caption", "-r", bench_root, "-o", tmp_path,
                 "--predictions", foreign)
    assert res.exit_code == 1 and "foreign.jsonl" in res.output and "none of the" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": "v0.jpg", "caption": "x"}\nnot json\n', encoding="utf-8")
    res = invoke("run", "-m", tiny_models.prd2, "-d", "aic-icc-caption", "-r", bench_root, "-o", tmp_path,
                 "--predictions", bad)
    assert res.exit_code == 1 and "bad.jsonl:2" in res.output and "Traceback" not in res.output


def test_errors_list_names_and_layouts(tiny_models, bench_root, tmp_path):
    res = invoke("run", "-m", "no-such-model", "-d", "icm", "-r", bench_root)
    assert res.exit_code != 0 and "chinese-clip-vit-b16" in res.output and "r2d2-vitl14" in res.output
    res = invoke("run", "-m", tiny_models.prd2, "-d", "no-such-set", "-r", bench_root)
    assert res.exit_code != 0 and "flickr30k-cna" in res.output
    res = invoke("run", "-m", tiny_models.prd2, "-d", "icm", "-r", tmp_path / "missing")
    assert res.exit_code != 0 and "long_itm_{split}".replace("{split}", "val") in res.output
    res = invoke("run", "-m", tiny_models.prd2, "-d", "coco-cn", "-r", tmp_path)
    assert res.exit_code != 0 and "test_texts.jsonl" in res.output  # expected layout from the registry
    res = invoke("run", "-m", "r2d2-vitl14", "-d", "icm", "-r", bench_root)
    assert res.exit_code != 0 and "github.com/yuxie11/R2D2" in res.output
    assert str(Path(tmp_path) / "ccmb_home" / "models" / "r2d2-vitl14") in res.output
    res = invoke("run", "-m", "chinese-clip-vit-b16", "--checkpoint", tmp_path / "nope", "-d", "icm", "-r", bench_root)
    assert res.exit_code != 0 and "OFA-Sys/chinese-clip-vit-base-patch16" in res.output


def test_listings():
    res = invoke("models")
    assert res.exit_code == 0
    for name in ("r2d2-vitl14", "r2d2-vitb16", "prd2-vitl14", "chinese-clip-vit-b16", "chinese-clip-vit-l14",
                 "chinese-clip-vit-l14-336", "chinese-clip-vit-h14"):
        assert name in res.output
    res = invoke("datasets", "--json")
    assert res.exit_code == 0 and {"icm", "muge", "aic-icc-caption"} <= {d["name"] for d in json.loads(res.output)}


def test_concurrent_result_writes_never_corrupt(tmp_path):
    base = make_result({"model": "m", "kind": "prd2", "fingerprint": "f"}, "icm", "val", "matching",
                       {"AUC": 1.0, "pad": "x" * 20000}, "cpu", {"evaluate_s": 0.1})
    errors = []

    def writer(n):
        for i in range(20):
            write_result(tmp_path, dict(base, metrics={"AUC": float(n * 100 + i), "pad": "x" * 20000}))

    def reader():
        for _ in range(200):
            for p in (tmp_path / "results").glob("*.json"):
                try:
                    json.loads(p.read_text(encoding="utf-8"))
                except ValueError as exc:  # pragma: no cover - the failure being tested
                    errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = list((tmp_path / "results").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["metrics"]["AUC"] >= 0


def test_registered_chinese_clip_name_from_ccmb_home(tiny_models, bench_root, tmp_path):
    import os
    import shutil

    home = Path(os.environ["CCMB_HOME"]) / "models" / "chinese-clip-vit-b16"
    shutil.copytree(tiny_models.cclip, home)
    res = invoke("run", "-m", "chinese-clip-vit-b16", "-d", "elevater-cn/shapes", "-r", bench_root, "-o", tmp_path)
    assert res.exit_code == 0, res.output
    r = results(tmp_path, "chinese-clip-vit-b16")[("elevater-cn/shapes", "classification")]
    assert r["model_kind"] == "chinese-clip" and r["metrics"]["images"] == 6


def test_setting_label_and_bad_checkpoint(tiny_models, bench_root, tmp_path):
    res = invoke("run", "-m", tiny_models.prd2, "-d", "icm", "-r", bench_root, "-o", tmp_path, "--setting", "zero-shot")
    assert res.exit_code == 0, res.output
    from ccmb_bench.leaderboard import collect

    assert [r["setting"] for r in collect(tmp_path)] == ["zero-shot"]
    # a checkpoint for another architecture fails with the loader's message, not a traceback
    res = invoke("run", "-m", "r2d2-tiny", "--checkpoint", tiny_models.prd2 / "model.safetensors", "--tokenizer",
                 tiny_models.prd2 / "vocab.txt", "-d", "icm", "-r", bench_root, "-o", tmp_path)
    assert res.exit_code == 1 and "missing" in res.output and "r2d2-tiny" in res.output
    if not torch.cuda.is_available():
        res = invoke("run", "-m", tiny_models.prd2, "-d", "icm", "-r", bench_root, "--device", "cuda")
        assert res.exit_code == 1 and "CUDA is not available" in res.output


def test_matching_streamed_equals_cached(tiny_models, bench_root, tmp_path):
    from ccmb_bench.tasks import matching

    adapter = load_adapter(str(tiny_models.r2d2), device="cpu")
    data = ds.load_dataset("icm", bench_root)
    cache = EmbeddingCache(None, "", "", "", "")
    cached = matching.evaluate(adapter, data, cache, batch_size=3)
    streamed = matching.evaluate(adapter, data, cache, batch_size=3, max_hidden_gb=0, chunk_pairs=5)
    assert cached["hidden_states"] == "cached" and streamed["hidden_states"] == "streamed"
    assert streamed["AUC"] == pytest.approx(cached["AUC"]) and streamed["accuracy"] == cached["accuracy"]
    # the scores themselves: same pairs, same probabilities
    imgs = adapter.encode_images(adapter.preprocess([data.load_image(i) for i in range(data.num_images)]), True)
    txts = adapter.encode_texts(data.pair_texts, True)
    with torch.no_grad():
        probs = adapter.model.match_prob(imgs["hidden"][torch.tensor(data.pair_images)], txts["hidden"], txts["mask"])
    from ccmb_bench.metrics import roc_auc

    assert roc_auc(probs.numpy(), data.labels) == pytest.approx(cached["AUC"], abs=1e-6)


def test_all_sweep_skips_missing_sets(tiny_models, bench_root, tmp_path):
    res = invoke("run", "-m", tiny_models.prd2, "-d", "all", "-r", bench_root, "-o", tmp_path, "--batch-size", "8")
    assert res.exit_code == 0, res.output + repr(res.exception)
    got = results(tmp_path, "prd2-tiny")
    names = {d for d, _ in got}
    assert {"icr", "iqr", "icm", "iqm", "flickr30k-cna", "muge", "aic-icc", "aic-icc-caption"} <= names
    assert "imagenet-cn" not in names and "text2image-cn" not in names  # no data / no --generated
    assert "imagenet-cn/test: skipped, data missing" in res.output  # the warning (stderr is in the output)


def test_chinese_clip_hub_name_offline_explains(bench_root, tmp_path):
    res = invoke("run", "-m", "chinese-clip-vit-l14-336", "-d", "icm", "-r", bench_root, "-o", tmp_path)
    assert res.exit_code == 1
    assert "OFA-Sys/chinese-clip-vit-large-patch14-336px" in res.output and "ccmb_home/models/chinese-clip-vit-l14-336" \
        in res.output


def test_config_directory_with_separate_checkpoint(tiny_models, bench_root, tmp_path):
    import shutil

    weights = tmp_path / "weights" / "ft.safetensors"
    weights.parent.mkdir()
    shutil.copy(tiny_models.prd2 / "model.safetensors", weights)
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    shutil.copy(tiny_models.prd2 / "config.json", cfg_dir)
    shutil.copy(tiny_models.prd2 / "vocab.txt", cfg_dir)
    res = invoke("run", "-m", cfg_dir, "--checkpoint", weights, "-d", "icm", "-r", bench_root, "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    r = results(tmp_path / "o", "cfg")[("icm", "matching")]
    direct = invoke("run", "-m", tiny_models.prd2, "-d", "icm", "-r", bench_root, "-o", tmp_path / "p")
    assert direct.exit_code == 0
    assert results(tmp_path / "p", "prd2-tiny")[("icm", "matching")]["metrics"]["AUC"] == r["metrics"]["AUC"]


def test_chinese_clip_protocol_caps_context_length(tiny_models, bench_root, tmp_path):
    """Official Chinese-CLIP evaluation keeps 52 tokens per text, also for a model that reads more."""
    from ccmb_bench.protocols import resolve
    from ccmb_bench.tasks.encode import context_length

    adapter = load_adapter(str(tiny_models.prd2), device="cpu")
    assert adapter.max_len > 52
    with context_length(adapter, 52) as capped:
        assert capped and adapter.max_len == 52
        short = adapter.encode_texts(["一" * 80])["embeds"]
    assert adapter.max_len > 52  # restored
    assert not torch.allclose(short, adapter.encode_texts(["一" * 80])["embeds"])
    data = ds.load_dataset("muge", bench_root)
    rules = resolve("official", ds.get_spec("muge")).rules
    m = retrieval.evaluate(adapter, data, EmbeddingCache(None, "m", "f", "muge", "valid"), batch_size=4,
                           rules=rules, data_format="cclip-tsv")
    assert m["context_length"] == 52 and adapter.max_len > 52
