"""Benchmark: ``ccmb download zero`` vs bare ``img2dataset.download`` on the same loopback input.

A local HTTP server (a thread of this script, 127.0.0.1) serves generated JPEGs; both tools read the same
Zero JSON-lines file and write webdataset shards with the same knobs (size, resize mode, processes,
threads, shard size, no EXIF, no hash). Several repeats each, interleaved (alternating which goes first); prints medians and the ratio
ccmb / img2dataset of the wall time (goal: <= 1.10), plus images/s and bytes per image for docs/corpus.md.

    python perf/bench_download.py --images 2000 --repeats 3
"""
from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def make_images(n_distinct: int, size=(400, 300)):
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    out = []
    for i in range(n_distinct):
        img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.randrange(size[0]), rng.randrange(size[1])
            d.ellipse([x, y, x + rng.randrange(20, 120), y + rng.randrange(20, 120)],
                      fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def serve(images):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            n = int(self.path.rsplit("/", 1)[-1].split(".")[0])
            body = images[n % len(images)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def write_input(path: Path, base: str, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"Url": f"{base}/page/{i}", "Title": f"标题{i}", "Content": f"内容{i}",
                                 "Keywords": f"关键词{i}", "ImageKey": f"k{i}", "ImageUrl": f"{base}/img/{i}.jpg",
                                 "ImageQuery": f"查询{i}"}, ensure_ascii=False) + "\n")


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the download workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_bare(src: Path, out: Path, a) -> float:
    import img2dataset

    t = time.perf_counter()
    img2dataset.download(
        url_list=str(src), input_format="jsonl", url_col="ImageUrl", caption_col="Title",
        save_additional_columns=["Content", "ImageQuery", "Keywords", "ImageKey", "Url"], output_folder=str(out),
        output_format="webdataset", processes_count=a.processes, thread_count=a.threads, image_size=a.image_size,
        resize_mode="keep_ratio", number_sample_per_shard=a.samples_per_shard, timeout=10, retries=1,
        extract_exif=False, compute_hash=None, enable_wandb=False, user_agent_token="ccmb-bench")
    return time.perf_counter() - t


def run_ccmb(src: Path, out: Path, a):
    from ccmb.corpus.download import download

    t = time.perf_counter()
    summary = download([src], out, processes=a.processes, threads=a.threads, image_size=a.image_size,
                       resize_mode="keep_ratio", samples_per_shard=a.samples_per_shard, timeout=10, retries=1)
    return time.perf_counter() - t, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--distinct", type=int, default=200, help="distinct images served (cycled)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--samples-per-shard", type=int, default=500)
    a = ap.parse_args()

    images = make_images(a.distinct)
    server, base = serve(images)
    work = Path(tempfile.mkdtemp(prefix="ccmb-bench-download-"))
    src = work / "zero.jsonl"
    write_input(src, base, a.images)
    bare_t, ccmb_t, bare_cpu, ccmb_cpu, summaries = [], [], [], [], []
    try:
        import img2dataset  # noqa: F401  (import once, outside the timings, for both)
        import ccmb.corpus.download  # noqa: F401

        for r in range(a.repeats):
            for name in (("img2dataset", "ccmb") if r % 2 == 0 else ("ccmb", "img2dataset")):  # alternate order
                out = work / f"{name}-{r}"
                c0 = cpu_seconds()
                if name == "img2dataset":
                    bare_t.append(run_bare(src, out, a))
                else:
                    t, s = run_ccmb(src, out, a)
                    ccmb_t.append(t)
                    summaries.append(s)
                (bare_cpu if name == "img2dataset" else ccmb_cpu).append(cpu_seconds() - c0)
                print(f"repeat {r} {name:12s} {(bare_t if name == 'img2dataset' else ccmb_t)[-1]:7.2f}s wall "
                      f"{(bare_cpu if name == 'img2dataset' else ccmb_cpu)[-1]:7.2f}s cpu", flush=True)
        tar_bytes = sum(p.stat().st_size for p in (work / "ccmb-0").glob("*.tar"))
        pq_bytes = sum(p.stat().st_size for p in (work / "ccmb-0").glob("[0-9]*.parquet"))
        s = summaries[-1]
        mb, mc = statistics.median(bare_t), statistics.median(ccmb_t)
        print()
        print(f"images {a.images}, processes {a.processes}, threads {a.threads}, image size {a.image_size}, "
              f"samples/shard {a.samples_per_shard}, repeats {a.repeats}")
        print(f"img2dataset  median {mb:7.2f}s  ({a.images / mb:7.1f} images/s)  runs {[round(x, 2) for x in bare_t]}")
        print(f"ccmb         median {mc:7.2f}s  ({a.images / mc:7.1f} images/s)  runs {[round(x, 2) for x in ccmb_t]}")
        print(f"ratio ccmb / img2dataset (wall, median): {mc / mb:.3f}  (goal <= 1.10)")
        cb, cc = statistics.median(bare_cpu), statistics.median(ccmb_cpu)
        print(f"cpu seconds (all processes), median: img2dataset {cb:.2f}  ccmb {cc:.2f}  ratio {cc / cb:.3f}  "
              "(steadier than wall time on a busy machine)")
        print(f"ccmb successes {s.successes}/{s.rows}; {tar_bytes / max(1, s.successes) / 1024:.1f} KiB tar + "
              f"{pq_bytes / max(1, s.rows):.0f} B parquet per image")
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
