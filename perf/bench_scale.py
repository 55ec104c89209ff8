"""Scaled curation simulation: in-process engine vs Spark local mode at a fixed small driver memory.

For each size (default 1M, 4M, 16M rows) a synthetic download folder (metadata only, the download parquet
format: img2dataset keys, realistic URLs with tracking-parameter variants, SHA-256, Chinese captions, sizes,
~5% failures; 10% exact repeats of an earlier row (same bytes, caption, URL or a utm_ variant of it) and
3% near-duplicate captions (one character changed)) is curated twice, each run a fresh process:

* ``local``: ``ccmb filter`` then ``ccmb dedup --keep filter.parquet`` with the url, sha256 and caption
  levels (pHash needs the images: timed separately by perf/bench_corpus.py);
* ``spark``: the same with ``--engine spark`` in local mode (``local[C]``, ``spark.driver.memory=1g``): the
  executors read the parquet files and write partitioned tables; nothing per row reaches the driver.

Reported per size and engine: wall time, rows/s per core, the peak RSS of the Python driver, of the JVM
(in local mode the executors live in the driver's JVM, so its heap cap bounds both) and of the whole
process tree (sampled every 0.2 s from /proc), and the drop counts (both engines must agree).

    python perf/bench_scale.py                              # 1M, 4M, 16M (hours on 2 cores)
    python perf/bench_scale.py --sizes 1M,2M,4M --engines local,spark --cores 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS_PER_FILE = 250_000
LEVELS = ("url", "sha256", "caption")

CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
engine, d, out, cores, driver_mem = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import pyarrow as pa
if engine == "local":
    pa.set_cpu_count(cores)
from ccmb.corpus.filter import filter_samples
from ccmb.corpus.dedup import dedup_samples
spark = None
t0 = time.perf_counter()
if engine == "spark":
    from ccmb.corpus.engine_spark import session
    spark = session(f"local[{{cores}}]", conf={{"spark.driver.memory": driver_mem,
                                                "spark.sql.shuffle.partitions": str(max(8, 4 * cores))}})
t1 = time.perf_counter()
f = filter_samples(d, out / "filter.parquet", engine=engine, spark=spark)
t2 = time.perf_counter()
dd = dedup_samples(d, out / "dedup.parquet", levels={levels!r}, keep_tables=[out / "filter.parquet"],
                   engine=engine, spark=spark)
t3 = time.perf_counter()
print(json.dumps(dict(start=t1 - t0, filter=t2 - t1, dedup=t3 - t2, rows=dd.rows, kept=dd.kept,
                      dropped=dd.dropped, maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * mult)


def _cjk_strings(codes, lengths):
    """A pyarrow string array from flat CJK code points (3 UTF-8 bytes each) and per-row lengths."""
    import numpy as np
    import pyarrow as pa

    utf8 = np.empty((len(codes), 3), np.uint8)
    utf8[:, 0] = 0xE0 | (codes >> 12)
    utf8[:, 1] = 0x80 | ((codes >> 6) & 0x3F)
    utf8[:, 2] = 0x80 | (codes & 0x3F)
    offsets = np.concatenate([[0], np.cumsum(lengths * 3)]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(lengths), [None, pa.py_buffer(offsets.tobytes()),
                                                             pa.py_buffer(utf8.tobytes())])


def make_folder(out: Path, rows: int, seed: int = 0) -> None:
    """The synthetic download folder (see the module docstring), ROWS_PER_FILE rows per parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ccmb.shards import PARQUET_SCHEMA

    hexchars = np.frombuffer(b"0123456789abcdef", np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    for f, lo in enumerate(range(0, rows, ROWS_PER_FILE)):
        rng = np.random.default_rng([seed, f])
        n = min(ROWS_PER_FILE, rows - lo)
        keys = pc.binary_join_element_wise(f"{f:05d}", pc.utf8_lpad(pa.array(np.arange(n)).cast(pa.string()), 6, "0"), "")
        raw = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
        lengths = rng.integers(12, 40, size=n)
        codes = rng.integers(0x4E00, 0x9FA5, size=int(lengths.sum()))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        src = np.maximum(0, np.arange(n) - rng.integers(1, 5000, size=n))  # an earlier row of the file
        u = rng.random(n)
        repeat = (u < 0.10) & (np.arange(n) > 0)
        near = (u >= 0.10) & (u < 0.13) & (np.arange(n) > 0)
        raw[repeat] = raw[src[repeat]]
        copy = repeat | near
        lengths[copy] = lengths[src[copy]]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        codes = np.resize(codes, int(lengths.sum()))
        rows_idx = np.flatnonzero(copy)  # copy the source caption (rows are in order: sources are final)
        for i in rows_idx:  # vectorising this would need sorted dependencies; it is a few % of rows
            codes[starts[i]: starts[i] + lengths[i]] = codes[starts[src[i]]: starts[src[i]] + lengths[i]]
        nr = np.flatnonzero(near)
        pos = starts[nr] + lengths[nr] // 2
        codes[pos] = 0x4E00 + (codes[pos] - 0x4E00 + 1) % (0x9FA5 - 0x4E00)
        caption = _cjk_strings(codes.astype(np.uint32), lengths)
        hexed = np.empty((n, 64), np.uint8)
        hexed[:, 0::2] = hexchars[raw >> 4]
        hexed[:, 1::2] = hexchars[raw & 15]
        offsets = pa.py_buffer(np.arange(0, 64 * n + 1, 64, dtype=np.int32).tobytes())
        sha = pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(hexed.tobytes())])
        host = pc.cast(pa.array(rng.integers(0, 200, n)), pa.string())
        url = pc.binary_join_element_wise("https://img", host, ".cdn-example.com/",
                                          pc.cast(pa.array(rng.integers(2010, 2024, n)), pa.string()), "/",
                                          pc.utf8_slice_codeunits(sha, 0, 20), ".jpg", "")
        # half the repeats at the source's URL (a utm_ variant: the URL level), half at a mirror (sha256 level)
        same_url = repeat & (rng.random(n) < 0.5)
        url = url.take(pa.array(np.where(same_url, src, np.arange(n))))
        url = pc.if_else(pa.array(same_url), pc.binary_join_element_wise(url, "?utm_source=feed", ""), url)
        w = rng.integers(80, 2000, size=n).astype(np.int32)
        h = (w * rng.uniform(0.4, 1.6, size=n)).astype(np.int32)
        ok = rng.random(n) < 0.95
        status = pc.if_else(pa.array(ok), "success", "failed_to_download")
        err = pc.if_else(pa.array(ok), pa.scalar(None, pa.string()), "HTTP Error 404: Not Found")
        cols = {"key": keys, "url": url, "title": caption, "caption": caption, "width": w, "height": h,
                "original_width": w, "original_height": h, "sha256": sha, "status": status, "error_message": err}
        table = pa.table({name: cols.get(name, pa.nulls(n, fld.type)) for name, fld in
                          zip(PARQUET_SCHEMA.names, PARQUET_SCHEMA)}).cast(PARQUET_SCHEMA)
        pq.write_table(table, out / f"{f:05d}.parquet")


def _tree(pid: int) -> Dict[int, int]:
    """{pid: ppid} of every process (from /proc)."""
    out = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as fh:
                    out[int(p)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    return out


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _is_java(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"java" in fh.read().split(b"\0")[0]
    except OSError:
        return False


class Sampler(threading.Thread):
    """Peak RSS of a process, of its JVM descendants and of its whole tree, sampled every ``period`` s."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak = {"driver_py": 0.0, "jvm": 0.0, "workers_py": 0.0, "tree": 0.0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            parents = _tree(self.pid)
            kids: Dict[int, List[int]] = {}
            for p, pp in parents.items():
                kids.setdefault(pp, []).append(p)
            desc, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                desc.append(p)
                todo += kids.get(p, [])
            rss = {p: _rss_mb(p) for p in desc}
            jvm = sum(v for p, v in rss.items() if p != self.pid and _is_java(p))
            now = {"driver_py": rss.get(self.pid, 0.0), "jvm": jvm,
                   "workers_py": sum(rss.values()) - rss.get(self.pid, 0.0) - jvm, "tree": sum(rss.values())}
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            self.stop.wait(self.period)


def run_one(engine: str, folder: Path, work: Path, cores: int, driver_mem: str, levels=LEVELS) -> Dict:
    work.mkdir(parents=True, exist_ok=True)
    code = CHILD.format(root=str(ROOT), levels=tuple(levels))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, engine, str(folder), str(work), str(cores), driver_mem],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = Sampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{engine} run failed:\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(wall=wall, peak=sampler.peak, cores=cores)
    res["work_seconds"] = res["filter"] + res["dedup"]
    res["rows_per_s_core"] = res["rows"] / res["work_seconds"] / cores
    res["driver_py_peak_mb"] = max(res["maxrss_mb"], sampler.peak["driver_py"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,4M,16M")
    ap.add_argument("--engines", default="local,spark")
    ap.add_argument("--cores", type=int, default=2, help="Spark local[C]; pyarrow threads in-process.")
    ap.add_argument("--driver-memory", default="1g")
    ap.add_argument("--workdir", default="/tmp/ccmb_bench_scale")
    ap.add_argument("--levels", default=",".join(LEVELS), help="Dedup levels (metadata ones).")
    ap.add_argument("--json", default=None, help="Also write the results here.")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    levels = tuple(args.levels.split(","))
    results = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        folder = workdir / f"download_{size}"
        if not (folder / ".complete").exists():
            t0 = time.perf_counter()
            make_folder(folder, size)
            (folder / ".complete").write_text("ok")
            print(f"generated {size} rows in {time.perf_counter() - t0:.0f}s", flush=True)
        for engine in args.engines.split(","):
            res = run_one(engine, folder, workdir / f"out_{size}_{engine}", args.cores, args.driver_memory,
                          levels)
            res.update(engine=engine, size=size)
            results.append(res)
            pk = res["peak"]
            print(f"{size:>10,} {engine:>6}: wall {res['wall']:7.1f}s (filter {res['filter']:.1f}, dedup "
                  f"{res['dedup']:.1f}, start {res['start']:.1f}), {res['rows_per_s_core']:>9,.0f} rows/s/core, "
                  f"driver py {res['driver_py_peak_mb']:6.0f} MB, jvm {pk['jvm']:6.0f} MB, workers "
                  f"{pk['workers_py']:6.0f} MB, tree {pk['tree']:6.0f} MB; dropped {res['dropped']}", flush=True)
    print("\nsize        engine   wall_s  rows/s/core  driver_py_MB  jvm_MB  tree_MB")
    for r in results:
        print(f"{r['size']:>10,}  {r['engine']:>6}  {r['wall']:7.1f}  {r['rows_per_s_core']:>11,.0f}  "
              f"{r['driver_py_peak_mb']:>12.0f}  {r['peak']['jvm']:>6.0f}  {r['peak']['tree']:>7.0f}")
    by = {}
    for r in results:
        by.setdefault(r["size"], {})[r["engine"]] = r
    for size, d in by.items():
        if len(d) == 2:
            same = d["local"]["dropped"] == d["spark"]["dropped"]
            ratio = d["local"]["rows_per_s_core"] / d["spark"]["rows_per_s_core"]
            print(f"{size:>10,}: drop counts agree: {same}; in-process / Spark rows/s per core: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
