"""``ccmb decontaminate``: the in-process engine vs Spark local mode on synthetic corpora with planted copies.

For each size (default 5K and 20K rows) a synthetic download folder with real JPEG images in tars (1000
rows per tar) and a synthetic ICR val set (``--eval-images``, default 500 images with one Chinese text each)
are written once (cached under ``--work-dir``). Planted in the corpus: 1% exact copies of evaluation images
(same bytes), 1% near copies (re-encoded at quality 40 and resized to 75%), 1% captions copying an
evaluation text (punctuation added, or one character changed), 2% failed downloads; the rest are distinct
images and captions. Each engine runs ``ccmb decontaminate --drop-caption-matches`` of this working tree in
a fresh process (the Spark one with ``--spark-master local[C] --spark-conf spark.driver.memory=1g``).

Printed per size and engine: wall s (process start included), rows per CPU second of the whole process
tree, the peak RSS of the driver Python process, of the JVM and of the tree (sampled from /proc, the
sampler of perf/bench_scale.py); precision and recall of the planted copies (images and captions); and
whether the two engines' tables are identical row by row.

    python perf/bench_decontaminate.py                       # 5K and 20K rows, both engines
    python perf/bench_decontaminate.py --sizes 50K --engines spark --json /tmp/dc.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GEN_VERSION = 1
ROWS_PER_TAR = 1000
EXACT_SHARE, NEAR_SHARE, CAPTION_SHARE, FAIL_SHARE = 0.01, 0.01, 0.01, 0.02
CJK_LO, CJK_HI = 0x4E00, 0x9FA5


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * mult)


def _image(rng, size=(128, 96)):
    from PIL import Image

    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _jpeg(img, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _text(rng, lo: int = 14, hi: int = 30) -> str:
    return "".join(chr(c) for c in rng.integers(CJK_LO, CJK_HI, int(rng.integers(lo, hi))))


def make_eval(root: Path, n: int, seed: int):
    """A synthetic ICR val set (official layout); returns (image bytes, texts)."""
    rng = np.random.default_rng(seed + 1)
    (root / "IQR_IQM_ICR_ICM_images").mkdir(parents=True, exist_ok=True)
    (root / "ICR" / "val").mkdir(parents=True, exist_ok=True)
    images, texts = [], []
    with open(root / "ICR" / "val" / "long_itr_val.json", "w", encoding="utf-8") as fh:
        for i in range(n):
            data, text = _jpeg(_image(rng)), _text(rng)
            (root / "IQR_IQM_ICR_ICM_images" / f"val{i}.jpg").write_bytes(data)
            images.append(data)
            texts.append(text)
            fh.write(json.dumps({"text": text, "image_path": f"images/val{i}.jpg"}, ensure_ascii=False) + "\n")
    return images, texts


def make_corpus(out: Path, rows: int, eval_images, eval_texts, seed: int) -> Dict[str, List[str]]:
    """The download folder; returns the planted keys {"images": [...], "captions": [...]}."""
    from PIL import Image

    from ccmb import shards

    rng = np.random.default_rng(seed)
    kinds = rng.random(rows)
    bounds = np.cumsum([EXACT_SHARE, NEAR_SHARE, CAPTION_SHARE, FAIL_SHARE])
    planted: Dict[str, List[str]] = {"images": [], "captions": []}
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, rows, ROWS_PER_TAR):
        shard = s // ROWS_PER_TAR
        with shards.ShardWriter(out, shard, source="synthetic.jsonl") as w:
            for i in range(s, min(rows, s + ROWS_PER_TAR)):
                key = shards.make_key(shard, i - s, ROWS_PER_TAR)
                j = int(rng.integers(0, len(eval_images)))
                caption, k = _text(rng), kinds[i]
                if k < bounds[0]:
                    data = eval_images[j]
                    planted["images"].append(key)
                elif k < bounds[1]:
                    img = Image.open(io.BytesIO(eval_images[j]))
                    data = _jpeg(img.resize((img.width * 3 // 4, img.height * 3 // 4)), 40)
                    planted["images"].append(key)
                elif k < bounds[2]:
                    t = eval_texts[j]
                    caption = t + "。" if rng.random() < 0.5 else t[:-1] + "的"
                    data = _jpeg(_image(rng))
                    planted["captions"].append(key)
                else:
                    data = None if k < bounds[3] else _jpeg(_image(rng))
                meta = {"url": f"http://cdn{i % 50}.example.com/{key}.jpg", "caption": caption, "title": caption,
                        "key": key}
                if data is None:
                    w.write_failure(meta, "failed_to_download", "HTTP 404")
                    continue
                meta.update(width=128, height=96, original_width=128, original_height=96)
                w.write(key, data, caption, meta)
    return planted


def ensure_data(work_dir: Path, rows: int, eval_n: int, seed: int):
    """(download folder, eval root, planted keys), generated once per (rows, eval_n, seed, version)."""
    base = work_dir / f"v{GEN_VERSION}_s{seed}_e{eval_n}"
    root, folder = base / "eval", base / f"dl_{rows}"
    done = folder / "_planted.json"
    if done.exists():
        return folder, root, json.loads(done.read_text())
    if not (root / "ICR").exists():
        make_eval(root, eval_n, seed)
    from ccmb.datasets.registry import load_dataset

    data = load_dataset("icr", root, split="val")
    images = [data.image_bytes(i) for i in range(data.num_images)]
    texts = [list(data.image_texts(i))[0] for i in range(data.num_images)]
    t0 = time.time()
    planted = make_corpus(folder, rows, images, texts, seed)
    done.write_text(json.dumps(planted))
    print(f"generated {rows:,} rows in {time.time() - t0:.0f}s: {folder}", flush=True)
    return folder, root, planted


def quality(table_path: Path, planted: Dict[str, List[str]]) -> Dict[str, float]:
    from ccmb.corpus.tables.decisions import read_decisions

    t = read_decisions(table_path).to_pylist()
    dropped = {r["key"] for r in t if r["reason"] == "eval_overlap"}
    truth = set(planted["images"]) | set(planted["captions"])
    tp = len(dropped & truth)
    return {"precision": tp / len(dropped) if dropped else 1.0, "recall": tp / len(truth) if truth else 1.0,
            "dropped": len(dropped), "planted": len(truth)}


def main() -> None:
    from bench_scale import run_step

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5K,20K")
    ap.add_argument("--engines", default="local,spark")
    ap.add_argument("--eval-images", type=int, default=500)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--driver-memory", default="1g")
    ap.add_argument("--work-dir", default="/tmp/ccmb_bench_decontaminate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work_dir = Path(args.work_dir)
    results = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        folder, root, planted = ensure_data(work_dir, size, args.eval_images, args.seed)
        tables = {}
        for engine in args.engines.split(","):
            out = work_dir / f"out_{size}_{engine}.parquet"
            cmd = ["decontaminate", "--input", str(folder), "--against", "icr", "--root", str(root), "--output",
                   str(out), "--drop-caption-matches", "--engine", engine]
            if engine == "spark":
                cmd += ["--spark-master", f"local[{args.cores}]", "--spark-conf",
                        f"spark.driver.memory={args.driver_memory}"]
            else:
                cmd += ["--workers", str(args.cores)]
            res = run_step(cmd, None, work_dir / f"log_{size}_{engine}.txt")
            res.update(size=size, engine=engine, quality=quality(out, planted),
                       rows_per_cpu_s=size / max(res["cpu_s"], 1e-9))
            tables[engine] = out
            results.append(res)
            pk, q = res["peak"], res["quality"]
            print(f"{size:>9,} {engine:>6}: wall {res['wall']:6.1f}s, {res['rows_per_cpu_s']:,.0f} rows/cpu-s, "
                  f"driver py {pk['driver_py']:,.0f} MB, jvm {pk['jvm']:,.0f} MB, tree {pk['tree']:,.0f} MB, "
                  f"load {res['load1']:.1f}; precision {q['precision']:.3f} recall {q['recall']:.3f} "
                  f"({q['dropped']} dropped, {q['planted']} planted)", flush=True)
        if len(tables) == 2:
            from ccmb.corpus.tables.decisions import read_decisions

            a, b = (read_decisions(p) for p in tables.values())
            same = a.equals(b)
            print(f"{size:>9,} tables identical row by row: {same}", flush=True)
            results[-1]["tables_identical"] = same
            if args.json:
                Path(args.json).write_text(json.dumps({"results": results}, indent=1))
    by = {(r["size"], r["engine"]): r for r in results}
    for size in sorted({r["size"] for r in results}):
        if (size, "local") in by and (size, "spark") in by:
            lo, sp = by[(size, "local")], by[(size, "spark")]
            print(f"{size:>9,} spark/local: wall {sp['wall'] / lo['wall']:.2f}x, cpu "
                  f"{sp['cpu_s'] / max(lo['cpu_s'], 1e-9):.2f}x; driver py {lo['peak']['driver_py']:,.0f} -> "
                  f"{sp['peak']['driver_py']:,.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=1))


if __name__ == "__main__":
    main()
