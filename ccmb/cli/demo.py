"""``ccmb demo``: the whole path on a laptop, from web URLs to a leaderboard, on loopback data.

1. ``ccmb demo prepare`` renders distinct coloured-shape scenes with Chinese captions as Zero records (plus a
   dead link and a non-http URL, to show how failures are accounted for), with planted copies: a repeated URL,
   the same bytes at another URL, near-copies (re-encoded, resized, cropped, darker, watermarked), a repeated
   caption, and near-copies of the held-out evaluation images; held-out ICR (retrieval) and ICM (matching) sets
   in their official layout; a tokenizer vocabulary;
2. ``ccmb demo serve web -- ccmb download zero`` (img2dataset, the scenes served on 127.0.0.1) ->
   ``ccmb filter`` + ``ccmb dedup`` + ``ccmb decontaminate`` -> ``ccmb build-shards`` -> ``ccmb verify``;
   prints what curation did with each planted copy;
3. ``ccmb train pretrain`` a tiny R2D2 on the shards (CPU, a few minutes); says when too few steps were trained
   for the numbers to mean anything;
4. ``ccmb-bench run`` the trained model and an untrained one on the held-out sets;
5. ``ccmb score`` + model-based curation; ``ccmb-bench leaderboard`` -> CSV, markdown and a self-contained HTML
   page; ``ccmb-bench plot`` -> recall@K PNG.

Every step is the real console command (``ccmb ...``, ``ccmb-bench ...``, ``cp -R``, ``python -c``), run from
the work folder with relative paths, printed first and recorded in ``commands.sh``: ``bash commands.sh`` in an
empty folder replays the run there. The work folder is ccmb's own (``ccmb.outdir``): a new or empty folder, or
one an earlier demo made (replaced); any other folder is refused.
"""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import List, Optional, Sequence

import click

from .. import outdir, synthetic
from ..clikit import input_errors_as_click

KIND = "demo"
#: the demo needs a training batch of 32 after curation and ten scenes to plant copies of
MIN_IMAGES = 40
#: fewer pre-training steps than this leave the tiny model near chance: the demo says so
MEANINGFUL_STEPS = 150
N_EVAL = 100
#: the records' base URL until ``ccmb demo serve`` points them at the port it serves on
PLACEHOLDER_BASE = "http://127.0.0.1:0"
RECORDS = "data/zero_demo.jsonl"
EVAL_ROOT = "data/ccmb"
VOCAB = "tokenizer/vocab.txt"
#: everything the demo writes into its folder (an older demo folder without the owner marker is recognised by it)
DEMO_NAMES = frozenset({
    "web", "data", "download", "shards", "run", "bench", "tokenizer", "r2d2-tiny-demo", "r2d2-tiny-untrained",
    "filter.parquet", "dedup.parquet", "decontaminate.parquet", "decontaminate.json", "planted.json",
    "scores.parquet", "scores.png", "filter_scores.parquet", "semantic.parquet", "model_curation.json",
    "leaderboard.csv", "leaderboard.md", "leaderboard.html", "recall.png", "commands.sh"})


def _legacy_demo(folder: Path) -> bool:
    """A folder an earlier ccmb demo wrote before output folders carried a marker: only the demo's names."""
    names = {p.name for p in folder.iterdir()} - {outdir.OWNER_FILE, outdir.LOCK_FILE}
    return bool(names) and names <= DEMO_NAMES and bool(names & {"web", "data", "commands.sh"})


def claim_workdir(workdir: Path, *, empty: bool = True) -> Path:
    """The demo's folder: new, empty, or an earlier demo's (its contents removed when ``empty``); any other folder
    is an :class:`~ccmb.outdir.OutputFolderError` naming it."""
    folder = outdir.claim(workdir, KIND, legacy=_legacy_demo,
                          hint="choose a new or empty folder for the demo (--workdir)")
    if empty:
        outdir.clear(folder, KIND)
    return folder


def _distinct(images: int, mismatches: int) -> bool:
    """Whether the demo's scenes can all differ (else captions repeat and caption dedup is left out)."""
    return images + N_EVAL + len(PLANTED_CAPTIONS) + mismatches <= len(synthetic.all_items())


class Transcript:
    """Runs each step from the work folder as the console command a user would type, prints it first and
    appends it to ``commands.sh`` (a header sets PATH to this environment, so the script replays as it ran)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bindir = Path(sys.executable).parent
        self.python = Path(sys.executable).name
        self.env = dict(os.environ, PATH=f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                        WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"), NO_ALBUMENTATIONS_UPDATE="1")
        self.lines: List[str] = []

    def tool(self, script: str, module: str) -> List[str]:
        """``[script]`` when this environment has the console script, else ``[python, -m, module]``."""
        return [script] if (self.bindir / script).is_file() else [self.python, "-m", module]

    def ccmb(self, *args: str) -> List[str]:
        return [*self.tool("ccmb", "ccmb"), *args]

    def bench(self, *args: str) -> List[str]:
        return [*self.tool("ccmb-bench", "ccmb_bench"), *args]

    def header(self) -> str:
        from .. import __version__

        return "\n".join([
            "#!/usr/bin/env bash",
            f"# `ccmb demo` transcript (ccmb {__version__}): every command the demo ran, in order, from its folder.",
            "# Replay it in an empty folder: mkdir replay && cd replay && bash /path/to/commands.sh",
            "set -euo pipefail",
            f"export PATH={shlex.quote(str(self.bindir))}:\"$PATH\"  # the environment the demo ran in",
            "export WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1", ""])

    def run(self, cmd: Sequence[str]) -> None:
        shown = shlex.join(cmd)
        click.secho(f"\n$ {shown}", fg="cyan", bold=True)
        self.lines.append(shown)
        (self.workdir / "commands.sh").write_text(self.header() + "\n".join(self.lines) + "\n", encoding="utf-8")
        start = time.time()
        res = subprocess.run(list(cmd), cwd=self.workdir, env=self.env)
        if res.returncode != 0:
            raise click.ClickException(f"step failed (exit {res.returncode}): {shown}")
        click.secho(f"  ({time.time() - start:.1f}s)", fg="bright_black")


def _write_downstream(root: Path, n_images: int, seed: int, items=None) -> List[str]:
    """Held-out ICR + ICM sets in the official layout (one flat image folder, JSON lines); the image names."""
    rng = random.Random(seed)
    items = items if items is not None else synthetic.sample_items(n_images, seed=seed)
    names = synthetic.write_images(items, root / "IQR_IQM_ICR_ICM_images", size=256, seed=seed, prefix="val")
    icr = root / "ICR" / "val" / "long_itr_val.json"
    icm = root / "ICM" / "val" / "long_itm_val.json"
    icr.parent.mkdir(parents=True, exist_ok=True)
    icm.parent.mkdir(parents=True, exist_ok=True)
    with open(icr, "w", encoding="utf-8") as fh:
        for it, name in zip(items, names):
            fh.write(json.dumps({"text": it.content, "image_path": f"images/{name}"}, ensure_ascii=False) + "\n")
    everything = list(items)  # negatives from the held-out set: no evaluation text is a training caption
    with open(icm, "w", encoding="utf-8") as fh:
        for it, name in zip(items, names):
            fh.write(json.dumps({"text": it.title, "image_path": name, "label": 1}, ensure_ascii=False) + "\n")
            other = rng.choice([o for o in everything if o != it])
            fh.write(json.dumps({"text": other.title, "image_path": name, "label": 0}, ensure_ascii=False) + "\n")
    return names


_images_option = click.option("--images", type=click.IntRange(MIN_IMAGES), default=600, show_default=True,
                              help=f"Training images to serve (at least {MIN_IMAGES}: a training batch of 32 "
                                   "after curation).")
_seed_option = click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
_mismatches_option = click.option("--mismatches", type=click.IntRange(0), default=20, show_default=True,
                                  help="Planted mismatched pairs (an image under another scene's caption) for the "
                                       "score filter.")


@click.group("demo", invoke_without_command=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Where every artefact of the demo goes: a new or empty folder, or an earlier "
              "demo's (replaced); any other folder is refused.")
@_images_option
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True,
              help=f"Pre-training steps of the tiny R2D2 (below {MEANINGFUL_STEPS} it stays near chance).")
@_seed_option
@_mismatches_option
@click.pass_context
@input_errors_as_click
def demo_cmd(ctx: click.Context, workdir: Path, images: int, steps: int, seed: int, mismatches: int) -> None:
    """Run the end-to-end demo on loopback data (CPU, no downloads from the internet); the commands it ran are in
    WORKDIR/commands.sh (`bash commands.sh` in an empty folder replays them).

    \b
    Examples:
      ccmb demo --workdir demo_out
      ccmb demo --workdir demo_small --images 200 --steps 100
    """
    if ctx.invoked_subcommand is None:
        run_demo(workdir, images, steps, seed, mismatches)


def run_demo(workdir: Path, images: int, steps: int, seed: int, mismatches: int) -> None:
    started = time.time()
    workdir = claim_workdir(workdir)  # refuses a folder the demo did not make, before anything is written
    t = Transcript(workdir)
    click.secho(f"ccmb demo: everything goes to {workdir}/", bold=True)
    _curate(t, images, seed, mismatches)

    t.run(t.ccmb("train", "pretrain", "--config", "r2d2-tiny", "--shards", "shards", "--tokenizer", VOCAB,
                 "--output", "run", "--steps", str(steps), "--batch-size", "32", "--lr", "1e-3", "--warmup-steps",
                 str(min(20, steps)), "--log-every", "50", "--save-every", str(steps), "--text-choice", "random",
                 "--num-workers", "0", "--seed", str(seed)))
    if steps < MEANINGFUL_STEPS:
        click.secho(f"\nnote: {steps} pre-training steps are too few for the tiny model to learn anything (it needs "
                    f"about {MEANINGFUL_STEPS}+; the default is 300): its numbers below stay near chance and only "
                    "show that every stage runs.", fg="yellow", bold=True)

    # The harness names a model after its folder: give both models telling names.
    t.run(["cp", "-R", str(_final_model_dir(workdir / "run").relative_to(workdir)), "r2d2-tiny-demo"])
    t.run([t.python, "-c", f'import torch; torch.manual_seed({seed}); from models import build_model; '
                           'build_model("r2d2-tiny").save_pretrained("r2d2-tiny-untrained")'])
    for model_dir, label in (("r2d2-tiny-demo", "pre-trained"), ("r2d2-tiny-untrained", "random-init")):
        t.run(t.bench("run", "--model", model_dir, "--tokenizer", VOCAB, "--dataset", "icr,icm", "--root", EVAL_ROOT,
                      "--output", "bench", "--device", "cpu", "--setting", label))
    gain = _show_stages(workdir / "bench" / "results")
    if gain is not None and gain < 1.0:
        click.secho(f"note: the trained model is not better than the untrained one on ICR (mean recall "
                    f"{gain:+.1f}): {steps} steps did not teach it anything; train longer (--steps).",
                    fg="yellow", bold=True)
    _score_step(t)
    t.run(t.bench("leaderboard", "--results", "bench/results", "--csv", "leaderboard.csv", "--markdown",
                  "leaderboard.md", "--html", "leaderboard.html"))
    t.run(t.bench("plot", "--results", "bench/results", "--out", "recall.png"))

    click.secho("\nLeaderboard (" + str(workdir / "leaderboard.md") + "):", bold=True)
    click.echo((workdir / "leaderboard.md").read_text(encoding="utf-8"))
    click.secho(f"demo finished in {time.time() - started:.0f}s; the commands are in {workdir}/commands.sh (`bash "
                f"commands.sh` in an empty folder replays them); open {workdir}/leaderboard.html in a browser; "
                f"recall@K chart: {workdir}/recall.png", fg="green", bold=True)


@demo_cmd.command("prepare")
@_images_option
@_seed_option
@_mismatches_option
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Where to write (a new or empty folder, or a demo's).")
@input_errors_as_click
def prepare_cmd(images: int, seed: int, mismatches: int, folder: Path) -> None:
    """Write the demo's inputs: web/ (scenes and planted copies), data/zero_demo.jsonl (Zero records, their URLs
    pointed at a server by `ccmb demo serve`), data/ccmb/ (held-out ICR and ICM), tokenizer/vocab.txt and
    planted.json (what was planted, for the curation report).

    \b
    Examples:
      ccmb demo prepare --images 80 --seed 0
    """
    folder = claim_workdir(folder, empty=False)
    prepare(folder, images, seed, mismatches)


def prepare(workdir: Path, images: int, seed: int, mismatches: int) -> None:
    web = workdir / "web"
    # Distinct scenes (no two captions or images are duplicates) for training and held-out evaluation;
    # the evaluation set is written first so that the corpus can hold planted copies of its images.
    n_spare = len(PLANTED_CAPTIONS) + mismatches
    distinct = _distinct(images, mismatches)
    pool = synthetic.sample_items(images + N_EVAL + n_spare, seed=seed, distinct=distinct)
    items, eval_items, spare = pool[:images], pool[images:images + N_EVAL], pool[images + N_EVAL:]
    spare, mismatch_items = spare[:len(PLANTED_CAPTIONS)], spare[len(PLANTED_CAPTIONS):]
    eval_root = workdir / EVAL_ROOT
    eval_names = _write_downstream(eval_root, n_images=N_EVAL, seed=seed + 1, items=eval_items)
    eval_dir = eval_root / "IQR_IQM_ICR_ICM_images"
    names = synthetic.write_images(items, web, size=256, seed=seed,
                                   avoid=synthetic.image_hashes(eval_dir, eval_names))
    base = PLACEHOLDER_BASE
    records = synthetic.zero_records(items, base, names)
    planted = _plant_copies(records, web, base, eval_dir, eval_names, spare, seed)
    mismatched = _plant_mismatches(records, web, base, mismatch_items, seed)
    (workdir / "planted.json").write_text(json.dumps({"copies": planted, "mismatched": mismatched},
                                                     ensure_ascii=False, indent=1), encoding="utf-8")
    records.append(dict(records[0], ImageKey="dead-link", ImageUrl=f"{base}/gone.jpg"))
    records.append(dict(records[1], ImageKey="ftp-url", ImageUrl="ftp://example.org/a.jpg"))
    synthetic.write_jsonl(records, workdir / RECORDS)

    from models.tokenizer import write_test_vocab

    chars = synthetic.caption_chars() + "".join(sorted({ch for t in PLANTED_CAPTIONS for ch in t}))
    write_test_vocab((workdir / VOCAB).parent, extra_chars=chars)
    click.echo(f"{len(names)} distinct scenes + {len(planted)} planted copies + {len(mismatched)} mismatched pairs in "
               f"{web}/; {len(records)} Zero records in {workdir / RECORDS}; held-out ICR/ICM in {eval_root}/")


@demo_cmd.command("serve")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--records", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A JSON-lines file whose http://127.0.0.1:PORT URLs are pointed at the served port first.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def serve_cmd(folder: Path, records: Optional[Path], command: Sequence[str]) -> None:
    """Serve FOLDER over HTTP on 127.0.0.1 while COMMAND (after --) runs; exits with COMMAND's exit code.

    \b
    Examples:
      ccmb demo serve web --records data/zero_demo.jsonl -- ccmb download zero -i data/zero_demo.jsonl -o download
    """
    with synthetic.serve_folder(folder) as base:
        if records is not None:
            _point_records_at(records, base)
        click.echo(f"serving {folder}/ at {base} while `{shlex.join(command)}` runs", err=True)
        try:
            code = subprocess.call(list(command))
        except OSError as exc:
            raise click.ClickException(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
    sys.exit(code)


def _point_records_at(records: Path, base: str) -> None:
    """Rewrite the loopback base URL of every record (atomic): the served port changes from run to run."""
    from ..atomic import write_text

    text = records.read_text(encoding="utf-8")
    write_text(records, re.sub(r"http://127\.0\.0\.1:\d+", base, text))


def _url_path(url: str) -> str:
    """The path of a URL: planted copies are matched by it (the served port differs between runs)."""
    return urllib.parse.urlsplit(url).path


def _curate(t: Transcript, images: int, seed: int, mismatches: int) -> dict:
    """Steps 1-2: prepare the inputs, serve them while downloading, filter, dedup, decontaminate, build shards,
    verify; returns the planted-copy outcome of :func:`_show_curation`."""
    workdir = t.workdir
    t.run(t.ccmb("demo", "prepare", "--images", str(images), "--seed", str(seed), "--mismatches", str(mismatches)))
    t.run(t.ccmb("demo", "serve", "web", "--records", RECORDS, "--",
                 *t.ccmb("download", "zero", "-i", RECORDS, "-o", "download", "--processes", "1", "--threads", "8",
                         "--samples-per-shard", "256", "--timeout", "5",
                         "--allow-private")))  # the demo's web server is on 127.0.0.1
    tables = ["filter.parquet", "dedup.parquet", "decontaminate.parquet"]
    t.run(t.ccmb("filter", "--input", "download", "--output", tables[0]))
    # Dedup after the filter (--keep): representatives are samples the filter keeps.
    t.run(t.ccmb("dedup", "--input", "download", "--output", tables[1], "--keep", tables[0],
                 *([] if _distinct(images, mismatches) else ["--no-caption"])))
    # Copies of the benchmark's own images must not be trained on.
    t.run(t.ccmb("decontaminate", "--input", "download", "--against", "icr,icm", "--root", EVAL_ROOT,
                 "--output", tables[2], "--report", "decontaminate.json"))
    t.run(t.ccmb("build-shards", "--input", "download", "--output", "shards", *[a for x in tables for a in ("--keep", x)],
                 "--samples-per-shard", "200", "--shuffle", "--seed", str(seed)))
    t.run(t.ccmb("verify", "shards"))
    planted = json.loads((workdir / "planted.json").read_text(encoding="utf-8"))["copies"]
    return _show_curation(workdir / "download", [workdir / x for x in tables], planted)


#: Captions of planted copies (web reposts rarely keep the original caption).
PLANTED_CAPTIONS = ("网友转发的一张图片", "在别的网站上看到的同一张图", "这张图被重新压缩后上传", "缩小尺寸后的图片",
                    "裁掉边缘的截图", "调亮以后的照片", "加了水印的转载图片", "评测集里的图片被转发到论坛",
                    "论坛里流传的小图", "带着网站水印的转载")


def _plant_copies(records: List[dict], web: Path, base: str, eval_dir: Path, eval_names: List[str],
                  spare, seed: int) -> List[dict]:
    """Append planted copies to ``records`` (each with a caption of its own); returns what was planted:
    [{"url", "what", "expect": reason, "of": original URL or evaluation image}]."""
    planted: List[dict] = []
    captions = iter(PLANTED_CAPTIONS)

    def add(what: str, url: str, expect: str, of: str, title: Optional[str] = None) -> None:
        i = len(records)
        records.append({"Url": f"{base}/page/planted{i}", "Title": title or next(captions), "Content": "",
                        "Keywords": "", "ImageKey": f"planted-{i:03d}", "ImageUrl": url, "ImageQuery": ""})
        planted.append({"url": url, "what": what, "expect": expect, "of": of})

    orig = [r["ImageUrl"] for r in records]
    add("the same URL again", orig[2], "duplicate_url", orig[2])
    name3 = orig[3].rsplit("/", 1)[-1]
    shutil.copyfile(web / name3, web / "mirror_of_3.jpg")
    add("the same bytes at another URL", f"{base}/mirror_of_3.jpg", "duplicate_sha256", orig[3])
    for j, kind in enumerate(synthetic.NEAR_COPIES):
        src = orig[4 + j].rsplit("/", 1)[-1]
        (web / f"{kind}_{src}").write_bytes(synthetic.near_copy((web / src).read_bytes(), kind))
        add(f"a {kind} copy", f"{base}/{kind}_{src}", "duplicate_phash", orig[4 + j])
    # a different scene under an existing caption (plus punctuation)
    other = synthetic.write_images(spare[:1], web, size=256, seed=seed + 7, prefix="recaptioned",
                                   avoid=synthetic.image_hashes(web, [u.rsplit("/", 1)[-1] for u in orig]))
    add("another image with a repeated caption", f"{base}/{other[0]}", "duplicate_caption", orig[9],
        title=records[9]["Title"] + "！")
    for j, kind in enumerate(("watermarked", "resized", "cropped")):
        (web / f"eval_{kind}_{j}.jpg").write_bytes(synthetic.near_copy((eval_dir / eval_names[j]).read_bytes(), kind))
        add(f"a {kind} copy of evaluation image {eval_names[j]}", f"{base}/eval_{kind}_{j}.jpg", "eval_overlap",
            eval_names[j])
    return planted


def _plant_mismatches(records: List[dict], web: Path, base: str, items, seed: int) -> List[str]:
    """Append mismatched pairs: scene i's image under scene i+1's texts (cyclically), so every image and
    caption is new to the corpus and only image-text agreement can tell; returns their image URLs."""
    if len(items) < 2:
        return []
    names = synthetic.write_images(items, web, size=256, seed=seed + 11, prefix="mismatch",
                                   avoid=synthetic.image_hashes(web, sorted(p.name for p in web.glob("*.jpg"))))
    urls = []
    for i, name in enumerate(names):
        other = items[(i + 1) % len(items)]
        url = f"{base}/{name}"
        records.append({"Url": f"{base}/page/mismatch{i}", "Title": other.title, "Content": other.content,
                        "Keywords": other.query, "ImageKey": f"mismatch-{i:03d}", "ImageUrl": url,
                        "ImageQuery": other.query})
        urls.append(url)
    return urls


def _score_step(t: Transcript) -> None:
    """Model-based curation with the demo's own trained model: ``ccmb score`` the download, look at the
    histogram, filter by agreement and dedup semantically; prints precision/recall against what was planted."""
    t.run(t.ccmb("score", "--input", "download", "--model", "r2d2-tiny-demo", "--tokenizer", VOCAB,
                 "--output", "scores.parquet", "--device", "cpu"))
    t.run(t.ccmb("stats", "--scores", "scores.parquet", "--histogram", "scores.png"))
    t.run(t.ccmb("filter", "--input", "download", "--output", "filter_scores.parquet", "--scores", "scores.parquet",
                 "--keep-top-percent", str(SCORE_KEEP_TOP_PERCENT)))
    t.run(t.ccmb("dedup", "--input", "download", "--output", "semantic.parquet", "--no-url", "--no-sha256",
                 "--no-phash", "--no-caption", "--semantic", "scores.parquet", "--eps", str(SEMANTIC_EPS)))
    _show_model_curation(t.workdir)


#: The demo's thresholds for model-based curation (chosen on the histogram; see docs/curation.md).
SCORE_KEEP_TOP_PERCENT = 95
SEMANTIC_EPS = 1e-6  # the tiny 32-px model packs distinct scenes within 1e-5 of each other (docs/curation.md)


def _show_model_curation(workdir: Path) -> dict:
    """Precision/recall of low_agreement (planted mismatches) and of semantic dedup (planted image copies)."""
    import numpy as np
    import pyarrow.parquet as pq

    from ..corpus.tables.folder import read_columns as load_metadata

    planted = json.loads((workdir / "planted.json").read_text(encoding="utf-8"))
    meta = load_metadata(workdir / "download", ["key", "url", "status"])
    ok = [(k, _url_path(u)) for k, u, st in zip(meta.column("key").to_pylist(), meta.column("url").to_pylist(),
                                                meta.column("status").to_pylist()) if st == "success"]
    mismatched = {k for k, u in ok if u in {_url_path(m) for m in planted["mismatched"]}}
    copies = set()
    for p in planted["copies"]:  # the same picture again (not a new image under an old caption)
        if p["expect"] in ("duplicate_url", "duplicate_sha256", "duplicate_phash"):
            keys = sorted(k for k, u in ok if u == _url_path(p["url"]))
            copies.add(keys[-1])

    def pr(table: str, reason: str, truth: set) -> dict:
        t = pq.read_table(workdir / table, columns=["key", "reason"]).to_pydict()
        got = {k for k, r in zip(t["key"], t["reason"]) if r == reason}
        hit = len(got & truth)
        return {"dropped": len(got), "planted": len(truth), "precision": hit / len(got) if got else float("nan"),
                "recall": hit / len(truth) if truth else float("nan")}

    out = {"low_agreement": pr("filter_scores.parquet", "low_agreement", mismatched),
           "duplicate_semantic": pr("semantic.parquet", "duplicate_semantic", copies)}
    from ..corpus.steps.scores import top_percent_threshold
    from ..corpus.tables.scores import read_scores

    sc = read_scores(workdir / "scores.parquet", ["key", "score"]).to_pydict()
    pairs = [(k, v) for k, v in zip(sc["key"], sc["score"]) if v is not None]
    values = np.asarray([v for _, v in pairs])
    is_bad = np.asarray([k in mismatched for k, _ in pairs])
    bad, good = values[is_bad], values[~is_bad]
    auc = float(((bad[:, None] < good[None, :]).mean() + 0.5 * (bad[:, None] == good[None, :]).mean()) * 100) \
        if len(bad) and len(good) else float("nan")
    sweep = {}
    for p in (90, 95, 97, 98):
        low = values < top_percent_threshold(values, p)
        hit = int((low & is_bad).sum())
        sweep[p] = {"dropped": int(low.sum()), "precision": hit / max(1, int(low.sum())),
                    "recall": hit / max(1, int(is_bad.sum()))}
    out["score_auc_mismatched_vs_rest"] = auc
    out["keep_top_percent_sweep"] = sweep
    click.secho("\nModel-based curation with the demo's own model (against what was planted):", bold=True)
    for reason in ("low_agreement", "duplicate_semantic"):
        m = out[reason]
        click.echo(f"  {reason}: dropped {m['dropped']}, planted {m['planted']}: precision {m['precision']:.2f}, "
                   f"recall {m['recall']:.2f}")
    click.echo(f"  score AUC, planted mismatches below the rest: {auc:.1f} (chance 50); keep-top-percent sweep: "
               + "; ".join(f"{p}%: P {m['precision']:.2f} R {m['recall']:.2f}" for p, m in sweep.items()))
    click.echo(f"  score histogram: {workdir / 'scores.png'}")
    (workdir / "model_curation.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    return out


def _show_curation(dl: Path, tables: List[Path], planted: List[dict]) -> dict:
    """Print what filter/dedup/decontaminate did with every planted copy, and every other drop;
    returns {"planted": [(what, expected reason, reason got)], "others": {key: (table, reason, of)}}."""
    import pyarrow.parquet as pq

    from ..corpus.tables.folder import read_columns as load_metadata

    meta = load_metadata(dl, ["key", "url", "status"])
    url_of = {k: _url_path(u) for u, k, st in zip(meta.column("url").to_pylist(), meta.column("key").to_pylist(),
                                                  meta.column("status").to_pylist()) if st == "success"}
    decided = {}
    for t in tables:
        for r in pq.read_table(t).to_pylist():
            if not r["keep"] and r["key"] not in decided:
                decided[r["key"]] = (t.stem, r["reason"], r["duplicate_of"])
    click.secho("\nWhat curation did with the planted copies:", bold=True)
    planted_keys = set()
    outcome = []
    for p in planted:  # a repeated URL: the first occurrence is the original, the last the planted copy
        keys = sorted(k for k, u in url_of.items() if u == _url_path(p["url"]))
        key = keys[-1] if keys else None
        planted_keys.add(key)
        got = decided.get(key)
        ok = got is not None and got[1] == p["expect"]
        outcome.append((p["what"], p["expect"], got[1] if got else None))
        of = got[2] if got else None
        of_txt = url_of.get(of, of) if of else ""
        click.echo(f"  {'ok ' if ok else 'MISSED'} {p['what']}: "
                   + (f"{got[0]} dropped it ({got[1]}, duplicate of {of_txt.rsplit('/', 1)[-1]})" if got else "kept"))
    others = {k: v for k, v in decided.items() if k not in planted_keys and v[1] != "not_downloaded"}
    click.echo(f"  other samples dropped: {len(others)}" + (f" {sorted(others.items())[:5]}" if others else
                                                             " (only what was planted)"))
    return {"planted": outcome, "others": others}


def _show_stages(results: Path) -> Optional[float]:
    """What each R2D2 stage gives: ICR mean recall of the dual-encoder stage alone (pre-ranking) and after
    the cross encoders re-rank its top-k (the two stages), and ICM match AUC (cross encoders alone). Returns the
    trained model's ICR mean recall minus the untrained one's (None when either is missing)."""
    rows, mean_recall = [], {}
    for f in sorted(Path(results).rglob("*.json")):
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(r, dict) or not isinstance(r.get("metrics"), dict):
            continue
        m, label = r["metrics"], (r.get("settings") or {}).get("setting") or r.get("model", "?")
        if "prerank_MR" in m and "MR" in m:
            mean_recall[label] = m["MR"]
            rows.append(f"  {label:<12} ICR MR: dual-encoder stage {m['prerank_MR']:6.2f} -> two stages "
                        f"{m['MR']:6.2f} ({m['MR'] - m['prerank_MR']:+.2f} from re-ranking top {m.get('top_k', '?')})")
        if "AUC" in m:
            rows.append(f"  {label:<12} ICM AUC (cross encoders): {m['AUC']:6.2f} (chance 50)")
    if rows:
        click.secho("\nWhat each stage gives:", bold=True)
        click.echo("\n".join(rows))
    if "pre-trained" in mean_recall and "random-init" in mean_recall:
        return mean_recall["pre-trained"] - mean_recall["random-init"]
    return None


def _final_model_dir(run: Path) -> Path:
    """The model folder (config.json + model.safetensors) the trainer left in ``run``."""
    for candidate in (run / "final", run / "model", run):
        if (candidate / "config.json").exists() and any(candidate.glob("*.safetensors")):
            return candidate
    found = sorted(p.parent for p in run.rglob("config.json") if any(p.parent.glob("*.safetensors")))
    if not found:
        raise click.ClickException(f"no saved model (config.json + *.safetensors) under {run}")
    return found[-1]
