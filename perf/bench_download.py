"""Benchmark ``ccmb download`` (its polite, safe defaults) in one run, on loopback servers (threads of this script):

1. **CPU per image, one host**: bare ``img2dataset.download`` against ``ccmb download zero`` with the new defaults
   (robots.txt, opt-out headers, per-host pacing 4 at once / 10 per second, host groups, md5 + sha256, the
   address guard: only ``--allow-private`` because the server is on 127.0.0.1) on the same Zero JSON-lines input,
   same knobs (processes, threads, image size, keep_ratio, shard size, no EXIF). Pacing makes the ccmb run last
   longer (one host: 10 images/s); CPU seconds of every process (this script, its reaped workers) are compared
   per stored image. Goal: <= 1.10.
2. **Throughput over 20 hosts**: 20 servers on 127.0.0.2-21, each answering after ``--latency`` seconds (web-like),
   the input spread over them: ``ccmb download`` with the default pacing against the same run unpaced (host limits
   lifted, no host groups). Goal: paced / unpaced images per second >= 0.8.

Repeats are interleaved (alternating which goes first); medians are printed with every run.

    python perf/bench_download.py --images 400 --host-images 1000 --repeats 3

Reading part 2: with pacing, a host serves at most min(4 / latency, 10) images/s, and each worker covers its own
host group; paced matches unpaced as long as hosts x 4 >= threads x processes and hosts x 10/s >= the unpaced rate
(on the open web, with thousands of hosts, both hold). With 20 hosts, 2 processes x 16 threads and 0.5 s answers:
unpaced <= 64 images/s, paced <= 20 x 8 = 160.
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
    for _ in range(n_distinct):
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


def serve(images, host: str = "127.0.0.1", latency: float = 0.0):
    """A loopback image server: ``/img/N.jpg`` (after ``latency`` seconds); anything else 404 (robots.txt too)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            last = self.path.rsplit("/", 1)[-1].split(".")[0]
            if not self.path.startswith("/img/") or not last.isdigit():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if latency:
                time.sleep(latency)
            body = images[int(last) % len(images)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


def write_input(path: Path, bases, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            base = bases[i % len(bases)]
            fh.write(json.dumps({"Url": f"{base}/page/{i}", "Title": f"标题{i}", "Content": f"内容{i}",
                                 "Keywords": f"关键词{i}", "ImageKey": f"k{i}", "ImageUrl": f"{base}/img/{i}.jpg",
                                 "ImageQuery": f"查询{i}"}, ensure_ascii=False) + "\n")


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the download workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_bare(src: Path, out: Path, a) -> int:
    import img2dataset

    img2dataset.download(
        url_list=str(src), input_format="jsonl", url_col="ImageUrl", caption_col="Title",
        save_additional_columns=["Content", "ImageQuery", "Keywords", "ImageKey", "Url"], output_folder=str(out),
        output_format="webdataset", processes_count=a.processes, thread_count=a.threads, image_size=a.image_size,
        resize_mode="keep_ratio", number_sample_per_shard=a.samples_per_shard, timeout=10, retries=1,
        extract_exif=False, compute_hash=None, enable_wandb=False, user_agent_token="ccmb-bench")
    return sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))


def run_ccmb(src: Path, out: Path, a, **extra) -> int:
    from ccmb.corpus.download import download

    summary = download([src], out, processes=a.processes, threads=a.threads, image_size=a.image_size,
                       resize_mode="keep_ratio", samples_per_shard=a.samples_per_shard, allow_private=True, **extra)
    return summary.successes


UNPACED = dict(host_concurrency=1024, host_rate=1e6, host_groups=0)


def timed(fn, *args, **kw):
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = fn(*args, **kw)
    return n, time.perf_counter() - t0, cpu_seconds() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400, help="images of part 1 (one host)")
    ap.add_argument("--host-images", type=int, default=1000, help="images of part 2 (spread over --hosts)")
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--latency", type=float, default=0.5,
                    help="seconds each of the part-2 hosts takes to answer (web-like; loopback answers at once)")
    ap.add_argument("--distinct", type=int, default=200, help="distinct images served (cycled)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--samples-per-shard", type=int, default=500)
    a = ap.parse_args()

    images = make_images(a.distinct)
    one, one_base = serve(images)
    many = [serve(images, f"127.0.0.{2 + i}", a.latency) for i in range(a.hosts)]
    work = Path(tempfile.mkdtemp(prefix="ccmb-bench-download-"))
    src1, src2 = work / "one_host.jsonl", work / "hosts.jsonl"
    write_input(src1, [one_base], a.images)
    write_input(src2, [base for _, base in many], a.host_images)
    import img2dataset  # noqa: F401  (imported once, outside the timings, for both)
    import ccmb.corpus.download.flow  # noqa: F401

    try:
        cpu = {"img2dataset": [], "ccmb": []}
        for r in range(a.repeats):
            for name in (("img2dataset", "ccmb") if r % 2 == 0 else ("ccmb", "img2dataset")):
                fn = run_bare if name == "img2dataset" else run_ccmb
                n, wall, c = timed(fn, src1, work / f"one-{name}-{r}", a)
                cpu[name].append(c / max(1, n))
                print(f"one host   repeat {r} {name:12s} {n} images {wall:7.2f}s wall {c:7.2f}s cpu "
                      f"{1000 * c / max(1, n):6.2f} ms cpu/image", flush=True)
        rate = {"paced": [], "unpaced": []}
        for r in range(a.repeats):
            for name in (("unpaced", "paced") if r % 2 == 0 else ("paced", "unpaced")):
                extra = UNPACED if name == "unpaced" else {}
                n, wall, c = timed(run_ccmb, src2, work / f"hosts-{name}-{r}", a, **extra)
                rate[name].append(n / wall)
                print(f"{a.hosts} hosts   repeat {r} {name:12s} {n} images {wall:7.2f}s wall {n / wall:7.1f} images/s "
                      f"{c:7.2f}s cpu", flush=True)
        tar = sum(p.stat().st_size for p in (work / "one-ccmb-0").glob("*.tar"))
        stored = sum(json.loads(p.read_text())["successes"] for p in (work / "one-ccmb-0").glob("[0-9]*_stats.json"))
        cb, cc = statistics.median(cpu["img2dataset"]), statistics.median(cpu["ccmb"])
        pu, pp = statistics.median(rate["unpaced"]), statistics.median(rate["paced"])
        print()
        print(f"processes {a.processes}, threads {a.threads}, image size {a.image_size}, samples/shard "
              f"{a.samples_per_shard}, repeats {a.repeats}; part 1: {a.images} images on 1 host; part 2: "
              f"{a.host_images} images on {a.hosts} hosts answering after {a.latency:g}s")
        print(f"1. cpu per image, one host (median): img2dataset {1000 * cb:.2f} ms  ccmb (defaults) {1000 * cc:.2f} ms"
              f"  ratio {cc / cb:.3f}  (goal <= 1.10)")
        print(f"2. throughput over {a.hosts} hosts (median): unpaced {pu:.1f} images/s  paced (defaults) {pp:.1f} "
              f"images/s  ratio {pp / pu:.3f}  (goal >= 0.8)")
        print(f"stored: {tar / max(1, stored) / 1024:.1f} KiB of tar per image")
    finally:
        for server, _ in [(one, one_base)] + many:
            server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
