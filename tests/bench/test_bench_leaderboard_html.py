"""The HTML leaderboard: rendered in headless Chromium at 1280 px (overview fits, sections, charts with
interval whiskers, sorting), at 390 px (a phone: nothing cut off, tables and charts scroll in their own
containers, headers wrap between words; screenshots at both widths), the published rows and the switch that
hides them, rank groups instead of a star, and the injection regressions of issue 17 (title / dataset names /
model names never become markup)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ccmb_bench.cli import main
from ccmb_bench.html import DATA_ELEMENT, render_html, script_json
from ccmb_bench.leaderboard import paper_rows
from ccmb_bench.results import make_result, write_result

from browser import chromium, open_page
from lb_helpers import matching_pq, write_with_per_query

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _res(model, dataset, split, task, metrics, protocol="official", ci=None, decontaminated=None, fp="abc"):
    r = make_result({"model": model, "kind": "r2d2", "fingerprint": fp}, dataset, split, task, metrics, "cpu",
                    {"evaluate_s": 1.0})
    r.pop("metrics_ci95", None)
    r["protocol"] = {"name": protocol, "reference": "R2D2 itm_eval", "version": "1"}
    r["training_data"] = {"provenance": decontaminated is not None, "decontaminated_against": [],
                          "decontaminated": decontaminated}
    if ci:
        r["metrics_ci95"] = ci
    return r


def _rec(a, b):
    return {"i2t_R@1": a, "i2t_R@5": a + 10, "i2t_R@10": a + 20, "t2i_R@1": b, "t2i_R@5": b + 10,
            "t2i_R@10": b + 20, "MR": (a + b) / 2 + 10, "prerank_MR": 1.0, "top_k": 128}


@pytest.fixture
def results_dir(tmp_path):
    """Six models on every CCMB-style dataset (a wide board), two protocols, intervals, long names."""
    out = tmp_path / "bench"
    retrieval = ["flickr30k-cna", "flickr30k-cn", "coco-cn", "muge", "icr", "iqr", "aic-icc"]
    models = ["r2d2-vitl14", "prd2-vitl14", "chinese-clip-vit-h14", "chinese-clip-vit-l14-336",
              "our-pretrain-zero-250m-decontaminated-vitb16-epoch-30", "model-b"]
    for k, m in enumerate(models):
        dec = (k % 2 == 0) if k < 4 else None
        for j, d in enumerate(retrieval):
            split = {"muge": "valid", "icr": "val", "iqr": "val", "aic-icc": "validation"}.get(d, "test")
            metrics = _rec(30 + 5 * k + j, 20 + 4 * k + j)
            if d == "muge":
                metrics = {key: v for key, v in metrics.items() if not key.startswith("i2t")}
            mr = metrics["MR"]
            write_result(out / m, _res(m, d, split, "retrieval", metrics, ci={"MR": [mr - 1.5, mr + 1.25]},
                                       decontaminated=dec))
        write_result(out / m, _res(m, "icm", "val", "matching", {"AUC": 60.0 + k, "accuracy": 55.0 + k},
                                   decontaminated=dec))
        write_result(out / m, _res(m, "iqm", "val", "matching", {"AUC": 61.0 + k, "accuracy": 56.0 + k},
                                   decontaminated=dec))
        write_result(out / m, _res(m, "imagenet-cn", "test", "classification",
                                   {"top1": 40.0 + k, "top5": 70.0 + k, "mean_per_class_recall": 39.0 + k},
                                   decontaminated=dec))
    # model-b also under the strict protocol on flickr30k-cna: best there, but a separate ranking
    write_result(out / "strict", _res("model-b", "flickr30k-cna", "test", "retrieval", _rec(95, 95), protocol="strict"))
    # three runs with per-query results on IQM: rank groups (two not separable, one clearly below)
    rng = np.random.default_rng(0)
    strong = matching_pq(rng, 400, 2.0)
    score = strong["pairs"]["score"] + rng.normal(0, 0.02, 400)  # a tiny, random difference
    for name, pq in (("grouped-a", strong), ("grouped-b", {"pairs": dict(strong["pairs"], score=score)}),
                     ("grouped-c", matching_pq(rng, 400, 0.0))):
        write_with_per_query(out / name, name, "iqm", "val", "matching", pq)
    return out


def _browser():
    return chromium()


def dump_dom(url: str, profile: Path, width: int = 1280) -> str:
    proc = subprocess.run([_browser(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900",
                           "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert 'data-rendered="1"' in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def _make_page(results_dir, tmp_path, title="Test board"):
    page = tmp_path / "lb.html"
    res = CliRunner().invoke(main, ["leaderboard", "--results", str(results_dir), "--html", str(page),
                                    "--include-paper", "--title", title])
    assert res.exit_code == 0, res.output
    return page


def test_page_is_self_contained_and_data_is_inert(results_dir, tmp_path):
    html = _make_page(results_dir, tmp_path).read_text(encoding="utf-8")
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "src=" not in html  # no CDN
    assert html.count(DATA_ELEMENT[:-len("</script>")]) == 1
    data = html.split(DATA_ELEMENT[:-len("</script>")])[1].split("</script>")[0]
    assert "<" not in data and ">" not in data and "&" not in data
    assert json.loads(data)["title"] == "Test board"


def test_overview_fits_1280_and_sections_render(results_dir, tmp_path):
    page = _make_page(results_dir, tmp_path)
    dom = dump_dom(page.as_uri(), tmp_path / "profile")
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-viewport="1280"' in body
    assert 'data-overview-fits="true"' in body, body  # scrollWidth <= clientWidth of every overview box
    page_w, client_w = re.search(r'data-page-scroll="(\d+)/(\d+)"', body).groups()
    assert page_w == client_w  # the page itself never scrolls sideways
    overview = dom.split('<table class="overview" id="overview">')[1].split("</table>")[0]
    # models x datasets: 6 models (+ model-b under strict, + 3 grouped runs on iqm) x 10 dataset columns
    runs = re.findall(r'<tr data-model="([^"]+)" data-block="zero-shot">', overview)
    assert len(runs) == 10 and overview.count("<th data-dataset=") == 10
    assert '<span class="ci">' in overview and "AUC" in overview and "top1" in overview
    # the published rows stand in the overview, zero-shot and fine-tuned apart, each with its source
    blocks = re.findall(r'<tr class="block" data-block="([^"]+)">', overview)
    assert blocks == ["zero-shot", "fine-tuned"]
    published = re.findall(r'<tr data-model="([^"]+)" data-block="(zero-shot|fine-tuned)" class="reference">',
                           overview)
    assert ("Chinese-CLIP ViT-H/14", "zero-shot") in published and ("R2D2 ViT-L/14 (250M)", "fine-tuned") in published
    assert "Chinese-CLIP Results.md" in overview
    assert "No published numbers for aic-icc/validation, flickr30k-cna/test, icm/val, icr/val, imagenet-cn/test, " \
           "iqm/val, iqr/val." in dom
    # no star: rank groups, only where per-query results allow a test
    assert "\u2605" not in dom and "★" not in dom and 'class="cell best"' not in dom
    assert overview.count('class="group g1"') == 2 and overview.count('class="group"') == 1
    assert overview.count('class="cell top"') == 2
    assert "decontaminated</span>" in overview
    # one section per (dataset, split, task): its own metrics only, reference rows beside the runs
    sections = dom.split('<div class="section"')[1:]
    assert len(sections) == 10
    icm = next(s for s in sections if 'data-dataset="icm"' in s.split(">")[0])
    assert "AUC" in icm and "R@1" not in icm and "prerank" not in icm
    f30 = next(s for s in sections if 'data-dataset="flickr30k-cn"' in s.split(">")[0])
    heads = re.findall(r'<th data-col="([^"]+)"', f30)
    assert heads == ["MR", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"]
    assert 'class="reference"' in f30 and "Chinese-CLIP Results.md" in f30 and "as published" in f30
    assert "Protocols: as published, official." in f30
    # a bar chart per section with interval whiskers on the runs that have one
    assert dom.count('<svg class="chart"') == 10
    with_mr = sum(1 for r in paper_rows() if r["dataset"] == "flickr30k-cn" and "MR" in r)
    assert f30.count('class="whisker"') == 6 and f30.count('class="bar"') == 6 + with_mr


def test_switch_hides_the_published_rows(results_dir, tmp_path):
    page = _make_page(results_dir, tmp_path)
    with open_page(page.as_uri() + "#paper=0", 1280) as p:
        shown = p.evaluate("Array.from(document.querySelectorAll('tr.reference')).filter("
                           "e => e.offsetParent !== null).length")
        runs = p.evaluate("Array.from(document.querySelectorAll('#overview tr[data-model]')).filter("
                          "e => e.offsetParent !== null).length")
        bars = p.evaluate("document.querySelectorAll('.section[data-dataset=\"flickr30k-cn\"] .bar').length")
        assert shown == 0 and runs == 10 and bars == 6
        p.evaluate("document.getElementById('show-paper').click()")
        assert p.evaluate("Array.from(document.querySelectorAll('tr.reference')).filter("
                          "e => e.offsetParent !== null).length") > 20


def test_many_datasets_stack_into_matrices_that_fit(tmp_path):
    """24 ELEVATER-CN sets + ICM: the overview stacks matrices of at most 10 datasets, none scrolls."""
    out = tmp_path / "wide"
    names = [f"elevater-cn/set-with-a-long-name-{k:02d}" for k in range(24)]
    for m in range(3):
        for k, d in enumerate(names):
            write_result(out / str(m), _res(f"model-{m}", d, "test", "classification",
                                            {"top1": 100.0 - k - m, "top5": 100.0, "mean_per_class_recall": 50.0},
                                            ci={"top1": [90.0 - k - m, 100.0 - k - m]}))
        write_result(out / str(m), _res(f"model-{m}", "icm", "val", "matching", {"AUC": 99.5 - m}))
    page = _make_page(out, tmp_path)
    dom = dump_dom(page.as_uri(), tmp_path / "profile")
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-overview-fits="true"' in body, body
    tables = dom.split('<div id="overview-box">')[1].split("<h2>")[0].split('<table class="overview"')[1:]
    assert len(tables) == 3  # 25 datasets: 10 + 10 + 5
    assert [t.count("<th data-dataset=") for t in tables] == [10, 10, 5]
    assert all(t.count("<tr data-model=") == 3 for t in tables)


#: Run in the page: what is cut off (outside the viewport and not inside a scrolling container), headers whose
#: words break across lines, chart text outside its chart, the page's width.
LAYOUT_AUDIT = r"""(() => {
  const vw = window.innerWidth, out = {vw: vw, page: document.documentElement.scrollWidth, clipped: [],
                                        broken: [], chart: [], boxes: 0, scrolling: 0};
  const visible = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  for (const e of document.body.querySelectorAll("*")) {
    if (!visible(e) || e.closest(".scroll") || e.tagName === "SCRIPT") { continue; }
    const r = e.getBoundingClientRect();
    if (r.right > vw + 0.5 || r.left < -0.5) { out.clipped.push(e.tagName + " " + (e.textContent || "").slice(0, 40)); }
  }
  for (const s of document.querySelectorAll(".scroll")) {
    out.boxes += 1;
    if (s.scrollWidth > s.clientWidth) { out.scrolling += 1; }
    const r = s.getBoundingClientRect();
    if (r.right > vw + 0.5) { out.clipped.push("scroll box " + r.right); }
    const cs = getComputedStyle(s);
    if (s.scrollWidth > s.clientWidth && !["auto", "scroll"].includes(cs.overflowX)) { out.clipped.push("box"); }
  }
  for (const th of document.querySelectorAll("th")) {
    if (!visible(th)) { continue; }
    const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const re = /[^\s\-\/​·]+/g;
      let m;
      while ((m = re.exec(node.data)) !== null) {
        const range = document.createRange();
        range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
        const tops = new Set(Array.from(range.getClientRects()).map(x => Math.round(x.top)));
        if (tops.size > 1) { out.broken.push(m[0]); }
      }
    }
  }
  for (const t of document.querySelectorAll("svg.chart text")) {
    const r = t.getBoundingClientRect(), s = t.ownerSVGElement.getBoundingClientRect();
    if (r.left < s.left - 1 || r.right > s.right + 1) { out.chart.push(t.textContent); }
  }
  return out;
})()"""


@pytest.mark.parametrize("width", [390, 1280])
def test_readable_at_390_and_1280_with_screenshots(results_dir, tmp_path, width):
    """Issue 27: at 390 px the page was 896 px wide, tables and charts cut off, headers broken letter by letter.
    Now nothing leaves the viewport except inside a scrolling container, no header word breaks, chart text
    stays in its chart; the full-page screenshot is exactly the viewport wide."""
    page = _make_page(results_dir, tmp_path)
    shot = tmp_path / f"leaderboard-{width}.png"
    with open_page(page.as_uri(), width, profile=tmp_path / "profile") as p:
        audit = p.evaluate(LAYOUT_AUDIT)
        p.screenshot(shot)
    assert audit["vw"] == width and audit["page"] == width, audit
    assert audit["clipped"] == [] and audit["broken"] == [] and audit["chart"] == [], audit
    assert audit["boxes"] >= 11  # the overview and every section's table and chart scroll on their own
    if width == 390:
        assert audit["scrolling"] >= 1  # the wide overview scrolls inside its box, not the page
    img = Image.open(shot).convert("RGB")
    assert img.size[0] == width and img.size[1] > 1000
    px = img.load()
    if width == 1280:  # the overview's right border (#ccc) is on screen: it fits
        border_x = [x for x in range(1000, 1280) if sum(px[x, y] == (204, 204, 204) for y in range(250, 900)) > 150]
        assert border_x, "no vertical border of the overview in x 1000..1279"
    else:  # the page margin at the right edge stays blank all the way down: nothing runs off the screen
        margin = [(x, y) for x in range(width - 5, width) for y in range(img.size[1]) if px[x, y] != (255, 255, 255)]
        assert not margin, margin[:5]
        # and the overview is cut by its own scrolling box: table cells reach the box's edge (x ~ 380)
        assert any(px[x, 600] != (255, 255, 255) for x in range(width - 20, width - 6))


def test_sections_sort_and_filter_by_deep_link(results_dir, tmp_path):
    page = _make_page(results_dir, tmp_path)
    dom = dump_dom(page.as_uri() + "#sort=AUC&dir=asc&filter=icm", tmp_path / "profile")
    shown = [s for s in dom.split('<div class="section"')[1:] if 'style="display: none;"' not in s.split(">")[0]]
    assert len(shown) == 1 and 'data-dataset="icm"' in shown[0].split(">")[0]
    table = shown[0].split("<tbody>")[1].split("</tbody>")[0]
    order = [chunk.split('"')[0] for chunk in table.split('<tr data-model="')[1:]]
    assert order == ["r2d2-vitl14", "prd2-vitl14", "chinese-clip-vit-h14", "chinese-clip-vit-l14-336",
                     "our-pretrain-zero-250m-decontaminated-vitb16-epoch-30", "model-b"]  # AUC 60..65 ascending
    assert 'class="sorted-asc"' in shown[0]


HOSTILE = '<svg onload="document.body.setAttribute(\'data-pwned\',\'1\')">'


def test_injection_in_title_dataset_and_model_stays_text(tmp_path):
    """Issue 17: a title with __DATA__, a dataset name hiding <svg onload>, a model closing the script."""
    out = tmp_path / "bench"
    write_result(out, _res("</script><script>document.body.setAttribute('data-pwned','2')</script>", HOSTILE,
                           "test", "retrieval", _rec(40, 30)))
    write_result(out, _res("m2 " + HOSTILE, "icm", "val", "matching", {"AUC": 70.0}))
    title = "Board __DATA__ __TITLE__ <!-- " + HOSTILE
    page = _make_page(out, tmp_path, title=title)
    html = page.read_text(encoding="utf-8")
    assert "<svg onload" not in html and "</script><script>" not in html
    dom = dump_dom(page.as_uri(), tmp_path / "profile")
    assert "data-pwned" not in re.search(r"<body[^>]*>", dom).group(0)
    assert "<svg onload" not in dom  # the hostile markup is text, shown escaped
    assert "&lt;svg onload=" in dom
    assert "<title>Board __DATA__ __TITLE__ &lt;!-- &lt;svg" in dom  # document.title, set as text
    h1 = dom.split('<h1 id="title">')[1].split("</h1>")[0]
    assert h1.startswith("Board __DATA__ __TITLE__ &lt;!--")


def test_script_json_escapes():
    text = script_json({"a": "</script><!--<![CDATA[ & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!--<![CDATA[ & \u2028"}
    # the page needs no substitution: a title equal to the old placeholders renders as itself
    page = render_html([], title="__DATA__")
    assert page.count("__DATA__") == 1 and '"title": "__DATA__"' in page
