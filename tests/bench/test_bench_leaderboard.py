"""Leaderboard exports (CSV, Markdown, CLIP_benchmark style), result-file validation, protocols and intervals,
the published rows beside the runs, and the PNG plot. The HTML page in headless Chromium is in
test_bench_leaderboard_html.py; rank groups in test_bench_groups.py; training status in test_bench_training.py;
hostile result files in test_bench_hostile_results.py."""
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
from ccmb_bench.results import write_result

from lb_helpers import rec as _rec
from lb_helpers import res as _res


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
    rows = collect(results_dir, include_paper=False)
    assert [(r["dataset"], r["model"]) for r in rows] == [
        ("flickr30k-cna", "model-b"), ("flickr30k-cna", "model-a"), ("icm", "model-b"), ("icm", "model-a"),
        ("muge", "model-a")]
    assert next(r for r in rows if r["dataset"] == "icm" and r["model"] == "model-a")["AUC"] == 71.5
    cols = columns(rows)
    assert cols[:4] == ["dataset", "split", "task", "model"]
    assert cols.index("MR") < cols.index("i2t_R@1") < cols.index("t2i_R@1") < cols.index("AUC")
    assert collect(results_dir, include_paper=False) == rows  # stable
    # the published rows join by default, only for the datasets run (muge), after its runs, by block
    with_paper = collect(results_dir)
    assert {r["dataset"] for r in with_paper if r["reference"]} == {"muge"}
    muge = [r for r in with_paper if r["dataset"] == "muge"]
    assert muge[0]["model"] == "model-a" and all(r["reference"] == "paper" for r in muge[1:])
    blocks = [r["block"] for r in muge]
    assert blocks == sorted(blocks, key=("zero-shot", "fine-tuned").index)  # zero-shot rows, then fine-tuned


def test_extra_columns_sort_like_a_reader_expects():
    rows = [{"dataset": "d", "split": "s", "task": "retrieval", "model": "m", "prerank_i2t_R@10": 3.0,
             "prerank_i2t_R@5": 2.0, "prerank_i2t_R@1": 1.0, "prerank_MR": 2.0, "top_k": 128}]
    cols = columns(rows)
    assert cols.index("prerank_i2t_R@1") < cols.index("prerank_i2t_R@5") < cols.index("prerank_i2t_R@10")


def test_csv_markdown_and_paper_rows(results_dir, tmp_path):
    csv_path, md = tmp_path / "lb.csv", tmp_path / "lb.md"
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--csv", str(csv_path),
                                    "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    paper = [r for r in rows if r["reference"] == "paper"]
    assert len(paper) == len([r for r in paper_rows() if r["dataset"] == "muge"]) > 0  # the datasets run only
    muge_cc = next(r for r in paper if r["dataset"] == "muge" and r["model"] == "Chinese-CLIP ViT-H/14"
                   and r["setting"] == "zero-shot")
    assert float(muge_cc["MR"]) == 78.8 and muge_cc["protocol"] == "as published"
    assert muge_cc["block"] == "zero-shot" and muge_cc["training"] == "zero-shot"
    assert len([r for r in rows if r["reference"] == ""]) == 5
    assert {"protocol", "decontaminated", "training", "group", "source", "url"} <= set(rows[0])
    text = md.read_text(encoding="utf-8")
    assert "## Overview" in text and "### Zero-shot" in text and "### Fine-tuned on the evaluated set" in text
    assert "## flickr30k-cna / test — retrieval" in text and "★" not in text and "\u2605" not in text
    assert "No published numbers for flickr30k-cna/test, icm/val." in text
    overview_md = text.split("### Zero-shot")[1].split("## flickr30k-cna")[0]
    assert "Chinese-CLIP ViT-H/14 \\[paper\\]" in overview_md and "78.80" in overview_md  # beside the runs
    assert "## muge / valid — retrieval" in text and "\\[paper\\]" in text  # link syntax escaped
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--no-paper"])
    assert res.exit_code == 0 and "[paper]" not in res.output and "model-a" in res.output


def test_markdown_tables_are_compact_and_task_specific(results_dir):
    for k in range(12):  # many datasets: the overview splits into tables of at most 10 columns
        write_result(results_dir, _res("model-a", f"elevater-cn/s{k}", "test", "classification", {"top1": 50.0}))
    text = to_markdown(collect(results_dir))
    heads = [line for line in text.splitlines() if line.startswith("| model | protocol |")]
    # overview: zero-shot block 7 + 7 + 1 datasets, fine-tuned block (muge's published rows) 1; 15 sections
    assert len(heads) == 3 + 1 + 15
    assert all(h.count("|") - 1 <= 10 for h in heads), heads  # at most 10 columns
    sections = text.split("\n## ")[1:]
    icm = next(s for s in sections if s.startswith("icm"))
    assert "AUC" in icm and "R@1" not in icm  # a matching section shows no retrieval columns
    f30 = next(s for s in sections if s.startswith("flickr30k-cna /"))
    assert "AUC" not in f30 and "i2t_R@5" in f30
    head = next(line for line in f30.splitlines() if line.startswith("| model"))
    assert head.index("i2t_R@1 ") < head.index("i2t_R@5") < head.index("i2t_R@10")


def test_clip_benchmark_format(results_dir, tmp_path):
    out = tmp_path / "cb.csv"
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--csv", str(out),
                                    "--format", "clip-benchmark", "--no-paper"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    b = next(r for r in rows if r["model"] == "model-b" and r["dataset"] == "flickr30k-cna")
    assert b["task"] == "zeroshot_retrieval"
    assert float(b["image_retrieval_recall@5"]) == pytest.approx(0.60)  # t2i R@5 = 60
    assert float(b["text_retrieval_recall@1"]) == pytest.approx(0.60)  # i2t R@1 = 60
    assert list(rows[0])[:7] == ["dataset", "model", "pretrained", "task", "protocol", "protocol_detail", "training"]
    assert b["protocol"] == "official" and b["protocol_detail"] == "R2D2 itm_eval, 1"
    muge = next(r for r in rows if r["dataset"] == "muge")
    assert muge["MR"] == "0.366667"  # 36.6667 %, rounded like the other fractions


def test_protocol_detail_is_clean_and_per_task(tmp_path):
    from ccmb.datasets import get_spec
    from ccmb_bench.protocols import detail, resolve

    out = tmp_path / "b"
    for task, dataset, metrics in (("retrieval", "icr", _rec(40, 30)), ("matching", "icm", {"AUC": 60.0})):
        r = _res("m", dataset, "val", task, metrics)
        r["protocol"] = {"name": "official", "reference": "R2D2 itm_eval / sklearn roc_auc_score",
                         "version": "yuxie11/R2D2@6c9f74a"}  # as results were written before
        write_result(out, r)
    rows = {r["task"]: r for r in collect(out)}
    assert rows["retrieval"]["protocol_detail"] == "R2D2 itm_eval, yuxie11/R2D2@6c9f74a"
    assert rows["matching"]["protocol_detail"] == "sklearn roc_auc_score, yuxie11/R2D2@6c9f74a"
    for name in ("icr", "icm", "coco-cn", "imagenet-cn"):
        spec = get_spec(name)
        proto = resolve("official", spec).to_result()
        text = detail(proto, spec.task)
        assert ("roc_auc" in text) == (name == "icm") and " v" not in text and text.endswith(proto["version"])
    assert detail(resolve("strict", get_spec("icr")).to_result(), "retrieval") == "ccmb strict, ccmb-strict-1"


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
        rows = collect(results_dir, include_paper=False)
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


def test_empty_or_wrong_folder_exits_non_zero_with_one_line(tmp_path):
    """Issue 23: no silent empty page."""
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "manifest.json").write_text('{"shards": 3}', encoding="utf-8")
    (wrong / "notes.txt").write_text("hello", encoding="utf-8")
    afile = tmp_path / "a.json"
    afile.write_text("{}", encoding="utf-8")
    cases = {empty: "no JSON files", wrong: "1 JSON file(s), none a valid result", tmp_path / "nope": "no such folder",
             afile: "not a folder"}
    for folder, why in cases.items():
        for cmd in (["leaderboard", "--results", str(folder), "--html", str(tmp_path / "lb.html")],
                    ["leaderboard", "--results", str(folder)], ["plot", "--results", str(folder), "--out",
                                                                  str(tmp_path / "x.png")]):
            res = CliRunner().invoke(main, cmd)
            assert res.exit_code == 1, (cmd, res.output)
            lines = [ln for ln in res.output.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("Error: ") and why in lines[0], (cmd, res.output)
            assert str(folder) in lines[0]
    assert not (tmp_path / "lb.html").exists() and not (tmp_path / "x.png").exists()


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
    # an exact tie with model-b under the strict protocol: one group without any test
    write_result(out / "7", _res("model-e", "flickr30k-cn", "test", "retrieval", _rec(51, 41), protocol="strict"))
    return out


def test_rows_never_ranked_across_protocols(protocol_dir):
    rows = [r for r in collect(protocol_dir) if r["dataset"] == "flickr30k-cn"]
    runs = [(r["model"], r["protocol"]) for r in rows if not r["reference"]]
    # runs first (zero-shot block), grouped by protocol, then the published zero-shot rows, then fine-tuned ones
    assert runs == [("model-b", "official"), ("model-a", "official"), ("model-c", "strict"), ("model-d", "strict"),
                    ("model-b", "strict"), ("model-e", "strict")]
    assert all(r["reference"] for r in rows[6:]) and rows[6]["block"] == "zero-shot"
    assert rows[-1]["block"] == "fine-tuned"
    # without per-query files nothing is tested: no rank groups (test_bench_groups.py has them)
    assert all(r["group"] == "" and "per-query" in r["group_note"] for r in rows if not r["reference"])
    cols, blocks = overview(collect(protocol_dir))
    assert [c[0] for c in cols] == ["flickr30k-cn", "icm"]
    assert [b["block"] for b in blocks] == ["zero-shot", "fine-tuned"]
    zs = blocks[0]["lines"]
    by = {(ln["model"], ln["protocol"]): ln for ln in zs if not ln["reference"]}
    assert len(by) == 6
    a = by[("model-a", "official")]
    assert (a["cells"][cols[0]]["value"], a["cells"][cols[0]]["ci"]) == (45.0, (42.0, 48.0))
    assert by[("model-b", "official")]["decontaminated"] == "no"
    assert a["decontaminated"] == "mixed"  # yes on flickr, unknown on icm
    assert by[("model-c", "strict")]["decontaminated"] == "unknown"
    published = [ln for ln in zs if ln["reference"]]
    assert published and all(set(ln["cells"]) == {cols[0]} for ln in published)  # flickr30k-cn only
    assert all(ln["sources"] for ln in published)


def test_markdown_shows_protocols_intervals_and_decontamination(protocol_dir):
    text = to_markdown(collect(protocol_dir, include_paper=False))
    assert "| model-a | official | mixed" not in text  # the overview's third column is the training data now
    # model-a's flickr result has provenance (zero-shot, decontaminated), its icm result none (not declared)
    assert "| model-a | official | not declared / zero-shot | 45.00 (42.0–48.0) | 70.00 ? |" in text
    assert "| model-b | official | zero-shot | 55.00 (52.5–57.5) |" in text
    assert "| model-c | strict | not declared | 75.00 ? |" in text
    sec = text.split("## flickr30k-cn / test — retrieval")[1]
    assert "Protocols: official, strict." in sec and "| model-a | official | zero-shot | 45.00 (42.0–48.0) |" in sec


def test_csv_keeps_intervals_and_protocols(protocol_dir):
    rows = list(csv.DictReader(io.StringIO(to_csv(collect(protocol_dir, include_paper=False)))))
    a = next(r for r in rows if r["model"] == "model-a" and r["dataset"] == "flickr30k-cn")
    assert (a["MR_ci95_lo"], a["MR_ci95_hi"], a["protocol"], a["decontaminated"]) == ("42.0", "48.0", "official",
                                                                                      "yes")
    assert a["training"] == "zero-shot" and a["block"] == "zero-shot"
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
    from ccmb_bench.adapters import MODELS

    data = json.loads((__import__("ccmb_bench.leaderboard", fromlist=["PAPER_FILE"]).PAPER_FILE).read_text("utf-8"))
    seen = set()
    for r in data["rows"]:
        assert r["dataset"] in {"flickr30k-cn", "coco-cn", "muge"} and r["task"] == "retrieval"
        assert r["split"] == ("valid" if r["dataset"] == "muge" else "test")
        assert r["setting"] in {"zero-shot", "fine-tuned"} and r["protocol"] == "as published"
        assert r["source"] and r["url"].startswith("https://")
        assert all(0 <= v <= 100 for v in r["metrics"].values()) and r["metrics"]
        assert set(r.get("registered", [])) <= set(MODELS), r["model"]  # names a registered model
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


def test_a_run_reproducing_a_published_row_is_marked(tmp_path):
    out = tmp_path / "b"
    near = dict(_rec(77.6, 60.9), MR=85.2)  # R2D2 ViT-L/14 zero-shot on Flickr30k-CN: MR 85.6 published
    write_result(out / "a", _res("r2d2-vitl14", "flickr30k-cn", "test", "retrieval", near))
    write_result(out / "b", _res("r2d2-vitl14", "coco-cn", "test", "retrieval", dict(_rec(50, 40), MR=78.0)))
    write_result(out / "c", _res("r2d2-vitl14", "muge", "valid", "retrieval",
                                 {"t2i_R@1": 50, "t2i_R@5": 75, "t2i_R@10": 83, "MR": 69.4}, protocol="strict"))
    write_result(out / "d", _res("chinese-clip-vit-h14", "muge", "valid", "retrieval",
                                 {"t2i_R@1": 68.0, "t2i_R@5": 88.0, "t2i_R@10": 93.0, "MR": 83.0},
                                 setting="fine-tuned"))
    rows = {(r["model"], r["dataset"]): r for r in collect(out) if not r["reference"]}
    f30 = rows[("r2d2-vitl14", "flickr30k-cn")]
    assert (f30["delta_metric"], f30["delta"], f30["reproduced"]) == ("MR", -0.4, "yes")
    assert f30["published"].startswith("R2D2 ViT-L/14 (250M)") and f30["training"] == "zero-shot"
    coco = rows[("r2d2-vitl14", "coco-cn")]
    assert (coco["delta"], coco["reproduced"]) == (-2.5, "no")  # published MR 80.5
    assert "delta" not in rows[("r2d2-vitl14", "muge")]  # strict: not a reproduction
    ft = rows[("chinese-clip-vit-h14", "muge")]  # --setting fine-tuned: compared with the fine-tuned row (83.6)
    assert ft["training"] == "fine-tuned on this set" and (ft["delta"], ft["reproduced"]) == (-0.6, "yes")
    text = to_markdown(collect(out))
    assert "Δ-0.4 vs published (reproduced)" in text and "Δ-2.5 vs published" in text


# ---------------------------------------------------------------------------------------------- plot
def test_plot_png(results_dir, tmp_path):
    out = tmp_path / "recall.png"
    res = CliRunner().invoke(main, ["plot", "--results", str(results_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    img = Image.open(out)
    assert img.format == "PNG" and img.width > 400
    colors = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (31, 119, 180) in colors and (255, 127, 14) in colors  # two models' lines


def test_plot_stays_legible_with_many_series(tmp_path):
    """Issue 27: 42 series in one panel were unreadable; now every run is drawn, the published rows only the
    top N of the runs' setting, at most 10 models per panel (more panels for the same dataset, each with the
    published rows beside its runs), one legend line per model."""
    from ccmb_bench.plot import MAX_MODELS, draw_recall_chart, panels, series

    out = tmp_path / "many"
    for k in range(12):
        write_result(out / str(k), _res(f"run-{k:02d}", "flickr30k-cn", "test", "retrieval", _rec(20 + 2 * k, 10 + k)))
    rows = collect(out)
    cells = panels(series(rows, top_published=3))
    assert [name for name, _ in cells] == ["flickr30k-cn/test (1/2)", "flickr30k-cn/test (2/2)"]
    assert [len(items) for _, items in cells] == [6 + 3, 6 + 3] and MAX_MODELS == 10  # balanced small multiples
    drawn = [label for _, items in cells for label, _, _ in items]
    assert all(f"run-{k:02d} [official]" in drawn for k in range(12))
    refs = [label for label, published, _ in cells[0][1] if published]
    assert refs == [label for label, published, _ in cells[1][1] if published]  # the same reference everywhere
    assert refs[0] == "InternVL-C (InternVL-14B) [paper]"  # the best published zero-shot MR on Flickr30k-CN
    assert all(label.endswith("[paper]") for label in refs)  # zero-shot runs: zero-shot rows only
    img = draw_recall_chart(rows)
    assert img.width <= 3 * 468 + 48 and img.height < 1000
    everything = series(rows, top_published=None)["flickr30k-cn/test"]
    assert len(everything) == 12 + len([r for r in paper_rows()
                                        if r["dataset"] == "flickr30k-cn" and r["setting"] == "zero-shot"])


def test_two_checkpoints_of_one_name_are_two_overview_lines(tmp_path):
    out = tmp_path / "b"
    write_result(out, _res("r2d2-vitb16", "icm", "val", "matching", {"AUC": 70.0}, fp="1111aaaa2222"))
    write_result(out, _res("r2d2-vitb16", "icm", "val", "matching", {"AUC": 75.0}, fp="3333bbbb4444"))
    _, blocks = overview(collect(out))
    assert sorted(ln["model"] for b in blocks for ln in b["lines"]) == ["r2d2-vitb16 [1111aaaa]",
                                                                         "r2d2-vitb16 [3333bbbb]"]
