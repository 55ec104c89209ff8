"""Rank groups (paired bootstrap on the per-query results, 5 %, Holm-corrected, exact ties one group) on the
leaderboard and in ``ccmb-bench compare`` with more than two runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ccmb_bench import bootstrap as boot
from ccmb_bench import groups as grp
from ccmb_bench.cli import main
from ccmb_bench.leaderboard import collect, overview, to_markdown

from lb_helpers import matching_pq, retrieval_pq, write_with_per_query


def test_holm_adjustment():
    adj = grp.holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and np.isnan(adj[4])
    assert grp.holm([]) == [] and grp.holm([0.5]) == [0.5] and grp.holm([0.9, 0.9]) == [1.0, 1.0]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """ICM-like pairs: a strong run, a close second, an exact copy of the strong one, a weak run; and the
    demo's case: two runs about 5 AUC points apart on 100 pairs (not separable)."""
    out = tmp_path_factory.mktemp("groups")
    rng = np.random.default_rng(0)
    strong = matching_pq(rng, 600, 2.0)
    score = strong["pairs"]["score"].copy()
    swap = rng.choice(600, 8, replace=False)
    score[swap] = score[swap[::-1]]  # a few pairs scored differently: a small, random difference
    close = {"pairs": dict(strong["pairs"], score=score)}
    weak = {"pairs": dict(strong["pairs"], score=rng.normal(0, 1, 600) + 0.3 * strong["pairs"]["label"])}
    write_with_per_query(out / "strong", "strong", "icm", "val", "matching", strong)
    write_with_per_query(out / "close", "close", "icm", "val", "matching", close)
    write_with_per_query(out / "copy", "copy", "icm", "val", "matching", strong)
    write_with_per_query(out / "weak", "weak", "icm", "val", "matching", weak)
    # a strict run is ranked on its own, a fine-tuned run in its own block
    write_with_per_query(out / "strict", "strict-run", "icm", "val", "matching", weak, protocol="strict")
    write_with_per_query(out / "ft", "ft-run", "icm", "val", "matching", weak, setting="fine-tuned")
    # the demo: AUC 52 vs 47 on ~100 pairs
    rng = np.random.default_rng(3)
    label = rng.integers(0, 2, 100)
    pairs = lambda s: {"pairs": {"score": s, "label": label.astype(np.int8),  # noqa: E731
                                 "query": np.array([f"line{k}" for k in range(100)])}}
    a = rng.normal(0, 1, 100) + 0.1 * label
    b = rng.normal(0, 1, 100) - 0.05 * label
    write_with_per_query(out / "demo-a", "trained", "iqm", "val", "matching", pairs(a))
    write_with_per_query(out / "demo-b", "untrained", "iqm", "val", "matching", pairs(b))
    return out


def test_groups_on_the_leaderboard(board):
    rows = {(r["model"], r["dataset"]): r for r in collect(board) if not r["reference"]}
    g = {m: rows[(m, "icm")]["group"] for m in ("strong", "close", "copy", "weak")}
    assert g == {"strong": 1, "close": 1, "copy": 1, "weak": 2}
    # one of the two identical runs leads, the other joins it with p = 1 (the same per-query scores)
    assert {rows[(m, "icm")].get("group_p_holm") for m in ("copy", "strong")} == {None, 1.0}
    assert rows[("close", "icm")]["group_leader"] in ("strong", "copy")
    assert rows[("close", "icm")]["group_p_holm"] > 0.05
    # the strict run and the fine-tuned run are alone in their comparison: no group
    assert rows[("strict-run", "icm")]["group"] == "" and rows[("ft-run", "icm")]["group"] == ""
    assert rows[("ft-run", "icm")]["block"] == "fine-tuned"
    # the demo's pair: 5 AUC points apart, not separable: both in the top group (the old star marked one)
    a, b = rows[("trained", "iqm")], rows[("untrained", "iqm")]
    assert abs(a["AUC"] - b["AUC"]) > 3 and a["group"] == b["group"] == 1


def test_groups_in_markdown_and_overview(board):
    rows = collect(board)
    text = to_markdown(rows)
    assert "★" not in text
    icm = text.split("## icm / val — matching")[1].split("\n## ")[0]
    assert icm.count(" G1**") == 3 and icm.count(" G2") == 1
    cols, blocks = overview(rows)
    zs = {ln["model"]: ln for ln in blocks[0]["lines"]}
    col = next(c for c in cols if c[0] == "icm")
    assert zs["weak"]["cells"][col]["group"] == 2 and "Holm-adjusted p" in zs["close"]["cells"][col]["group_text"]
    assert [b["block"] for b in blocks] == ["zero-shot", "fine-tuned"]


def test_exact_ties_share_a_group_even_untested(tmp_path):
    rng = np.random.default_rng(1)
    pq = matching_pq(rng, 300, 1.0)
    write_with_per_query(tmp_path / "a", "a", "icm", "val", "matching", pq)
    write_with_per_query(tmp_path / "b", "b", "icm", "val", "matching", matching_pq(rng, 300, 0.0))
    # a run without per-query results that ties b exactly: b's group; one that ties nobody: untested
    from ccmb_bench.results import write_result

    from lb_helpers import res

    b_auc = next(r for r in collect(tmp_path) if r["model"] == "b")["AUC"]
    write_result(tmp_path / "c", res("c", "icm", "val", "matching", {"AUC": b_auc}))
    write_result(tmp_path / "d", res("d", "icm", "val", "matching", {"AUC": 10.0}))
    groups = {r["model"]: (r["group"], r.get("group_note", "")) for r in collect(tmp_path) if not r["reference"]}
    assert groups["a"][0] == 1 and groups["b"][0] == 2
    assert groups["c"] == (2, "exact tie") and groups["d"] == ("", "no per-query results: not tested")


def test_groups_are_calibrated_and_have_power():
    """Under the null (three runs drawn alike around shared query difficulty) the runs are split into more than
    one group in about 5 % of trials or less (Holm); a clear shift is separated almost always."""
    stat = boot.statistic_for("retrieval", {"ks": [1, 5, 10]})
    rng = np.random.default_rng(7)

    def split(shift):
        base = rng.integers(0, 30, 300)
        pqs = [retrieval_pq(np.maximum(0, base + rng.integers(-3, 4, 300) + (shift if k == 2 else 0)))
               for k in range(3)]
        joint = grp.joint_bootstrap(stat, pqs, 300, int(rng.integers(1 << 30)))
        ranking = grp.rank_groups([p["MR"] for p in joint.points], joint, [0, 1, 2], "MR")
        return len({g.group for g in ranking.groups}) > 1

    assert np.mean([split(0) for _ in range(80)]) <= 0.1
    assert np.mean([split(4) for _ in range(20)]) >= 0.9


def test_compare_many_runs_prints_the_pairwise_table(board):
    res = CliRunner().invoke(main, ["compare", str(board / "strong"), str(board / "close"), str(board / "weak"),
                                    "--bootstrap", "500"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "icm/val matching [official/1]" in out and "Holm-corrected" in out
    assert "R1" in out and "R2" in out and "R3" in out and "(row minus column" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  R") and "group" in ln}
    assert "group 1" in lines["R1"] and "group 1" in lines["R2"] and "group 2" in lines["R3"]
    res = CliRunner().invoke(main, ["compare", str(board / "strong"), str(board / "close"), str(board / "weak"),
                                    "--json"])
    tables = json.loads(res.output)
    assert len(tables) == 1 and tables[0]["main_metric"] == "AUC"
    pairs = {(p["a"], p["b"]): p for p in tables[0]["pairs"]["AUC"]}
    assert set(pairs) == {(0, 1), (0, 2), (1, 2)}
    assert pairs[(0, 2)]["p_holm"] <= 0.05 < pairs[(0, 1)]["p_holm"]
    assert all(p["p_holm"] >= p["p_value"] for p in pairs.values())
    assert [r["group"] for r in tables[0]["runs"]] == [1, 1, 2]
    # three runs of different protocols are refused, naming the files
    res = CliRunner().invoke(main, ["compare", str(board / "strong"), str(board / "close"), str(board / "strict")])
    assert res.exit_code == 1 and "different protocols" in res.output and "strict" in res.output
    res = CliRunner().invoke(main, ["compare", str(board / "strong")])
    assert res.exit_code != 0 and "at least two runs" in res.output
