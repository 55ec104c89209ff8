"""Object storage next to local disk: the same shard set read from a local folder and from an S3 API server on
127.0.0.1 (moto's server, started here, stopped by its pid), in one run, interleaved, medians printed as ratios.

1. **trainer data pipeline** (the target: object storage <= 1.5x the local cost): ``ShardStream`` through a
   DataLoader (``--workers`` processes), 256-px JPEGs decoded, cropped to 224, tokenised, batches of 32;
2. **tar streaming alone** (no decoding): every sample of every tar through the trainer's tar reader, to show
   the I/O part by itself;
3. **verify --no-images** (one read per tar: checksum, members, parquets);
4. **build-shards** (the target too: <= 1.5x): the same set as a download folder (its NNNNN.parquet/.tar) with
   a keep-everything decision table made once per side, ``build_shards`` into a fresh output each run (plan,
   tar index, every sample read by offset from the source tars and written into new tars, manifest), all
   input and output on the side's storage (on S3: byte ranges read concurrently a chunk ahead, each shard
   published by a background thread while the next one is written, objects published whole);
5. **build-shards --shuffle**: the same with a shuffled plan (each output shard reads scattered samples).

Both sides run the same code (``ccmb.storage`` picks the local or the fsspec path); the S3 side pays HTTP,
signing and the server's own CPU on the same machine (reported: the server's CPU seconds per run).

    python perf/bench_storage.py
    python perf/bench_storage.py --samples 4000 --repeats 5 --workers 2
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "perf"))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def settle() -> None:
    """Before each timed run (untimed, both sides): flush the disk write-back and the garbage of the run before.

    A local build fsyncs its files, but the kernel's journal and metadata write-back of its 17 MiB goes on
    after it returns, and without this fell inside the next timed run, which is an S3 one in every repeat
    (measured: an S3 build after an unrelated 17 MiB fsync'd local write took 0.785 s, 0.745 s with a sync
    between, the same as with nothing before it)."""
    os.sync()
    gc.collect()


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_UPLOADER = """
import sys
from ccmb import storage
for path, url in zip(sys.argv[1::2], sys.argv[2::2]):
    with open(path, "rb") as src, storage.atomic_open(url) as dst:
        while True:
            chunk = src.read(1 << 16)
            if not chunk:
                break
            dst.write(chunk)
"""


def overlap_check(local: Path, server, build, repeats: int) -> None:
    """The local build alone, and while a child process uploads the same tars to the S3 server."""
    import subprocess

    tars = sorted(local.glob("*.tar"))
    times: Dict[str, List[float]] = {"alone": [], "with upload": []}
    for r in range(repeats):
        for mode in ("alone", "with upload"):
            argv = [a for i, p in enumerate(tars) for a in (str(p), server.url("bench", f"overlap-{r}", p.name))]
            child = (subprocess.Popen([sys.executable, "-c", _UPLOADER, *argv], env={**os.environ, "PYTHONPATH": str(ROOT)})
                     if mode == "with upload" else None)
            t0 = time.perf_counter()
            build(local)()
            times[mode].append(time.perf_counter() - t0)
            if child is not None and child.wait() != 0:
                raise SystemExit("the upload child failed")
    alone, both = statistics.median(times["alone"]), statistics.median(times["with upload"])
    print(f"overlap check: local build-shards alone {alone:.3f} s, while another process uploads the same "
          f"{sum(p.stat().st_size for p in tars) / 2**20:.1f} MiB to the server {both:.3f} s ({both / alone:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the trainer pipeline")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--samples-per-shard", type=int, default=500, help="of the build-shards outputs")
    ap.add_argument("--only", choices=["build"], default=None,
                    help="build: only the two build-shards rows (large --samples without the trainer's minutes)")
    ap.add_argument("--overlap-check", action="store_true",
                    help="also: the local build alone vs while another process uploads the same tars to the server "
                         "(what the two cores can carry when upload and build do not share a process)")
    args = ap.parse_args()

    import torch

    from ccmb import shardverify, storage
    from models.tokenizer import load_tokenizer, write_test_vocab
    from models.train.augment import TrainTransform
    from models.train.data import ShardStream, Tokenize, make_loader, resolve_shards, tar_samples
    from bench_train import make_shard_set  # the same synthetic 256-px set, in 4 shards
    from s3_server import start_server

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="ccmb-bench-storage-"))
    server = start_server(tmp)
    os.environ.update(server.env)
    try:
        local = make_shard_set(tmp / "shards", args.samples)
        remote = server.url("bench", "shards")
        for p in sorted(local.iterdir()):
            storage.write_bytes(storage.join(remote, p.name), p.read_bytes())
        total_bytes = sum(p.stat().st_size for p in local.glob("*.tar"))
        tokenize = Tokenize(load_tokenizer(write_test_vocab(tmp / "tok"), max_length=64), 64)
        transform = TrainTransform(args.image_size)
        n_batches = args.samples // args.batch

        def pipeline(spec) -> Callable[[], int]:
            def run() -> int:
                stream = ShardStream(resolve_shards(spec), args.batch, transform, tokenize, text_choice="random",
                                     seed=0, shuffle_buffer=1000, resampled=False)
                n = 0
                for i, b in enumerate(make_loader(stream, args.workers)):
                    n += b["pixel_values"].shape[0]
                    if i + 1 == n_batches:
                        break
                return n
            return run

        def streaming(spec) -> Callable[[], int]:
            def run() -> int:
                urls = ({"url": u} for u in resolve_shards(spec))
                return sum(1 for _ in tar_samples(urls))
            return run

        import pyarrow as pa

        from ccmb.corpus import api
        from ccmb.corpus.tables.folder import read_columns
        from ccmb.corpus.tables.schema import DECISION_SCHEMA
        from ccmb.corpus.tables.writer import write_table

        keep = {}
        for side, spec in (("local", local), ("s3", remote)):
            base = tmp / "build" if side == "local" else server.url("bench", "build")
            keep[str(spec)] = storage.join(base, "filter.parquet")
            keys = read_columns(spec, ["key"]).column("key")
            cols = {f.name: pa.nulls(len(keys), f.type) for f in DECISION_SCHEMA}
            cols.update(key=keys, keep=pa.array([True] * len(keys)))
            write_table(keep[str(spec)], pa.table(cols), kind="filter", source=spec)  # keeps every sample
        runs = iter(range(1_000_000))

        def build(spec, shuffle: bool = False) -> Callable[[], int]:
            def run() -> int:
                base = tmp / "build" if not storage.is_url(spec) else server.url("bench", "build")
                out = storage.join(base, f"out-{next(runs)}")
                summary = api.build_shards(spec, out, keep_tables=[keep[str(spec)]],
                                           samples_per_shard=args.samples_per_shard, shuffle=shuffle)
                return summary.samples
            return run

        def build_shuffled(spec) -> Callable[[], int]:
            return build(spec, shuffle=True)

        def verify(spec) -> Callable[[], int]:
            def run() -> int:
                report = shardverify.verify_shard_set(spec, decode_images=False)
                assert report.ok, report.problems
                return report.samples
            return run

        sections = [("trainer data pipeline", pipeline, "samples/s"),
                    ("tar streaming alone", streaming, "samples/s"),
                    ("verify --no-images", verify, "samples/s"),
                    ("build-shards", build, "samples/s"),
                    ("build-shards --shuffle", build_shuffled, "samples/s")]
        if args.only == "build":
            sections = [sec for sec in sections if sec[0].startswith("build-shards")]
        results: Dict[str, Dict[str, List[float]]] = {}
        srv_cpu: Dict[str, List[float]] = {}
        own_cpu: Dict[str, Dict[str, List[float]]] = {}
        load0 = os.getloadavg()[0]
        for title, make, _ in sections:  # warm-up: imports, page cache, the server's first requests
            make(local)()
            make(remote)()
        for _ in range(args.repeats):
            for title, make, _ in sections:
                for side, spec in (("local", local), ("s3", remote)):
                    settle()
                    c0, o0 = server_cpu(server.pid), time.process_time()
                    t0 = time.perf_counter()
                    n = make(spec)()
                    dt = time.perf_counter() - t0
                    results.setdefault(title, {}).setdefault(side, []).append(dt)
                    own_cpu.setdefault(title, {}).setdefault(side, []).append(time.process_time() - o0)
                    if side == "s3":
                        srv_cpu.setdefault(title, []).append(server_cpu(server.pid) - c0)
                    assert n > 0
        load1 = os.getloadavg()[0]
        print(f"{args.samples} samples (256-px JPEG, {total_bytes / 2**20:.1f} MiB of tars in 4 shards); "
              f"S3 = moto server on 127.0.0.1 (pid {server.pid}); medians of {args.repeats}; "
              f"trainer: {args.workers} DataLoader workers, batch {args.batch}, {args.image_size}-px crops; "
              f"load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores")
        print(f"{'step':34s} {'local s':>9s} {'s3 s':>9s} {'ratio':>7s} {'local /s':>10s} {'s3 /s':>10s} "
              f"{'server CPU s':>13s} {'own CPU s (local / s3)':>23s}")
        n_items = {"trainer data pipeline": n_batches * args.batch}
        for title, _, unit in sections:
            loc = statistics.median(results[title]["local"])
            rem = statistics.median(results[title]["s3"])
            n = n_items.get(title, args.samples)
            own = own_cpu[title]
            print(f"{title:34s} {loc:9.3f} {rem:9.3f} {rem / loc:6.2f}x {n / loc:10.1f} {n / rem:10.1f} "
                  f"{statistics.median(srv_cpu[title]):13.2f} "
                  f"{statistics.median(own['local']):11.2f} / {statistics.median(own['s3']):.2f}")
        print("own CPU: this process (threads included; not the DataLoader workers); server CPU: the S3 server's")
        for title in [t for t in ("trainer data pipeline", "build-shards") if t in results]:
            ratio = statistics.median(results[title]["s3"]) / statistics.median(results[title]["local"])
            print(f"target: {title} from object storage <= 1.50x the local cost: {ratio:.2f}x, "
                  f"{'met' if ratio <= 1.5 else 'NOT met'}")
        if args.overlap_check:
            overlap_check(local, server, build, args.repeats)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
