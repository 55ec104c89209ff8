"""``ccmb demo``: the whole path on a laptop, from web URLs to a leaderboard, on loopback data.

1. renders coloured-shape images with Chinese captions and serves them on 127.0.0.1 as Zero records
   (plus a dead link and a non-http URL, to show how failures are accounted for);
2. ``ccmb download zero`` (img2dataset) -> ``ccmb filter`` + ``ccmb dedup`` -> ``ccmb build-shards`` -> ``ccmb verify``;
3. ``ccmb train pretrain`` a tiny R2D2 on the shards (CPU, a few minutes);
4. writes held-out ICR (retrieval) and ICM (matching) sets in their official layout, and
   ``ccmb-bench run`` the trained model and an untrained one on them;
5. ``ccmb-bench leaderboard`` -> CSV, markdown and a self-contained HTML page; ``ccmb-bench plot`` -> recall@K PNG.

Every step is the real command, run as a subprocess and printed first, so the output doubles as a tutorial.
"""
from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import click

from .. import synthetic


def _run(cmd: List[str], log: List[str]) -> None:
    shown = " ".join(shlex.quote(c) for c in cmd).replace(f"{shlex.quote(sys.executable)} -m ", "")
    click.secho(f"\n$ {shown}", fg="cyan", bold=True)
    log.append(shown)
    start = time.time()
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise click.ClickException(f"step failed (exit {res.returncode}): {shown}")
    click.secho(f"  ({time.time() - start:.1f}s)", fg="bright_black")


def _write_downstream(root: Path, n_images: int, seed: int) -> None:
    """Held-out ICR + ICM sets in the official layout (one flat image folder, JSON lines)."""
    rng = random.Random(seed)
    items = synthetic.sample_items(n_images, seed=seed)
    names = synthetic.write_images(items, root / "IQR_IQM_ICR_ICM_images", size=256, seed=seed, prefix="val")
    icr = root / "ICR" / "val" / "long_itr_val.json"
    icm = root / "ICM" / "val" / "long_itm_val.json"
    icr.parent.mkdir(parents=True, exist_ok=True)
    icm.parent.mkdir(parents=True, exist_ok=True)
    with open(icr, "w", encoding="utf-8") as fh:
        for it, name in zip(items, names):
            fh.write(json.dumps({"text": it.content, "image_path": f"images/{name}"}, ensure_ascii=False) + "\n")
    everything = synthetic.all_items()
    with open(icm, "w", encoding="utf-8") as fh:
        for it, name in zip(items, names):
            fh.write(json.dumps({"text": it.title, "image_path": name, "label": 1}, ensure_ascii=False) + "\n")
            other = rng.choice([o for o in everything if o != it])
            fh.write(json.dumps({"text": other.title, "image_path": name, "label": 0}, ensure_ascii=False) + "\n")


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Where every artefact of the demo goes (replaced if it exists).")
@click.option("--images", type=int, default=600, show_default=True, help="Training images to serve.")
@click.option("--steps", type=int, default=300, show_default=True, help="Pre-training steps of the tiny R2D2.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo_cmd(workdir: Path, images: int, steps: int, seed: int) -> None:
    """Run the end-to-end demo on loopback data (CPU, no downloads from the internet)."""
    started = time.time()
    if workdir.exists():
        shutil.rmtree(workdir)
    web, data, dl, shards, run, bench = (workdir / d for d in ("web", "data", "download", "shards", "run", "bench"))
    py = sys.executable
    log: List[str] = []
    env_note = "NO_ALBUMENTATIONS_UPDATE"
    os.environ.setdefault(env_note, "1")
    os.environ.setdefault("WANDB_MODE", "disabled")

    click.secho(f"ccmb demo: everything goes to {workdir}/", bold=True)
    items = synthetic.sample_items(images, seed=seed)
    names = synthetic.write_images(items, web, size=256, seed=seed)
    with synthetic.serve_folder(web) as base:
        records = synthetic.zero_records(items, base, names)
        records.append(dict(records[0], ImageKey="dead-link", ImageUrl=f"{base}/gone.jpg"))
        records.append(dict(records[1], ImageKey="ftp-url", ImageUrl="ftp://example.org/a.jpg"))
        synthetic.write_jsonl(records, data / "zero_demo.jsonl")
        click.echo(f"serving {len(names)} images at {base}; {len(records)} Zero records in {data}/zero_demo.jsonl")
        _run([py, "-m", "ccmb", "download", "zero", "-i", str(data / "zero_demo.jsonl"), "-o", str(dl),
              "--processes", "1", "--threads", "8", "--samples-per-shard", "256", "--timeout", "5"], log)

    _run([py, "-m", "ccmb", "filter", "--input", str(dl), "--output", str(workdir / "filter.parquet")], log)
    # Identical captions are expected here (many images of "a red circle"): keep caption dedup off.
    _run([py, "-m", "ccmb", "dedup", "--input", str(dl), "--output", str(workdir / "dedup.parquet"),
          "--no-caption", "--keep", str(workdir / "filter.parquet")], log)
    _run([py, "-m", "ccmb", "build-shards", "--input", str(dl), "--output", str(shards),
          "--keep", str(workdir / "filter.parquet"), "--keep", str(workdir / "dedup.parquet"),
          "--samples-per-shard", "200", "--shuffle", "--seed", str(seed)], log)
    _run([py, "-m", "ccmb", "verify", str(shards)], log)

    from models.tokenizer import write_test_vocab

    chars = "".join(sorted({ch for it in synthetic.all_items() for t in (it.title, it.content, it.query) for ch in t}))
    vocab = write_test_vocab(workdir / "tokenizer", extra_chars=chars)
    _run([py, "-m", "ccmb", "train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards),
          "--tokenizer", str(vocab), "--output", str(run), "--steps", str(steps), "--batch-size", "32",
          "--lr", "1e-3", "--warmup-steps", "20", "--log-every", "50", "--save-every", str(steps),
          "--text-choice", "random", "--num-workers", "0", "--seed", str(seed)], log)

    _write_downstream(data / "ccmb", n_images=100, seed=seed + 1)
    # The harness names a model after its folder: give both models telling names.
    trained = workdir / "r2d2-tiny-demo"
    shutil.copytree(_final_model_dir(run), trained)
    untrained = workdir / "r2d2-tiny-untrained"
    from models import build_model, get_config

    build_model(get_config("r2d2-tiny")).save_pretrained(str(untrained))
    for model_dir, label in ((trained, "pre-trained"), (untrained, "random-init")):
        _run([py, "-m", "ccmb_bench", "run", "--model", str(model_dir), "--tokenizer", str(vocab),
              "--dataset", "icr,icm", "--root", str(data / "ccmb"), "--output", str(bench), "--device", "cpu",
              "--setting", label], log)
    _run([py, "-m", "ccmb_bench", "leaderboard", "--results", str(bench / "results"),
          "--csv", str(workdir / "leaderboard.csv"), "--markdown", str(workdir / "leaderboard.md"),
          "--html", str(workdir / "leaderboard.html")], log)
    _run([py, "-m", "ccmb_bench", "plot", "--results", str(bench / "results"), "--out", str(workdir / "recall.png")], log)

    click.secho("\nLeaderboard (" + str(workdir / "leaderboard.md") + "):", bold=True)
    click.echo((workdir / "leaderboard.md").read_text(encoding="utf-8"))
    (workdir / "commands.sh").write_text("\n".join(log) + "\n", encoding="utf-8")
    click.secho(f"demo finished in {time.time() - started:.0f}s; the commands are in {workdir}/commands.sh; "
                f"open {workdir}/leaderboard.html in a browser; recall@K chart: {workdir}/recall.png", fg="green", bold=True)


def _final_model_dir(run: Path) -> Path:
    """The model folder (config.json + model.safetensors) the trainer left in ``run``."""
    for candidate in (run / "final", run / "model", run):
        if (candidate / "config.json").exists() and any(candidate.glob("*.safetensors")):
            return candidate
    found = sorted(p.parent for p in run.rglob("config.json") if any(p.parent.glob("*.safetensors")))
    if not found:
        raise click.ClickException(f"no saved model (config.json + *.safetensors) under {run}")
    return found[-1]
