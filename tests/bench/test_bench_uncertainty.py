"""Bootstrap intervals, ``ccmb-bench compare`` and its refusals, and evaluators that refuse unknown options."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ccmb_bench import bootstrap as boot
from ccmb_bench.cli import main
from ccmb_bench.metrics import matching_metrics, recall_metrics
from ccmb_bench.options import RunOptions
from ccmb_bench.runner import run

from protocol_fixtures import GridAdapter, build_all


def _retrieval_pq(rng, n_i=40, n_t=90):
    return {"i2t": {"rank": rng.integers(-1, 30, n_i), "query": np.array([f"i{k}" for k in range(n_i)])},
            "t2i": {"rank": rng.integers(0, 30, n_t), "query": np.array([f"t{k}" for k in range(n_t)])}}


def test_point_estimates_equal_the_metrics():
    rng = np.random.default_rng(0)
    pq = _retrieval_pq(rng)
    stat = boot.statistic_for("retrieval", {"ks": [1, 5, 10]})
    want = recall_metrics({d: pq[d]["rank"] for d in pq})
    got = boot.point(stat, pq)
    for k in ("i2t_R@1", "i2t_R@10", "t2i_R@5", "MR", "i2t_mean"):
        assert got[k] == pytest.approx(want[k], abs=1e-9)
    score = rng.integers(0, 5, 300) / 4.0
    label = rng.integers(0, 2, 300)
    mpq = {"pairs": {"score": score, "label": label, "query": np.arange(300).astype(str)}}
    got = boot.point(boot.statistic_for("matching", {}), mpq)
    want = matching_metrics(score, label)
    assert got["AUC"] == pytest.approx(want["AUC"], abs=1e-9)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)


def test_weighted_auc_is_the_auc_of_the_resampled_pairs():
    rng = np.random.default_rng(1)
    score = rng.integers(0, 6, 120) / 5.0
    label = rng.integers(0, 2, 120)
    w = boot._weights(rng, 5, 120)
    vec = boot.auc_statistic(score, label, w)
    for b in range(5):
        idx = np.repeat(np.arange(120), w[b].astype(int))
        assert vec[b] == pytest.approx(matching_metrics(score[idx], label[idx])["AUC"], abs=1e-9)


def test_intervals_seeded_and_shrink_with_more_queries():
    rng = np.random.default_rng(2)
    stat = boot.statistic_for("retrieval", {"ks": [1, 5, 10]})
    small = _retrieval_pq(rng, 30, 60)
    a = boot.confidence_intervals(stat, small, 300, seed=7)
    assert a == boot.confidence_intervals(stat, small, 300, seed=7)
    assert a != boot.confidence_intervals(stat, small, 300, seed=8)
    big = {d: {k: np.tile(v, 20) for k, v in g.items()} for d, g in small.items()}
    b = boot.confidence_intervals(stat, big, 300, seed=7)
    assert (b["MR"][1] - b["MR"][0]) < (a["MR"][1] - a["MR"][0]) / 2
    assert boot.confidence_intervals(stat, small, 0) == {}


def test_classification_statistic_matches_metrics():
    from ccmb_bench.metrics import classification_from_ranks

    rng = np.random.default_rng(4)
    ranks = {"rank": rng.integers(0, 8, 200), "label": rng.integers(0, 6, 200)}
    ranks["rank_top1"] = ranks["rank"]
    want = classification_from_ranks(ranks)
    got = boot.point(boot.statistic_for("classification", {"ks": [1, 5]}), {"images": ranks})
    for k in ("top1", "top5", "mean_per_class_recall"):
        assert got[k] == pytest.approx(want[k], abs=1e-9)


# ------------------------------------------------------------------------------------------ compare

@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Results of two score-grid models (the second one's image embeddings slightly perturbed)."""
    import torch

    import ccmb_bench.runner as runner

    class Shifted(GridAdapter):
        name = "grid-b"
        fingerprint = "grid:2"

        def encode_texts(self, texts, with_hidden=False):
            out = super().encode_texts(texts, with_hidden)
            g = torch.Generator().manual_seed(0)
            return {"embeds": out["embeds"] + 0.3 * torch.rand(out["embeds"].shape, generator=g)}

    root = build_all(tmp_path_factory.mktemp("cmp_data"))
    out = tmp_path_factory.mktemp("cmp_out")
    original = runner.load_adapter
    try:
        for adapter in (GridAdapter(), Shifted()):
            runner.load_adapter = lambda *a, _ad=adapter, **k: _ad
            for protocol in ("official", "strict"):
                run(adapter.name, ["iqr", "icm"], RunOptions(root=root, output=out / adapter.name / protocol,
                                                            device="cpu", protocol=protocol, bootstrap=100))
    finally:
        runner.load_adapter = original
    return out


def _one(folder: Path, dataset: str) -> Path:
    return next(p for p in (folder / "results").glob(f"*__{dataset}__*.json"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_compare_two_results(two_models):
    a, b = _one(two_models / "grid" / "official", "iqr"), _one(two_models / "grid-b" / "official", "iqr")
    res = invoke("compare", a, b, "--bootstrap", "300", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["metric"]: r for r in json.loads(res.output)}
    assert set(rows) >= {"MR", "i2t_R@1", "t2i_R@10"}
    ra = json.loads(a.read_text(encoding="utf-8"))["metrics"]
    assert rows["MR"]["a"] == pytest.approx(ra["MR"]) and 0 < rows["MR"]["p_value"] <= 1
    same = json.loads(invoke("compare", a, a, "--json").output)
    assert all(r["diff"] == 0 and r["p_value"] == 1.0 for r in same)
    text = invoke("compare", two_models / "grid" / "official", two_models / "grid-b" / "official")
    assert text.exit_code == 0 and "icm/val" in text.output and "AUC" in text.output and "p=" in text.output


def test_compare_refuses_mismatches(two_models, tmp_path):
    off = _one(two_models / "grid" / "official", "iqr")
    res = invoke("compare", off, _one(two_models / "grid-b" / "strict", "iqr"))
    assert res.exit_code != 0 and "different protocols" in res.output and "strict" in res.output
    res = invoke("compare", off, _one(two_models / "grid-b" / "official", "icm"))
    assert res.exit_code != 0 and "different dataset" in res.output and off.name in res.output
    mixed = tmp_path / "mixed"
    shutil.copytree(two_models / "grid", mixed)  # official and strict results of one model in one folder
    res = invoke("compare", mixed, two_models / "grid-b" / "official")
    assert res.exit_code != 0 and "mixes protocols" in res.output and "__strict.json" in res.output
    res = invoke("compare", mixed, two_models / "grid-b" / "official", "--protocol", "official", "--bootstrap", "50")
    assert res.exit_code == 0 and "iqr/val retrieval [official/" in res.output and "shared queries" in res.output
    # a per-query file that belongs to another run
    copy = tmp_path / "copy"
    shutil.copytree(two_models / "grid" / "official", copy)
    mine = _one(copy, "iqr")
    other = _one(two_models / "grid-b" / "official", "iqr")
    shutil.copy(other.with_suffix(".per_query.npz"), mine.with_suffix(".per_query.npz"))
    res = invoke("compare", mine, other)
    assert res.exit_code != 0 and "another run" in res.output and mine.name in res.output


def test_compare_refuses_unrelated_queries(two_models, tmp_path):
    a = _one(two_models / "grid" / "official", "iqr")
    b_dir = tmp_path / "b"
    shutil.copytree(two_models / "grid-b" / "official", b_dir)
    b = _one(b_dir, "iqr")
    pq_file = b.with_suffix(".per_query.npz")
    with np.load(pq_file, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for k in list(arrays):
        if k.endswith("/query"):
            arrays[k] = np.array([f"elsewhere{j}" for j in range(len(arrays[k]))])
    with open(pq_file, "wb") as fh:
        np.savez(fh, **arrays)
    res = invoke("compare", a, b)
    assert res.exit_code != 0 and "do not match" in res.output and "0 shared" in res.output


def test_evaluators_refuse_unknown_options():
    from ccmb_bench.tasks import EVALUATORS

    for task, fn in EVALUATORS.items():
        with pytest.raises(TypeError):
            fn(None, None, None, batch_sise=4)  # misspelled


def test_cli_protocol_and_bootstrap_options(tmp_path, monkeypatch):
    import ccmb_bench.runner as runner

    root = build_all(tmp_path / "data")
    monkeypatch.setattr(runner, "load_adapter", lambda *a, **k: GridAdapter())
    res = invoke("run", "-m", "grid", "-d", "iqr", "-r", root, "-o", tmp_path / "o", "--protocol", "strict",
                 "--bootstrap", "0", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "[strict]" in res.output
    path = next((tmp_path / "o" / "results").glob("*__strict.json"))
    r = json.loads(path.read_text(encoding="utf-8"))
    assert r["metrics_ci95"] == {} and r["bootstrap"]["resamples"] == 0
    assert (path.parent / r["per_query_file"]).is_file()  # per-query results are kept without intervals
    res = invoke("run", "-m", "grid", "-d", "iqr", "-r", root, "--protocol", "loose")
    assert res.exit_code != 0 and "official" in res.output


def test_paired_test_is_calibrated_and_has_power():
    """Under the null (A and B drawn alike around shared query difficulty) about 5% of p-values fall below
    0.05; a shift of two ranks for every query is found almost always."""
    stat = boot.statistic_for("retrieval", {"ks": [1, 5, 10]})
    rng = np.random.default_rng(123)
    q = np.array([f"t{i}" for i in range(200)])

    def p_value(shift):
        base = rng.integers(0, 30, 200)
        a = np.maximum(0, base + rng.integers(-3, 4, 200))
        b = np.maximum(0, base + rng.integers(-3, 4, 200) + shift)
        return boot.paired_test(stat, {"t2i": {"rank": a, "query": q}}, {"t2i": {"rank": b, "query": q}}, 300,
                                int(rng.integers(1 << 30)))["MR"]["p_value"]

    null = np.array([p_value(0) for _ in range(150)])
    assert 0.01 <= (null < 0.05).mean() <= 0.11
    assert np.mean([p_value(2) < 0.05 for _ in range(30)]) >= 0.9
