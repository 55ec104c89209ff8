"""``ccmb demo``: the whole path on a laptop, from web URLs to a leaderboard, on loopback data.

1. renders distinct coloured-shape scenes with Chinese captions and serves them on 127.0.0.1 as Zero records
   (plus a dead link and a non-http URL, to show how failures are accounted for), with planted copies: a
   repeated URL, the same bytes at another URL, near-copies (re-encoded, resized, cropped, darker,
   watermarked), a repeated caption, and near-copies of the held-out evaluation images;
2. ``ccmb download zero`` (img2dataset) -> ``ccmb filter`` + ``ccmb dedup`` + ``ccmb decontaminate`` ->
   ``ccmb build-shards`` -> ``ccmb verify``; prints what curation did with each planted copy;
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
from typing import List, Optional

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


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True, help="Where every artefact of the demo goes (replaced if it exists).")
@click.option("--images", type=int, default=600, show_default=True, help="Training images to serve.")
@click.option("--steps", type=int, default=300, show_default=True, help="Pre-training steps of the tiny R2D2.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mismatches", type=int, default=20, show_default=True,
              help="Planted mismatched pairs (an image under another scene's caption) for the score filter.")
def demo_cmd(workdir: Path, images: int, steps: int, seed: int, mismatches: int) -> None:
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
    eval_root, _ = _curate(workdir, images, seed, log, mismatches=mismatches)

    from models.tokenizer import write_test_vocab

    chars = synthetic.caption_chars() + "".join(sorted({ch for t in PLANTED_CAPTIONS for ch in t}))
    vocab = write_test_vocab(workdir / "tokenizer", extra_chars=chars)
    _run([py, "-m", "ccmb", "train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards),
          "--tokenizer", str(vocab), "--output", str(run), "--steps", str(steps), "--batch-size", "32",
          "--lr", "1e-3", "--warmup-steps", "20", "--log-every", "50", "--save-every", str(steps),
          "--text-choice", "random", "--num-workers", "0", "--seed", str(seed)], log)

    # The harness names a model after its folder: give both models telling names.
    trained = workdir / "r2d2-tiny-demo"
    shutil.copytree(_final_model_dir(run), trained)
    untrained = workdir / "r2d2-tiny-untrained"
    from models import build_model, get_config

    build_model(get_config("r2d2-tiny")).save_pretrained(str(untrained))
    for model_dir, label in ((trained, "pre-trained"), (untrained, "random-init")):
        _run([py, "-m", "ccmb_bench", "run", "--model", str(model_dir), "--tokenizer", str(vocab),
              "--dataset", "icr,icm", "--root", str(eval_root), "--output", str(bench), "--device", "cpu",
              "--setting", label], log)
    _show_stages(bench / "results")
    _score_step(workdir, trained, vocab, log)
    _run([py, "-m", "ccmb_bench", "leaderboard", "--results", str(bench / "results"),
          "--csv", str(workdir / "leaderboard.csv"), "--markdown", str(workdir / "leaderboard.md"),
          "--html", str(workdir / "leaderboard.html")], log)
    _run([py, "-m", "ccmb_bench", "plot", "--results", str(bench / "results"), "--out", str(workdir / "recall.png")], log)

    click.secho("\nLeaderboard (" + str(workdir / "leaderboard.md") + "):", bold=True)
    click.echo((workdir / "leaderboard.md").read_text(encoding="utf-8"))
    (workdir / "commands.sh").write_text("\n".join(log) + "\n", encoding="utf-8")
    click.secho(f"demo finished in {time.time() - started:.0f}s; the commands are in {workdir}/commands.sh; "
                f"open {workdir}/leaderboard.html in a browser; recall@K chart: {workdir}/recall.png", fg="green", bold=True)


def _curate(workdir: Path, images: int, seed: int, log: List[str], mismatches: int = 0):
    """Steps 1-2: serve scenes with planted copies, download, filter, dedup, decontaminate, build shards,
    verify; returns (the evaluation data root, the planted-copy outcome of :func:`_show_curation`)."""
    web, data, dl, shards = (workdir / d for d in ("web", "data", "download", "shards"))
    py = sys.executable
    # Distinct scenes (no two captions or images are duplicates) for training and held-out evaluation;
    # the evaluation set is written first so that the corpus can hold planted copies of its images.
    n_eval = 100
    n_spare = len(PLANTED_CAPTIONS) + mismatches
    distinct = images + n_eval + n_spare <= len(synthetic.all_items())
    pool = synthetic.sample_items(images + n_eval + n_spare, seed=seed, distinct=distinct)
    items, eval_items, spare = pool[:images], pool[images:images + n_eval], pool[images + n_eval:]
    spare, mismatch_items = spare[:len(PLANTED_CAPTIONS)], spare[len(PLANTED_CAPTIONS):]
    eval_root = data / "ccmb"
    eval_names = _write_downstream(eval_root, n_images=n_eval, seed=seed + 1, items=eval_items)
    eval_dir = eval_root / "IQR_IQM_ICR_ICM_images"
    names = synthetic.write_images(items, web, size=256, seed=seed,
                                   avoid=synthetic.image_hashes(eval_dir, eval_names))
    with synthetic.serve_folder(web) as base:
        records = synthetic.zero_records(items, base, names)
        planted = _plant_copies(records, web, base, eval_dir, eval_names, spare, seed)
        mismatched = _plant_mismatches(records, web, base, mismatch_items, seed)
        (workdir / "planted.json").write_text(json.dumps({"copies": planted, "mismatched": mismatched},
                                                         ensure_ascii=False, indent=1), encoding="utf-8")
        records.append(dict(records[0], ImageKey="dead-link", ImageUrl=f"{base}/gone.jpg"))
        records.append(dict(records[1], ImageKey="ftp-url", ImageUrl="ftp://example.org/a.jpg"))
        synthetic.write_jsonl(records, data / "zero_demo.jsonl")
        click.echo(f"serving {len(names)} distinct scenes + {len(planted)} planted copies + {len(mismatched)} "
                   f"mismatched pairs at {base}; "
                   f"{len(records)} Zero records in {data}/zero_demo.jsonl")
        _run([py, "-m", "ccmb", "download", "zero", "-i", str(data / "zero_demo.jsonl"), "-o", str(dl),
              "--processes", "1", "--threads", "8", "--samples-per-shard", "256", "--timeout", "5"], log)

    tables = [workdir / "filter.parquet", workdir / "dedup.parquet", workdir / "decontaminate.parquet"]
    _run([py, "-m", "ccmb", "filter", "--input", str(dl), "--output", str(tables[0])], log)
    # Dedup after the filter (--keep): representatives are samples the filter keeps.
    _run([py, "-m", "ccmb", "dedup", "--input", str(dl), "--output", str(tables[1]), "--keep", str(tables[0]),
          *([] if distinct else ["--no-caption"])], log)
    # Copies of the benchmark's own images must not be trained on.
    _run([py, "-m", "ccmb", "decontaminate", "--input", str(dl), "--against", "icr,icm", "--root", str(eval_root),
          "--output", str(tables[2]), "--report", str(workdir / "decontaminate.json")], log)
    _run([py, "-m", "ccmb", "build-shards", "--input", str(dl), "--output", str(shards),
          *[a for t in tables for a in ("--keep", str(t))],
          "--samples-per-shard", "200", "--shuffle", "--seed", str(seed)], log)
    _run([py, "-m", "ccmb", "verify", str(shards)], log)
    return eval_root, _show_curation(dl, tables, planted)



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


def _score_step(workdir: Path, model: Path, vocab: Path, log: List[str]) -> None:
    """Model-based curation with the demo's own trained model: ``ccmb score`` the download, look at the
    histogram, filter by agreement and dedup semantically; prints precision/recall against what was planted."""
    py = sys.executable
    dl, scores = workdir / "download", workdir / "scores.parquet"
    _run([py, "-m", "ccmb", "score", "--input", str(dl), "--model", str(model), "--tokenizer", str(vocab),
          "--output", str(scores), "--device", "cpu"], log)
    _run([py, "-m", "ccmb", "stats", "--scores", str(scores), "--histogram", str(workdir / "scores.png")], log)
    _run([py, "-m", "ccmb", "filter", "--input", str(dl), "--output", str(workdir / "filter_scores.parquet"),
          "--scores", str(scores), "--keep-top-percent", str(SCORE_KEEP_TOP_PERCENT)], log)
    _run([py, "-m", "ccmb", "dedup", "--input", str(dl), "--output", str(workdir / "semantic.parquet"),
          "--no-url", "--no-sha256", "--no-phash", "--no-caption", "--semantic", str(scores),
          "--eps", str(SEMANTIC_EPS)], log)
    _show_model_curation(workdir)


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
    ok = [(k, u) for k, u, st in zip(meta.column("key").to_pylist(), meta.column("url").to_pylist(),
                                     meta.column("status").to_pylist()) if st == "success"]
    mismatched = {k for k, u in ok if u in set(planted["mismatched"])}
    copies = set()
    for p in planted["copies"]:  # the same picture again (not a new image under an old caption)
        if p["expect"] in ("duplicate_url", "duplicate_sha256", "duplicate_phash"):
            keys = sorted(k for k, u in ok if u == p["url"])
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
    url_of = {k: u for u, k, st in zip(meta.column("url").to_pylist(), meta.column("key").to_pylist(),
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
        keys = sorted(k for k, u in url_of.items() if u == p["url"])
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


def _show_stages(results: Path) -> None:
    """What each R2D2 stage gives: ICR mean recall of the dual-encoder stage alone (pre-ranking) and after
    the cross encoders re-rank its top-k (the two stages), and ICM match AUC (cross encoders alone)."""
    rows = []
    for f in sorted(Path(results).rglob("*.json")):
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(r, dict) or not isinstance(r.get("metrics"), dict):
            continue
        m, label = r["metrics"], (r.get("settings") or {}).get("setting") or r.get("model", "?")
        if "prerank_MR" in m and "MR" in m:
            rows.append(f"  {label:<12} ICR MR: dual-encoder stage {m['prerank_MR']:6.2f} -> two stages "
                        f"{m['MR']:6.2f} ({m['MR'] - m['prerank_MR']:+.2f} from re-ranking top {m.get('top_k', '?')})")
        if "AUC" in m:
            rows.append(f"  {label:<12} ICM AUC (cross encoders): {m['AUC']:6.2f} (chance 50)")
    if rows:
        click.secho("\nWhat each stage gives:", bold=True)
        click.echo("\n".join(rows))


def _final_model_dir(run: Path) -> Path:
    """The model folder (config.json + model.safetensors) the trainer left in ``run``."""
    for candidate in (run / "final", run / "model", run):
        if (candidate / "config.json").exists() and any(candidate.glob("*.safetensors")):
            return candidate
    found = sorted(p.parent for p in run.rglob("config.json") if any(p.parent.glob("*.safetensors")))
    if not found:
        raise click.ClickException(f"no saved model (config.json + *.safetensors) under {run}")
    return found[-1]
