"""Cost of the integrity checks (issue 17 item 2, issue 10 item 1): ours next to the unchecked baseline.

On a synthetic download folder (``--shards`` x ``--rows`` rows, 1 in 32 a failure, tiny JPEGs):

1. ``verify_shard_set(decode_images=False)``: tar checks only (the baseline: what ``ccmb verify`` did before
   it checked parquets) vs. tar + parquet checks (full parquet read, keys and values against each sample's
   ``.json``, counts against ``_stats.json``).
2. ``load_metadata(dir, ["key", "status"])`` (what filter/dedup/build-shards read) with and without the
   per-parquet check of ``list_parquets`` (footer, schema, row count vs ``_stats.json``).
3. Reading every sample of the tars: the one reader (``iter_tar_samples`` -> ``sample_from_members``, bounded
   JSON) vs. the previous inline reader (``json.loads``).

Medians of ``--repeats`` runs, one process, warm page cache.

    python perf/bench_integrity.py
    python perf/bench_integrity.py --shards 16 --rows 5000 --repeats 5
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from ccmb import shardverify, shards  # noqa: E402
from ccmb.corpus.tables import folder as table  # noqa: E402


def make_folder(out: Path, n_shards: int, rows: int) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 30, 200)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    for s in range(n_shards):
        with shards.ShardWriter(out, s, source="bench.jsonl") as w:
            for i in range(rows):
                key = shards.make_key(s, i, rows)
                meta = {"url": f"http://example.com/{s}/{i}.jpg", "title": f"第{i}张图片的标题", "content": "内容" * 8,
                        "query": "查询", "width": 32, "height": 32}
                if i % 32 == 5:
                    w.write_failure(dict(meta, key=key), "failed_to_download", "HTTP 404")
                else:
                    w.write(key, jpeg, meta["title"], meta)
    shards.finalize_shard_set(out)


def old_reader(tar_path: Path) -> int:
    """The reader ``iter_tar_samples`` had before the one sample reader (json.loads, no depth bound)."""
    n, current, parts = 0, None, {}
    with tarfile.open(tar_path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
            if key != current:
                if current is not None:
                    json.loads(parts["json"].decode("utf-8"))
                    n += 1
                current, parts = key, {}
            parts[ext.lower()] = tar.extractfile(member).read()
    if current is not None:
        json.loads(parts["json"].decode("utf-8"))
        n += 1
    return n


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "dl"
        make_folder(d, args.shards, args.rows)
        n = args.shards * args.rows
        tars = shards.list_shards(d)
        print(f"{args.shards} shards x {args.rows} rows = {n} rows; medians of {args.repeats}")
        print(f"{'step':<44}{'baseline s':>12}{'ours s':>10}{'ratio':>8}")

        def verify(parquets: bool):
            saved = shardverify.expects_parquets
            shardverify.expects_parquets = (lambda folder: False) if not parquets else saved
            try:
                report = shardverify.verify_shard_set(d, decode_images=False)
                assert report.ok, report.problems[:3]
            finally:
                shardverify.expects_parquets = saved

        def metadata(checked: bool):
            saved = shards.check_parquet
            if not checked:
                shards.check_parquet = lambda path: 0
            try:
                table.read_columns(d, ["key", "status"])
            finally:
                shards.check_parquet = saved

        rows = [
            ("verify --no-images (tars | tars + parquets)", lambda: verify(False), lambda: verify(True)),
            ("load_metadata key,status (unchecked | checked)", lambda: metadata(False), lambda: metadata(True)),
            ("read every sample (json.loads | one reader)", lambda: [old_reader(t) for t in tars],
             lambda: [sum(1 for _ in shards.iter_tar_samples(t)) for t in tars]),
        ]
        for name, base, ours in rows:
            b, o = timed(base, args.repeats), timed(ours, args.repeats)
            print(f"{name:<44}{b:>12.3f}{o:>10.3f}{o / b:>7.2f}x")


if __name__ == "__main__":
    main()
