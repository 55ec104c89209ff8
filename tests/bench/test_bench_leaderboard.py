"""Leaderboard exports (CSV, Markdown, CLIP_benchmark style, HTML in headless Chromium) and the PNG plot."""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from PIL import Image

from ccmb_bench.cli import main
from ccmb_bench.leaderboard import collect, columns
from ccmb_bench.results import make_result, write_result


def _res(model, dataset, split, task, metrics, created="2026-01-01T00:00:00Z", fp="abc"):
    r = make_result({"model": model, "kind": "r2d2", "fingerprint": fp}, dataset, split, task, metrics, "cpu",
                    {"evaluate_s": 1.0})
    r["created"] = created
    return r


@pytest.fixture
def results_dir(tmp_path):
    out = tmp_path / "bench"
    rec = lambda a, b: {"i2t_R@1": a, "i2t_R@5": a + 10, "i2t_R@10": a + 20, "t2i_R@1": b, "t2i_R@5": b + 10,
                        "t2i_R@10": b + 20, "MR": (a + b) / 2 + 10}
    write_result(out, _res("model-a", "flickr30k-cna", "test", "retrieval", rec(40, 30)))
    write_result(out, _res("model-b", "flickr30k-cna", "test", "retrieval", rec(60, 50)))
    write_result(out, _res("model-a", "icm", "val", "matching", {"AUC": 71.5, "accuracy": 65.0}))
    write_result(out, _res("model-b", "icm", "val", "matching", {"AUC": 80.25, "accuracy": 70.0}))
    write_result(out, _res("model-a", "muge", "valid", "retrieval",
                           {"t2i_R@1": 20.0, "t2i_R@5": 40.0, "t2i_R@10": 50.0, "MR": 36.6667}))
    # an older run of model-a on icm in another folder: the newest wins
    write_result(out / "old", _res("model-a", "icm", "val", "matching", {"AUC": 10.0}, created="2025-01-01T00:00:00Z"))
    (out / "junk.json").write_text("{not json", encoding="utf-8")
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


def test_csv_markdown_and_paper_rows(results_dir, tmp_path):
    csv_path, md = tmp_path / "lb.csv", tmp_path / "lb.md"
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--csv", str(csv_path),
                                    "--markdown", str(md), "--include-paper"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    paper = [r for r in rows if r["reference"] == "paper"]
    f30 = next(r for r in paper if r["dataset"] == "flickr30k-cn" and r["setting"] == "zero-shot")
    assert f30["model"].startswith("R2D2 ViT-L/14") and float(f30["MR"]) == 85.6 and float(f30["t2i_R@1"]) == 60.9
    muge_cc = next(r for r in paper if r["dataset"] == "muge" and r["model"].startswith("Chinese-CLIP"))
    assert float(muge_cc["MR"]) == 78.8
    assert len([r for r in rows if r["reference"] == ""]) == 5
    text = md.read_text(encoding="utf-8")
    assert "## flickr30k-cna" in text and "| test | retrieval | model-b |" in text
    assert "## muge" in text and "paper" in text


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


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_html_renders_in_headless_chromium(results_dir, tmp_path):
    page = tmp_path / "lb.html"
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--html", str(page),
                                    "--include-paper", "--title", "Test board"])
    assert res.exit_code == 0, res.output
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html  # no CDN
    browser = find_chromium()
    if browser is None:
        if os.environ.get("CCMB_NO_BROWSER") == "1":
            return  # explicitly allowed: static checks above only
        pytest.fail("chromium not found on PATH: install it (apt-get update && apt-get install -y chromium) "
                    "or set CCMB_NO_BROWSER=1 to accept static checks only")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    dom = proc.stdout
    assert 'data-rendered="1"' in dom, proc.stderr[-2000:]
    assert '<table id="leaderboard">' in dom
    assert dom.count('<tr data-model="') == 5 + 13  # ours + paper reference rows, built by the script
    assert '<tr data-model="model-b" data-dataset="flickr30k-cna"' in dom
    assert 'class="reference"' in dom and "R2D2 ViT-L/14 (250M)" in dom
    assert "<td>80.25</td>" in dom  # model-b AUC on icm, formatted by the script
    # one chart per (dataset, split, task) with a main metric; a bar per row that has it (two paper rows
    # publish T2I recalls only, no MR)
    assert dom.count("<svg") == 5 and dom.count('class="bar"') == 5 + 11
    assert 'data-dataset="muge"' in dom
    # the table sorts (deep link = what a header click does): AUC descending, filtered to icm
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile2'}",
         "--dump-dom", page.as_uri() + "#sort=AUC&dir=asc&filter=icm"], capture_output=True, text=True, timeout=90)
    table = proc.stdout.split('<table id="leaderboard">')[1].split("</table>")[0]
    order = [chunk.split('"')[0] for chunk in table.split('<tr data-model="')[1:]]
    assert order == ["model-a", "model-b"], order  # 71.5 before 80.25 ascending; collect() order is b, a
    assert 'class="sorted-asc"' in table


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
