"""Benchmark of ccmb.datasets: TSV image index vs naive baselines, and `info` on a 250k-line file.

    .venv/bin/python perf/bench_datasets.py [--images 3000] [--lookups 200] [--lines 250000]

Prints medians side by side with ratios:
  * index build (one scan, cached beside the TSV) and cached index load;
  * random-access latency per image: ours (cached byte offsets + pread) vs scanning the TSV per
    lookup, and vs decoding the whole TSV into a dict first (load time and memory shown);
  * `ccmb datasets info icr` on a 250k-line annotation file (in process and as a CLI process).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccmb import datasets as ds  # noqa: E402
from ccmb.datasets.imagesource import TsvImages, build_tsv_index, load_tsv_index  # noqa: E402


def make_tsv(path: Path, n: int, size: int = 96) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w", encoding="ascii") as fh:
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=90)
            fh.write(f"{1000000 + i}\t{base64.urlsafe_b64encode(buf.getvalue()).decode()}\n")


def median_time(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def naive_scan_lookup(tsv: Path, image_id: str) -> bytes:
    """Baseline: read the TSV from the top until the id is found."""
    key = image_id.encode() + b"\t"
    with open(tsv, "rb") as fh:
        for line in fh:
            if line.startswith(key):
                return base64.urlsafe_b64decode(line[len(key):].strip())
    raise KeyError(image_id)


def naive_decode_all(tsv: Path) -> dict:
    """Baseline: decode the whole TSV into memory."""
    out = {}
    with open(tsv, "rb") as fh:
        for line in fh:
            k, _, v = line.partition(b"\t")
            out[k.decode()] = base64.urlsafe_b64decode(v.strip())
    return out


def row(name: str, ours: float, base: float, unit: str = "ms") -> str:
    scale = 1000.0 if unit == "ms" else 1e6
    ratio = base / ours
    r = f"{ratio:>9.1f}x" if ratio >= 10 else f"{ratio:>9.3f}x"
    return f"{name:<44} {ours * scale:>12.4f} {base * scale:>14.4f} {r}  ({unit}; ratio = baseline/ours)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--lookups", type=int, default=200)
    ap.add_argument("--lines", type=int, default=250_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CCMB_HOME"] = str(tmp / "home")
        tsv = tmp / "valid_imgs.tsv"
        make_tsv(tsv, args.images)
        mb = tsv.stat().st_size / 1e6
        print(f"TSV: {args.images} images, {mb:.1f} MB; {args.lookups} random lookups; medians of {args.repeat}")
        print(f"{'':<44} {'ours':>12} {'baseline':>14} {'ratio':>10}")

        build = median_time(lambda: build_tsv_index(tsv), args.repeat)
        load_tsv_index(tsv)  # write the cache
        cached = median_time(lambda: load_tsv_index(tsv), args.repeat)
        decode_all = median_time(lambda: naive_decode_all(tsv), max(1, args.repeat // 2))
        print(row("index build (cold) vs decode whole TSV", build, decode_all))
        print(row("index load (cached) vs decode whole TSV", cached, decode_all))

        src = TsvImages(tsv)
        rng = random.Random(0)
        ids = [rng.choice(src.ids) for _ in range(args.lookups)]
        ours_lat = []
        for i in ids:
            t = time.perf_counter()
            src.read_bytes(i)
            ours_lat.append(time.perf_counter() - t)
        scan_lat = []
        for i in ids[: max(5, args.lookups // 10)]:
            t = time.perf_counter()
            naive_scan_lookup(tsv, i)
            scan_lat.append(time.perf_counter() - t)
        table = naive_decode_all(tsv)
        dict_lat = []
        for i in ids:
            t = time.perf_counter()
            table[i]
            dict_lat.append(time.perf_counter() - t)
        o = statistics.median(ours_lat)
        print(row("random access bytes vs scan-per-lookup", o, statistics.median(scan_lat)))
        print(row("random access bytes vs in-memory dict", o, statistics.median(dict_lat)))
        print(f"  (in-memory dict holds {sum(len(v) for v in table.values()) / 1e6:.1f} MB of images; "
              f"our index is {index_size(tsv) / 1e3:.0f} kB on disk)")
        decode_lat = []
        for i in ids[:50]:
            t = time.perf_counter()
            src.load(i)
            decode_lat.append(time.perf_counter() - t)
        print(f"{'random access incl. JPEG decode (ours)':<44} {statistics.median(decode_lat) * 1000:>12.3f} ms")
        del table

        root = tmp / "icr"
        (root / "ICR" / "val").mkdir(parents=True)
        (root / "IQR_IQM_ICR_ICM_images").mkdir()
        with open(root / "ICR" / "val" / "long_itr_val.json", "w", encoding="utf-8") as fh:
            for i in range(args.lines):
                fh.write(json.dumps({"text": f"一张图片的描述文字，编号{i}，一个人在公园里散步",
                                     "image_path": f"images/{i // 2:08d}.jpg"}, ensure_ascii=False) + "\n")
        inproc = median_time(lambda: ds.load_dataset("icr", root), 3)
        cli = [str(Path(sys.executable).parent / "ccmb"), "datasets", "info", "icr", "--root", str(root)]
        proc = median_time(lambda: subprocess.run(cli, check=True, capture_output=True), 3)
        print(f"info on {args.lines} lines: load_dataset {inproc:.2f} s in process, "
              f"`ccmb datasets info` {proc:.2f} s as a process (target < 2 s)")


def index_size(tsv: Path) -> int:
    from ccmb.datasets.imagesource import index_paths

    return next(p.stat().st_size for p in index_paths(tsv) if p.exists())


if __name__ == "__main__":
    main()
