"""Corpus curation speed: ours next to a naive baseline, medians of repeats, ratios.

1. filter + exact dedup (sha256) on N synthetic metadata rows (default 10M) in the download parquet
   format. Ours: ``ccmb filter`` then ``ccmb dedup --keep`` (sha256 level), each in its own process as on
   the command line (pyarrow compute, one CPU thread). Baseline: pandas ``read_parquet`` + a per-row Python loop (``re`` for
   the Chinese share, a dict for the hashes) on ``--baseline-rows`` rows (it is too slow for 10M).
   Each run is a fresh subprocess; peak RSS is its ``ru_maxrss``. Goals: >= 1M rows/s per core, < 2 GB.
   URL dedup (regex normalisation) is timed separately.
3. ``ccmb download`` vs bare img2dataset on the same loopback input (``perf/bench_download.py``, run
   first; goal: wall overhead <= 1.10x).
2. pHash images/s on one core: ours (``ccmb.corpus.primitives.phash.phash_tar``: JPEG draft decode, the three variants
   (whole, 90% and 80% centre), batched DCT) next
   to an imagehash-style per-image baseline (full PIL decode, LANCZOS, ``scipy.fft.dct`` per image).
   Goal: >= 300 images/s per core.

    python perf/bench_corpus.py                 # 10M rows, 3 repeats
    python perf/bench_corpus.py --rows 1000000 --repeats 3 --images 300
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS_PER_FILE = 1_000_000

CHILD_PRELUDE = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
os.environ["OMP_NUM_THREADS"] = "1"
import pyarrow as pa
pa.set_cpu_count(1); pa.set_io_thread_count(1)
"""

OURS = """
from pathlib import Path
from ccmb.corpus.api import dedup_samples, filter_samples
d, tmp, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
c0 = time.process_time()
t0 = time.perf_counter()
if mode == "filter":      # `ccmb filter`
    s = filter_samples(d, tmp / "f.parquet")
elif mode == "dedup":     # `ccmb dedup --no-url --no-phash --no-caption --keep f.parquet`
    s = dedup_samples(d, tmp / "d.parquet", levels=["sha256"], keep_tables=[tmp / "f.parquet"])
else:                     # URL level alone
    s = dedup_samples(d, tmp / "u.parquet", levels=["url"])
res = dict(seconds=time.perf_counter() - t0, cpu=time.process_time() - c0, rows=s.rows, kept=s.kept,
           rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(res))
"""

BASELINE = """
import re
from pathlib import Path
import pandas as pd
d, limit = Path(sys.argv[1]), int(sys.argv[2])
c0 = time.process_time()
t0 = time.perf_counter()
frames, n = [], 0
for p in sorted(d.glob("*.parquet")):
    frames.append(pd.read_parquet(p))
    n += len(frames[-1])
    if n >= limit:
        break
df = pd.concat(frames).head(limit)
cjk = re.compile(r"[\\u3400-\\u4dbf\\u4e00-\\u9fff]")
kept, seen, reasons = 0, {}, {}
for row in df.itertuples(index=False):
    reason = None
    if row.status != "success":
        reason = "not_downloaded"
    else:
        w = row.original_width if row.original_width == row.original_width else row.width
        h = row.original_height if row.original_height == row.original_height else row.height
        text = (row.caption if isinstance(row.caption, str) else (row.title or "")).strip()
        if min(w, h) < 200:
            reason = "too_small"
        elif max(w, h) > 3 * min(w, h):
            reason = "aspect_ratio"
        elif len(text) < 2:
            reason = "text_too_short"
        elif len(text) > 512:
            reason = "text_too_long"
        elif len(cjk.findall(text)) < 0.3 * len(text):
            reason = "low_chinese_share"
        elif row.sha256 in seen:
            reason = "duplicate_sha256"
        else:
            seen[row.sha256] = row.key
    reasons[row.key] = reason
    kept += reason is None
res = {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "rows": len(df), "kept": kept,
       "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
print(json.dumps(res))
"""

PHASH_OURS = """
from ccmb.corpus.primitives.phash import phash_tar
c0, t0 = time.process_time(), time.perf_counter()
keys, h, err = phash_tar(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "images": len(keys)}))
"""

PHASH_BASE = """
import io
import numpy as np, scipy.fft
from PIL import Image
from ccmb.shards import iter_tar_samples
c0, t0 = time.process_time(), time.perf_counter()
out = []
for s in iter_tar_samples(sys.argv[1]):
    img = Image.open(io.BytesIO(s.image)).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    px = np.asarray(img, dtype=np.float64)
    dct = scipy.fft.dct(scipy.fft.dct(px, axis=0), axis=1)[:8, :8]
    out.append(int("".join("1" if v else "0" for v in (dct > np.median(dct)).ravel()), 2))
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "images": len(out)}))
"""


def run_child(code: str, *args: str) -> dict:
    src = CHILD_PRELUDE.format(root=str(ROOT)) + code
    res = subprocess.run([sys.executable, "-c", src, *args], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"benchmark child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_metadata(out: Path, rows: int, seed: int = 0) -> None:
    """Synthetic download parquet files: ~85% downloaded, assorted sizes/texts, ~10% repeated hashes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ccmb.shards import PARQUET_SCHEMA

    rng = np.random.default_rng(seed)
    hanzi = np.array(list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你对生能而子那得"
                          "于着下自之年过发后作里用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部"))
    pool = []
    for i in range(2000):
        n = int(rng.integers(1, 40))
        s = "".join(rng.choice(hanzi, n))
        if i % 10 == 0:
            s = "photo of a cat " + s[:3]
        pool.append(s)
    pool = pa.array(pool)
    hexchars = np.frombuffer(b"0123456789abcdef", np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    for f, lo in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - lo)
        idx = pa.array(np.arange(n)).cast(pa.string())
        keys = pc.binary_join_element_wise(f"{f:05d}", pc.utf8_lpad(idx, 7, "0"), "")
        raw = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
        dup = rng.random(n) < 0.10
        src = rng.integers(0, n, size=n)
        raw[dup] = raw[src[dup]]
        hexed = np.empty((n, 64), np.uint8)
        hexed[:, 0::2] = hexchars[raw >> 4]
        hexed[:, 1::2] = hexchars[raw & 15]
        offsets = pa.py_buffer(np.arange(0, 64 * n + 1, 64, dtype=np.int32).tobytes())
        sha = pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(hexed.tobytes())])
        cap = pool.take(pa.array(rng.integers(0, len(pool), size=n)))
        w = rng.integers(50, 1500, size=n).astype(np.int32)
        h = rng.integers(50, 1500, size=n).astype(np.int32)
        ok = rng.random(n) < 0.85
        status = pc.if_else(pa.array(ok), "success", "failed_to_download")
        url = pc.binary_join_element_wise("https://img", pc.cast(pa.array(rng.integers(0, 50, n)), pa.string()),
                                          ".example.com/p/", pc.utf8_slice_codeunits(sha, 0, 16), ".jpg", "")
        cols = {"key": keys, "url": url, "title": cap, "caption": cap, "width": w, "height": h,
                "original_width": w, "original_height": h, "sha256": sha, "status": status}
        table = pa.table({name: cols.get(name, pa.nulls(n, fld.type)) for name, fld in
                          zip(PARQUET_SCHEMA.names, PARQUET_SCHEMA)}).cast(PARQUET_SCHEMA)
        pq.write_table(table, out / f"{f:05d}.parquet")


def make_images(out: Path, n: int, size: int = 384) -> Path:
    import io

    import numpy as np
    from PIL import Image

    from ccmb.shards import ShardWriter, make_key

    rng = np.random.default_rng(0)
    with ShardWriter(out, 0) as w:
        for i in range(n):
            small = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
            noise = rng.integers(0, 20, size=(size, size, 3), dtype=np.uint8)
            img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            w.write(make_key(0, i, max(n, 2)), buf.getvalue(), "t", {})
    return out / "00000.tar"


def median(xs):
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="synthetic metadata rows (ours)")
    ap.add_argument("--baseline-rows", type=int, default=1_000_000, help="rows for the naive baseline")
    ap.add_argument("--images", type=int, default=400, help="images for the pHash benchmark")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-metadata", action="store_true")
    ap.add_argument("--skip-phash", action="store_true")
    ap.add_argument("--download-images", type=int, default=2000,
                    help="images for the download comparison (perf/bench_download.py)")
    ap.add_argument("--skip-download", action="store_true")
    args = ap.parse_args()

    if not args.skip_download:
        # 3. ccmb download vs bare img2dataset on the same loopback input, in its own process (spawn guard).
        print(f"ccmb download vs bare img2dataset, {args.download_images} images, {args.repeats} repeats", flush=True)
        subprocess.run([sys.executable, str(ROOT / "perf" / "bench_download.py"), "--images",
                        str(args.download_images), "--repeats", str(args.repeats)], check=True)

    with tempfile.TemporaryDirectory(prefix="bench_corpus_") as tmp:
        tmp = Path(tmp)
        if not args.skip_metadata:
            t0 = time.perf_counter()
            make_metadata(tmp / "meta", args.rows)
            print(f"generated {args.rows:,} metadata rows in {time.perf_counter() - t0:.1f}s", flush=True)
            ours = []
            for _ in range(args.repeats):
                f = run_child(OURS, str(tmp / "meta"), str(tmp), "filter")
                d = run_child(OURS, str(tmp / "meta"), str(tmp), "dedup")
                ours.append({"seconds": f["seconds"] + d["seconds"], "cpu": f["cpu"] + d["cpu"],
                             "filter_s": f["seconds"], "dedup_s": d["seconds"], "filter_cpu": f["cpu"],
                             "dedup_cpu": d["cpu"], "rss_mb": max(f["rss_mb"], d["rss_mb"]),
                             "filter_rss": f["rss_mb"], "dedup_rss": d["rss_mb"], "rows": d["rows"]})
            url = [run_child(OURS, str(tmp / "meta"), str(tmp), "url") for _ in range(args.repeats)]
            base_rows = min(args.baseline_rows, args.rows)
            base = [run_child(BASELINE, str(tmp / "meta"), str(base_rows)) for _ in range(args.repeats)]
            m = lambda rs, k: median([r[k] for r in rs])  # noqa: E731
            o_rate, b_rate = args.rows / m(ours, "seconds"), base_rows / m(base, "seconds")
            o_core, b_core = args.rows / m(ours, "cpu"), base_rows / m(base, "cpu")
            o_rss = max(r["rss_mb"] for r in ours)
            print(f"\nfilter + exact (sha256) dedup, 1 CPU thread, medians of {args.repeats} "
                  "(rows/s per core = rows / CPU seconds of the process)")
            print(f"{'':24}{'rows':>12}{'wall s':>9}{'CPU s':>9}{'rows/s':>12}{'rows/s/core':>13}{'peak RSS MB':>13}")
            print(f"{'ours (pyarrow)':24}{args.rows:>12,}{m(ours, 'seconds'):>9.2f}{m(ours, 'cpu'):>9.2f}"
                  f"{o_rate:>12,.0f}{o_core:>13,.0f}{o_rss:>13.0f}")
            print(f"{'  ccmb filter':24}{'':>12}{m(ours, 'filter_s'):>9.2f}{m(ours, 'filter_cpu'):>9.2f}"
                  f"{'':>12}{args.rows / m(ours, 'filter_cpu'):>13,.0f}{max(r['filter_rss'] for r in ours):>13.0f}")
            print(f"{'  ccmb dedup (sha256)':24}{'':>12}{m(ours, 'dedup_s'):>9.2f}{m(ours, 'dedup_cpu'):>9.2f}"
                  f"{'':>12}{args.rows / m(ours, 'dedup_cpu'):>13,.0f}{max(r['dedup_rss'] for r in ours):>13.0f}")
            print(f"{'baseline (pandas+loop)':24}{base_rows:>12,}{m(base, 'seconds'):>9.2f}{m(base, 'cpu'):>9.2f}"
                  f"{b_rate:>12,.0f}{b_core:>13,.0f}{max(r['rss_mb'] for r in base):>13.0f}")
            print(f"speed-up {o_core / b_core:.1f}x per core ({o_rate / b_rate:.1f}x wall); "
                  f"goal >= 1,000,000 rows/s per core: {'met' if o_core >= 1e6 else 'NOT met'}; "
                  f"goal peak RSS < 2048 MB: {'met' if o_rss < 2048 else 'NOT met'}")
            print(f"URL dedup (normalise + group) alone: {m(url, 'seconds'):.2f}s wall, "
                  f"{args.rows / m(url, 'cpu'):,.0f} rows/s per core, peak RSS {max(r['rss_mb'] for r in url):.0f} MB")
            assert ours[0]["rows"] == args.rows
        if not args.skip_phash:
            tar = make_images(tmp / "img", args.images)
            ours = [run_child(PHASH_OURS, str(tar)) for _ in range(args.repeats)]
            base = [run_child(PHASH_BASE, str(tar)) for _ in range(args.repeats)]
            o = args.images / median([r["cpu"] for r in ours])
            b = args.images / median([r["cpu"] for r in base])
            print(f"\npHash, {args.images} JPEG 384x384, 1 core, medians of {args.repeats} (images / CPU second)")
            print(f"{'ours (draft, 3 variants, DCT)':30}{o:>10,.0f} images/s  (wall {median([r['seconds'] for r in ours]):.2f}s)")
            print(f"{'baseline (imagehash-style)':30}{b:>10,.0f} images/s  (wall {median([r['seconds'] for r in base]):.2f}s)")
            print(f"speed-up {o / b:.1f}x; goal >= 300 images/s per core: {'met' if o >= 300 else 'NOT met'}")

if __name__ == "__main__":
    main()
