"""Leaderboard exports (CSV, Markdown, CLIP_benchmark style), result-file validation, protocols and intervals,
and the PNG plot. The HTML page in headless Chromium is in test_bench_leaderboard_html.py."""
from __future__ import annotations

import csv
import io
import json
import logging

import pytest
from click.testing import CliRunner
from PIL import Image

from ccmb_bench.cli import main
from ccmb_bench.leaderboard import (
    ResultFileError,
    best_marks,
    collect,
    columns,
    csv_safe,
    md_escape,
    overview,
    paper_rows,
    scan_results,
    to_csv,
    to_markdown,
)
from ccmb_bench.results import make_result, write_result


def _res(model, dataset, split, task, metrics, created="2026-01-01T00:00:00Z", fp="abc", protocol="official",
         ci=None, decontaminated="absent"):
    """A result as ``ccmb-bench run`` writes it; ``protocol=None`` / ``decontaminated="absent"``: an older
    result without those fields."""
    r = make_result({"model": model, "kind": "r2d2", "fingerprint": fp}, dataset, split, task, metrics, "cpu",
                    {"evaluate_s": 1.0})
    r["created"] = created
    r.pop("protocol", None), r.pop("metrics_ci95", None), r.pop("training_data", None)
    if protocol:
        r["protocol"] = {"name": protocol, "reference": "R2D2 itm_eval", "version": "1"}
    if ci:
        r["metrics_ci95"] = ci
    if decontaminated != "absent":
        r["training_data"] = {"provenance": True, "decontaminated_against": ["flickr30k-cn/test"],
                              "decontaminated": decontaminated}
    return r


def _rec(a, b):
    return {"i2t_R@1": a, "i2t_R@5": a + 10, "i2t_R@10": a + 20, "t2i_R@1": b, "t2i_R@5": b + 10,
            "t2i_R@10": b + 20, "MR": (a + b) / 2 + 10}


@pytest.fixture
def results_dir(tmp_path):
    out = tmp_path / "bench"
    write_result(out, _res("model-a", "flickr30k-cna", "test", "retrieval", _rec(40, 30)))
    write_result(out, _res("model-b", "flickr30k-cna", "test", "retrieval", _rec(60, 50)))
    write_result(out, _res("model-a", "icm", "val", "matching", {"AUC": 71.5, "accuracy": 65.0}))
    write_result(out, _res("model-b", "icm", "val", "matching", {"AUC": 80.25, "accuracy": 70.0}))
    write_result(out, _res("model-a", "muge", "valid", "retrieval",
                           {"t2i_R@1": 20.0, "t2i_R@5": 40.0, "t2i_R@10": 50.0, "MR": 36.6667}))
    # an older run of model-a on icm in another folder: the newest wins
    write_result(out / "old", _res("model-a", "icm", "val", "matching", {"AUC": 10.0}, created="2025-01-01T00:00:00Z"))
    return out


def test_collect_sorting_and_columns(results_dir):
    rows = collect(results_dir)
    assert [(r["dataset"], r["model"]) for r in rows] == [
        ("flickr30k-cna", "model-b"), ("flickr30k-cna", "model-a"), ("icm", "model-b"), ("icm", "model-a"),
        ("muge", "model-a")]
    assert next(r for r in rows if r["dataset"] == "icm" and r["model"] == "model-a")["AUC"] == 71.5
    cols = columns(rows)
    assert cols[:4] == ["dataset", "split", "task", "model"]
    assert cols.index("MR") < cols.index("i2t_R@1") < cols.index("t2i_R@1") < cols.index("AUC")
    assert collect(results_dir) == rows  # stable


def test_extra_columns_sort_like_a_reader_expects():
    rows = [{"dataset": "d", "split": "s", "task": "retrieval", "model": "m", "prerank_i2t_R@10": 3.0,
             "prerank_i2t_R@5": 2.0, "prerank_i2t_R@1": 1.0, "prerank_MR": 2.0, "top_k": 128}]
    cols = columns(rows)
    assert cols.index("prerank_i2t_R@1") < cols.index("prerank_i2t_R@5") < cols.index("prerank_i2t_R@10")


def test_csv_markdown_and_paper_rows(results_dir, tmp_path):
    csv_path, md = tmp_path / "lb.csv", tmp_path / "lb.md"
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--csv", str(csv_path),
                                    "--markdown", str(md), "--include-paper"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    paper = [r for r in rows if r["reference"] == "paper"]
    assert len(paper) == len(paper_rows()) >= 40
    f30 = next(r for r in paper if r["dataset"] == "flickr30k-cn" and r["setting"] == "zero-shot"
               and r["model"].startswith("R2D2 ViT-L/14"))
    assert float(f30["MR"]) == 85.6 and float(f30["t2i_R@1"]) == 60.9 and f30["protocol"] == "as published"
    muge_cc = next(r for r in paper if r["dataset"] == "muge" and r["model"] == "Chinese-CLIP ViT-H/14"
                   and r["setting"] == "zero-shot")
    assert float(muge_cc["MR"]) == 78.8
    assert len([r for r in rows if r["reference"] == ""]) == 5
    assert {"protocol", "decontaminated", "source", "url"} <= set(rows[0])
    text = md.read_text(encoding="utf-8")
    assert "## Overview" in text and "## flickr30k-cna / test — retrieval" in text
    assert "| model-b | official | unknown | **" in text  # best of flickr30k-cna among the runs
    assert "## muge / valid — retrieval" in text and "\\[paper\\]" in text  # link syntax escaped


def test_markdown_tables_are_compact_and_task_specific(results_dir):
    for k in range(12):  # many datasets: the overview splits into tables of at most 10 columns
        write_result(results_dir, _res("model-a", f"elevater-cn/s{k}", "test", "classification", {"top1": 50.0}))
    text = to_markdown(collect(results_dir, include_paper=True))
    heads = [line for line in text.splitlines() if line.startswith("| model | protocol |")]
    assert len(heads) == 3 + 5 + 12  # overview: 7 + 7 + 1 datasets; sections: 3 runs' + 2 paper-only + 12
    assert all(h.count("|") - 1 <= 10 for h in heads), heads  # at most 10 columns
    sections = text.split("\n## ")[1:]
    icm = next(s for s in sections if s.startswith("icm"))
    assert "AUC" in icm and "R@1" not in icm  # a matching section shows no retrieval columns
    f30 = next(s for s in sections if s.startswith("flickr30k-cn /"))
    assert "AUC" not in f30 and "i2t_R@5" in f30
    head = next(line for line in f30.splitlines() if line.startswith("| model"))
    assert head.index("i2t_R@1 ") < head.index("i2t_R@5") < head.index("i2t_R@10")


def test_clip_benchmark_format(results_dir, tmp_path):
    out = tmp_path / "cb.csv"
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--csv", str(out),
                                    "--format", "clip-benchmark"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    b = next(r for r in rows if r["model"] == "model-b" and r["dataset"] == "flickr30k-cna")
    assert b["task"] == "zeroshot_retrieval"
    assert float(b["image_retrieval_recall@5"]) == pytest.approx(0.60)  # t2i R@5 = 60
    assert float(b["text_retrieval_recall@1"]) == pytest.approx(0.60)  # i2t R@1 = 60
    assert list(rows[0])[:4] == ["dataset", "model", "pretrained", "task"]


# ---------------------------------------------------------------------------------------------- bad files
def _bad_files(out):
    good = _res("model-c", "icm", "val", "matching", {"AUC": 50.0})
    bad = dict(good, metrics="high")
    (out / "metrics_high.json").write_text(json.dumps(bad), encoding="utf-8")
    (out / "model_null.json").write_text(json.dumps(dict(good, model=None)), encoding="utf-8")
    (out / "a_list.json").write_text(json.dumps([good]), encoding="utf-8")
    (out / "junk.json").write_text("{not json", encoding="utf-8")
    (out / "ci_bad.json").write_text(json.dumps(dict(good, metrics_ci95={"AUC": "wide"})), encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps({"shards": 3}), encoding="utf-8")  # not a result: silent
    return {"metrics_high.json", "model_null.json", "a_list.json", "junk.json", "ci_bad.json"}


def test_bad_result_files_are_named_and_skipped(results_dir, caplog):
    names = _bad_files(results_dir)
    scan = scan_results(results_dir)
    assert {p.rsplit("/", 1)[-1] for p, _ in scan.bad} == names
    reasons = dict((p.rsplit("/", 1)[-1], r) for p, r in scan.bad)
    assert '"metrics" must be an object' in reasons["metrics_high.json"]
    assert '"model" must be a non-empty string' in reasons["model_null.json"]
    assert "JSON list" in reasons["a_list.json"]
    with caplog.at_level(logging.WARNING, logger="ccmb_bench.leaderboard"):
        rows = collect(results_dir)
    assert len(rows) == 5  # the valid ones
    for name in names:
        assert any(name in rec.getMessage() for rec in caplog.records), name
    with pytest.raises(ResultFileError) as info:
        collect(results_dir, strict=True)
    assert all(name in str(info.value) for name in names)


def test_bad_result_files_from_the_cli(results_dir, tmp_path):
    names = _bad_files(results_dir)
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--csv", str(tmp_path / "x.csv")])
    assert res.exit_code == 0 and res.exception is None, res.output
    assert all(n in res.output for n in names)  # the warnings (stderr is in the output)
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--strict"])
    assert res.exit_code == 1 and "Error:" in res.output and "Traceback" not in res.output
    assert "metrics_high.json" in res.output and "a_list.json" in res.output


def test_per_query_json_list_named_by_a_result_is_not_a_bad_file(tmp_path):
    out = tmp_path / "b"
    r = _res("m", "icm", "val", "matching", {"AUC": 60.0})
    r["per_query_file"] = "per_query/m_icm.json"
    path = write_result(out, r)
    (path.parent / "per_query").mkdir()
    (path.parent / "per_query" / "m_icm.json").write_text("[1, 2, 3]", encoding="utf-8")
    assert scan_results(out).bad == [] and len(collect(out)) == 1


# ---------------------------------------------------------------------------------------------- protocols
@pytest.fixture
def protocol_dir(tmp_path):
    out = tmp_path / "p"
    write_result(out / "1", _res("model-a", "flickr30k-cn", "test", "retrieval", _rec(40, 30), protocol="official",
                                 ci={"MR": [42.0, 48.0]}, decontaminated=True))
    write_result(out / "2", _res("model-b", "flickr30k-cn", "test", "retrieval", _rec(50, 40), protocol="official",
                                 ci={"MR": [52.5, 57.5]}, decontaminated=False))
    # model-c is best overall but under another protocol: it is never ranked against the official rows
    write_result(out / "3", _res("model-c", "flickr30k-cn", "test", "retrieval", _rec(70, 60), protocol="strict"))
    write_result(out / "4", _res("model-d", "flickr30k-cn", "test", "retrieval", _rec(65, 60), protocol="strict"))
    write_result(out / "5", _res("model-a", "icm", "val", "matching", {"AUC": 70.0}, protocol="official"))
    # the same model and checkpoint under two protocols stays two rows
    write_result(out / "6", _res("model-b", "flickr30k-cn", "test", "retrieval", _rec(51, 41), protocol="strict"))
    return out


def test_best_is_marked_only_within_a_protocol(protocol_dir):
    rows = [r for r in collect(protocol_dir, include_paper=True) if r["dataset"] == "flickr30k-cn"]
    # runs first, grouped by protocol (the order never ranks one protocol against another), then references
    assert [(r["model"], r["protocol"]) for r in rows if not r["reference"]] == [
        ("model-b", "official"), ("model-a", "official"), ("model-c", "strict"), ("model-d", "strict"),
        ("model-b", "strict")]
    assert all(r["reference"] for r in rows[5:])
    marks = dict(((r["model"], r["protocol"]), m) for r, m in zip(rows, best_marks(rows, "MR")) if m)
    assert marks == {("model-b", "official"): True, ("model-c", "strict"): True}  # never a paper row
    cols, lines = overview(collect(protocol_dir, include_paper=True))
    assert [c[0] for c in cols] == ["flickr30k-cn", "icm"]  # reference rows stay in their sections
    by = {(ln["model"], ln["protocol"]): ln for ln in lines}
    assert len(by) == 5 and by[("model-a", "official")]["cells"][cols[0]] == (45.0, (42.0, 48.0), False)
    assert by[("model-b", "official")]["cells"][cols[0]][2] is True
    assert by[("model-a", "official")]["cells"][cols[1]][2] is False  # a lone run is nobody's best
    assert by[("model-b", "official")]["decontaminated"] == "no"
    assert by[("model-a", "official")]["decontaminated"] == "mixed"  # yes on flickr, unknown on icm
    assert by[("model-c", "strict")]["decontaminated"] == "unknown"


def test_markdown_shows_protocols_intervals_and_decontamination(protocol_dir):
    text = to_markdown(collect(protocol_dir))
    assert "| model-a | official | mixed | 45.00 (42.0–48.0) |" in text
    assert "| model-b | official | no | **55.00 (52.5–57.5)** |" in text
    assert "| model-c | strict | unknown | **75.00** |" in text
    sec = text.split("## flickr30k-cn / test — retrieval")[1]
    assert "Protocols: official, strict." in sec and "| model-a | official | yes | 45.00 (42.0–48.0) |" in sec


def test_csv_keeps_intervals_and_protocols(protocol_dir):
    rows = list(csv.DictReader(io.StringIO(to_csv(collect(protocol_dir)))))
    a = next(r for r in rows if r["model"] == "model-a" and r["dataset"] == "flickr30k-cn")
    assert (a["MR_ci95_lo"], a["MR_ci95_hi"], a["protocol"], a["decontaminated"]) == ("42.0", "48.0", "official",
                                                                                      "yes")
    assert len([r for r in rows if r["model"] == "model-b"]) == 2


# ---------------------------------------------------------------------------------------------- escaping
def test_csv_neutralises_formula_prefixes(tmp_path):
    out = tmp_path / "b"
    for k, name in enumerate(["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcr", "ok-name"]):
        write_result(out / str(k), _res(name, "icm", "val", "matching", {"AUC": 50.0 + k, "delta": -1.5}))
    text = to_csv(collect(out))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    models = sorted(r["model"] for r in rows)
    assert models == sorted(["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2+3", "'@SUM(A1)", "'\tcmd", "'\rcr",
                             "ok-name"])
    assert all(r["delta"] == "-1.5" for r in rows)  # numbers stay numbers
    assert csv_safe(-1.5) == -1.5 and csv_safe("a=b") == "a=b"


def test_markdown_escapes_html_and_table_syntax(tmp_path):
    out = tmp_path / "b"
    write_result(out, _res("<img src=x onerror=alert(1)>|x", "<svg onload=alert(1)>", "val", "matching",
                           {"AUC": 50.0}))
    text = to_markdown(collect(out), title="<script>alert(1)</script>")
    assert "<img" not in text and "<svg" not in text and "<script" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;\\|x" in text and "&lt;svg onload=alert(1)&gt;" in text
    assert md_escape("[a](javascript:x)") == "\\[a\\](javascript:x)"


# ---------------------------------------------------------------------------------------------- reference rows
def test_paper_rows_record_source_and_protocol():
    data = json.loads((__import__("ccmb_bench.leaderboard", fromlist=["PAPER_FILE"]).PAPER_FILE).read_text("utf-8"))
    seen = set()
    for r in data["rows"]:
        assert r["dataset"] in {"flickr30k-cn", "coco-cn", "muge"} and r["task"] == "retrieval"
        assert r["split"] == ("valid" if r["dataset"] == "muge" else "test")
        assert r["setting"] in {"zero-shot", "fine-tuned"} and r["protocol"] == "as published"
        assert r["source"] and r["url"].startswith("https://")
        assert all(0 <= v <= 100 for v in r["metrics"].values()) and r["metrics"]
        m = r["metrics"]
        recalls = [m[k] for k in m if "_R@" in k]
        if "MR" in m and len(recalls) in (3, 6):  # MR is the mean of the recalls (published or computed)
            assert m["MR"] == pytest.approx(sum(recalls) / len(recalls), abs=0.06), r["model"]
        key = (r["model"], r["dataset"], r["setting"])
        assert key not in seen, key
        seen.add(key)
    # spot checks against ../shared/facts/reference_results.md
    rows = {(r["model"], r["dataset"], r["setting"]): r["metrics"] for r in data["rows"]}
    assert rows[("Chinese-CLIP ViT-H/14", "flickr30k-cn", "zero-shot")]["i2t_R@1"] == 81.6
    assert rows[("ZH-CLIP L/14", "coco-cn", "zero-shot")]["t2i_R@10"] == 95.4
    assert rows[("Wukong ViT-L", "muge", "fine-tuned")] == {"t2i_R@1": 52.7, "t2i_R@5": 77.9, "t2i_R@10": 85.6,
                                                            "MR": 72.1}


def test_plot_png(results_dir, tmp_path):
    out = tmp_path / "recall.png"
    res = CliRunner().invoke(main, ["plot", "--results", str(results_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    img = Image.open(out)
    assert img.format == "PNG" and img.width > 400
    colors = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (31, 119, 180) in colors and (255, 127, 14) in colors  # two models' lines
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["plot", "--results", str(empty), "--out", str(tmp_path / "x.png")])
    assert res.exit_code != 0 and "no retrieval results" in res.output


def test_two_checkpoints_of_one_name_are_two_overview_lines(tmp_path):
    out = tmp_path / "b"
    write_result(out, _res("r2d2-vitb16", "icm", "val", "matching", {"AUC": 70.0}, fp="1111aaaa2222"))
    write_result(out, _res("r2d2-vitb16", "icm", "val", "matching", {"AUC": 75.0}, fp="3333bbbb4444"))
    _, lines = overview(collect(out))
    assert sorted(ln["model"] for ln in lines) == ["r2d2-vitb16 [1111aaaa]", "r2d2-vitb16 [3333bbbb]"]
