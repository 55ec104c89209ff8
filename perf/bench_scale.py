"""Scaled curation simulation: the in-process engine vs Spark local mode at a fixed small driver memory.

For each size (default 1M, 4M, 16M rows) a synthetic download folder (metadata only, the download parquet
format, 250k rows per parquet in completion order as ``ccmb download`` writes them: img2dataset keys, URLs on
200 CDN hosts, SHA-256, Chinese captions, sizes;
~5% failures with null sha256/size as img2dataset writes them; 10% exact repeats of an earlier original row
(same bytes and caption; half at a ``utm_`` variant of its URL, half at a mirror URL) and 3% near-duplicate
captions (one character changed)) is curated by the ``ccmb`` CLI of this working tree, each step a fresh
process:

* ``local``: ``ccmb filter`` then ``ccmb dedup --keep filter.parquet`` with the url, sha256 and caption
  levels (pHash needs the images: timed by perf/bench_corpus.py); ``--memory-gb G`` is passed to every step
  whose ``--help`` offers it (the bounded-memory in-process engine);
* ``spark``: the same with ``--engine spark --spark-master local[C] --spark-conf spark.driver.memory=1g``
  (in local mode the executors live in the driver's JVM, so its heap cap bounds both).

Generation streams part by part (memory independent of the size) and is cached: a folder for a
(size, seed, generator version) under ``--work-dir`` is reused by later runs, and full parts of a smaller
cached folder of the same seed are hard-linked (part i is the same for every size).

Reported per size and engine: wall s (both steps, process start included), rows/s per core (rows / wall /
cores), rows per CPU second (the CPU time of the whole process tree: honest on a loaded machine), the peak
RSS of the driver Python process, of the JVM, of Python workers and of the whole tree (sampled every 0.2 s
from /proc), the mean 1-min load average during the run and the drop counts (both engines must agree).
Then the per-core ratio in-process/Spark per size and the slopes (s and MB per million rows, linear fit
over the sizes run).

    python perf/bench_scale.py                               # 1M, 4M, 16M, both engines (hours on 2 cores)
    python perf/bench_scale.py --sizes 1M --json /tmp/b1m.json
    python perf/bench_scale.py --sizes 16M --engines spark --levels url,sha256 --json /tmp/b16s.json
    python perf/bench_scale.py --report /tmp/b1m.json /tmp/b16s.json      # one table from earlier runs
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: Where the measured ``ccmb`` runs from: this working tree, or (``--at-commit``) an export of a commit.
CODE = ROOT

ROWS_PER_FILE = 250_000
LEVELS = ("url", "sha256", "caption")
ALL_LEVELS = ("url", "sha256", "phash", "caption")
GEN_VERSION = 3  # bump when make_part's output changes (the cache is keyed by it); 3: completion order
REPEAT_SHARE, NEAR_SHARE, FAIL_SHARE = 0.10, 0.03, 0.05
CJK_LO, CJK_HI = 0x4E00, 0x9FA5


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


def _sources(rng, n: int):
    """(repeat, near, src): which rows copy an earlier *original* row (never a copy: no chains) and which."""
    import numpy as np

    idx = np.arange(n)
    u = rng.random(n)
    repeat = u < REPEAT_SHARE
    near = (u >= REPEAT_SHARE) & (u < REPEAT_SHARE + NEAR_SHARE)
    repeat[0] = near[0] = False
    copy = repeat | near
    orig = np.flatnonzero(~copy)
    # searchsorted: the number of originals before row i; step back 1..5000 originals (clipped at the first)
    back = np.searchsorted(orig, idx[copy]) - rng.integers(1, 5000, size=int(copy.sum()))
    src = idx.copy()
    src[copy] = orig[np.maximum(back, 0)]
    return repeat, near, src


def make_part(f: int, n: int, seed: int = 0):
    """Part ``f`` of a synthetic download folder (``n`` rows) as a table of ``ccmb.shards.PARQUET_SCHEMA``.

    Depends only on (seed, f, n), so part f is the same in every folder of the seed. Fully vectorised. Rows
    are in *completion order* (a seeded permutation of the part's keys), as ``ccmb download`` writes them:
    img2dataset appends a row when its download finishes.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from ccmb.shards import PARQUET_SCHEMA

    rng = np.random.default_rng([seed, f])
    repeat, near, src = _sources(rng, n)
    copy = repeat | near
    keys = pc.binary_join_element_wise(f"{f:05d}", pc.utf8_lpad(pa.array(np.arange(n)).cast(pa.string()), 6, "0"),
                                       "")
    # captions: copies take their source's text (one gather: sources are originals), near ones change one char
    lengths = rng.integers(12, 40, size=n)
    lengths[copy] = lengths[src[copy]]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    codes = rng.integers(CJK_LO, CJK_HI, size=int(lengths.sum()))
    row = np.repeat(np.arange(n), lengths)
    codes = codes[starts[src][row] + (np.arange(len(codes)) - starts[row])]
    nr = np.flatnonzero(near)
    pos = starts[nr] + lengths[nr] // 2
    codes[pos] = CJK_LO + (codes[pos] - CJK_LO + 1) % (CJK_HI - CJK_LO)
    caption = _cjk_strings(codes.astype(np.uint32), lengths)
    # image bytes: repeats have their source's SHA-256
    raw = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    raw[repeat] = raw[src[repeat]]
    hexchars = np.frombuffer(b"0123456789abcdef", np.uint8)
    hexed = np.empty((n, 64), np.uint8)
    hexed[:, 0::2] = hexchars[raw >> 4]
    hexed[:, 1::2] = hexchars[raw & 15]
    offsets = pa.py_buffer(np.arange(0, 64 * n + 1, 64, dtype=np.int32).tobytes())
    sha = pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(hexed.tobytes())])
    host = pc.cast(pa.array(rng.integers(0, 200, n)), pa.string())
    url = pc.binary_join_element_wise("https://img", host, ".cdn-example.com/",
                                      pc.cast(pa.array(rng.integers(2010, 2024, n)), pa.string()), "/",
                                      pc.utf8_slice_codeunits(sha, 0, 20), ".jpg", "")
    # half the repeats at the source's URL with a utm_ parameter (the URL level), half at a mirror (sha256)
    same_url = repeat & (rng.random(n) < 0.5)
    url = url.take(pa.array(np.where(same_url, src, np.arange(n))))
    url = pc.if_else(pa.array(same_url), pc.binary_join_element_wise(url, "?utm_source=feed", ""), url)
    w = rng.integers(80, 2000, size=n).astype(np.int32)
    h = (w * rng.uniform(0.4, 1.6, size=n)).astype(np.int32)
    ok = pa.array(rng.random(n) >= FAIL_SHARE)
    null_int = pa.scalar(None, pa.int32())
    w, h = pc.if_else(ok, pa.array(w), null_int), pc.if_else(ok, pa.array(h), null_int)
    status = pc.if_else(ok, "success", "failed_to_download")
    err = pc.if_else(ok, pa.scalar(None, pa.string()), "HTTP Error 404: Not Found")
    cols = {"key": keys, "url": url, "title": caption, "caption": caption, "width": w, "height": h,
            "original_width": w, "original_height": h, "sha256": pc.if_else(ok, sha, pa.scalar(None, pa.string())),
            "status": status, "error_message": err}
    table = pa.table({name: cols.get(name, pa.nulls(n, fld.type)) for name, fld in
                      zip(PARQUET_SCHEMA.names, PARQUET_SCHEMA)}).cast(PARQUET_SCHEMA)
    return table.take(pa.array(np.random.default_rng([seed, f, 1]).permutation(n)))  # completion order


def folder_for(work_dir: Path, rows: int, seed: int) -> Path:
    return Path(work_dir) / f"download_{rows}_seed{seed}_v{GEN_VERSION}"


def make_folder(out: Path, rows: int, seed: int = 0, rows_per_file: int = ROWS_PER_FILE,
                reuse: Sequence[Path] = ()) -> None:
    """Write the synthetic download folder part by part (atomic writes; parts already there are kept, so an
    interrupted generation resumes). Parts of the same index and size in ``reuse`` folders (same seed and
    version: the same bytes) are hard-linked."""
    import pyarrow.parquet as pq

    from ccmb.atomic import commit, temp_path_for

    out.mkdir(parents=True, exist_ok=True)
    for f, lo in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - lo)
        dest = out / f"{f:05d}.parquet"
        if dest.exists():
            continue
        donor = next((d / dest.name for d in reuse if (d / dest.name).exists()
                      and pq.read_metadata(d / dest.name).num_rows == n), None)  # a short last part differs
        if donor is not None:
            try:
                os.link(donor, dest)
                continue
            except OSError:
                pass
        tmp = temp_path_for(dest)
        pq.write_table(make_part(f, n, seed), tmp)
        commit(tmp, dest)


def ensure_folder(work_dir: Path, rows: int, seed: int) -> Path:
    """The cached folder for (rows, seed), generated when missing; returns its path."""
    folder = folder_for(work_dir, rows, seed)
    marker = folder / "_bench_complete.json"
    if marker.exists():
        return folder
    # full parts of smaller/larger cached folders of the same seed (a part of 250k rows is the same in all)
    reuse = [d for d in Path(work_dir).glob(f"download_*_seed{seed}_v{GEN_VERSION}")
             if d != folder and (d / "_bench_complete.json").exists()]
    t0 = time.perf_counter()
    make_folder(folder, rows, seed, reuse=reuse)
    marker.write_text(json.dumps({"rows": rows, "seed": seed, "version": GEN_VERSION}))
    print(f"generated {rows:,} rows in {time.perf_counter() - t0:.0f}s: {folder}", flush=True)
    return folder


# ---------------------------------------------------------------- measuring a process tree from /proc

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int):
    """(ppid, cpu seconds) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return None


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


def _load1() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


class Sampler(threading.Thread):
    """Peak RSS of a process, of its JVM descendants, of other (Python worker) descendants and of the whole
    tree; the CPU seconds of every process of the tree seen; the 1-min load average. Every ``period`` s."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak = {"driver_py": 0.0, "jvm": 0.0, "workers_py": 0.0, "tree": 0.0}
        self.cpu: Dict[int, float] = {}
        self.loads: List[float] = []
        self.stop = threading.Event()

    def sample(self) -> None:
        stats = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                st = _proc_stat(int(p))
                if st is not None:
                    stats[int(p)] = st
        kids: Dict[int, List[int]] = {}
        for p, (pp, _) in stats.items():
            kids.setdefault(pp, []).append(p)
        desc, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            desc.append(p)
            todo += kids.get(p, [])
        for p in desc:
            if p in stats:
                self.cpu[p] = max(self.cpu.get(p, 0.0), stats[p][1])
        rss = {p: _rss_mb(p) for p in desc}
        jvm = sum(v for p, v in rss.items() if p != self.pid and _is_java(p))
        now = {"driver_py": rss.get(self.pid, 0.0), "jvm": jvm,
               "workers_py": sum(rss.values()) - rss.get(self.pid, 0.0) - jvm, "tree": sum(rss.values())}
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)
        self.loads.append(_load1())

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period)


# ---------------------------------------------------------------- one curation step, one engine run

def ccmb_cmd() -> List[str]:
    """The ``ccmb`` CLI of ``CODE`` (run there, first on the path; not whatever is installed)."""
    return [sys.executable, "-m", "ccmb"]


def _env() -> Dict[str, str]:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    env["PYTHONPATH"] = str(CODE) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def export_commit(ref: str, work_dir: Path) -> Path:
    """The committed tree of ``ref`` exported (``git archive``) under ``work_dir``: measures a commit, not the
    uncommitted edits of a shared working tree."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    dest = Path(work_dir) / f"src_{sha[:12]}"
    if not (dest / ".exported").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", "--format=tar", sha], capture_output=True, cwd=ROOT, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        (dest / ".exported").write_text(sha)
    return dest


def ccmb_location() -> str:
    """Where the measured runs import ccmb from (a check that ``CODE`` is what runs)."""
    return subprocess.run([sys.executable, "-c", "import ccmb; print(ccmb.__file__)"], capture_output=True,
                          text=True, env=_env(), cwd=CODE, check=True).stdout.strip()


def has_option(command: str, option: str) -> bool:
    """Whether ``ccmb COMMAND --help`` lists ``option`` (e.g. ``--memory-gb``, added by a newer engine)."""
    out = subprocess.run(ccmb_cmd() + [command, "--help"], capture_output=True, text=True, env=_env(),
                         cwd=CODE, check=True).stdout
    return re.search(rf"(^|\s){re.escape(option)}[\s,=]", out) is not None


def parse_summary(stdout: str) -> Dict:
    """``rows N, kept K, dropped D`` and the ``  reason: count`` lines a curation command prints."""
    m = re.search(r"^rows (\d+), kept (\d+), dropped (\d+)", stdout, re.M)
    if not m:
        raise RuntimeError(f"no summary line in the command's output:\n{stdout[-2000:]}")
    reasons = dict((r, int(c)) for r, c in re.findall(r"^  (\S+): (\d+)$", stdout[m.end():], re.M))
    return {"rows": int(m.group(1)), "kept": int(m.group(2)), "dropped": reasons}


def run_step(args: List[str], timeout_s: Optional[float], log: Path) -> Dict:
    """Run one CLI step in a fresh process group; wall, peaks, CPU seconds, load, its summary."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(ccmb_cmd() + args, stdout=subprocess.PIPE, stderr=err, text=True, env=_env(),
                                cwd=CODE, start_new_session=True)
        sampler = Sampler(proc.pid)
        sampler.start()
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started (driver, JVM, workers)
            out, _ = proc.communicate()
        sampler.stop.set()
        sampler.join()
    res = {"wall": time.perf_counter() - t0, "peak": dict(sampler.peak), "cpu_s": sum(sampler.cpu.values()),
           "load1": sum(sampler.loads) / max(1, len(sampler.loads)), "timed_out": timed_out}
    if timed_out:
        return res
    if proc.returncode:
        raise RuntimeError(f"ccmb {' '.join(args)} failed ({proc.returncode}); log {log}:\n"
                           f"{log.read_text()[-3000:]}")
    res.update(parse_summary(out))
    return res


def run_engine(engine: str, folder: Path, out: Path, cores: int, driver_mem: str, levels: Sequence[str],
               memory_gb: Optional[float], spark_conf: Sequence[str], timeout_s: Optional[float],
               mem_flag: Dict[str, bool]) -> Dict:
    """``ccmb filter`` then ``ccmb dedup --keep`` with one engine; the two steps' measurements combined."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    common = ["--input", str(folder), "--engine", engine]
    extra: Dict[str, List[str]] = {"filter": [], "dedup": []}
    if engine == "spark":
        conf = [f"spark.driver.memory={driver_mem}", *spark_conf]
        for step in extra:
            extra[step] = ["--spark-master", f"local[{cores}]"] + [a for c in conf for a in ("--spark-conf", c)]
    elif memory_gb is not None:
        for step in extra:
            if mem_flag[step]:
                extra[step] = ["--memory-gb", str(memory_gb)]
    dedup_levels = [f"--{lv}" if lv in levels else f"--no-{lv}" for lv in ALL_LEVELS]
    steps = {"filter": ["filter", *common, "--output", str(out / "filter.parquet"), *extra["filter"]],
             "dedup": ["dedup", *common, "--output", str(out / "dedup.parquet"), "--keep", str(out / "filter.parquet"),
                       *dedup_levels, *extra["dedup"]]}
    res: Dict = {"engine": engine, "levels": list(levels), "cores": cores, "steps": {},
                 "memory_gb": memory_gb if engine == "local" and any(mem_flag.values()) else None,
                 "driver_memory": driver_mem if engine == "spark" else None,
                 "spark_conf": list(spark_conf) if engine == "spark" else []}
    left = timeout_s
    for name, args in steps.items():
        step = run_step(args, left, out / f"{name}.log")
        res["steps"][name] = step
        if left is not None:
            left = max(1.0, left - step["wall"])
        if step["timed_out"]:
            break
    done = list(res["steps"].values())
    res["timed_out"] = any(s["timed_out"] for s in done)
    res["wall"] = sum(s["wall"] for s in done)
    res["cpu_s"] = sum(s["cpu_s"] for s in done)
    res["load1"] = sum(s["load1"] * s["wall"] for s in done) / max(res["wall"], 1e-9)
    res["peak"] = {k: max(s["peak"][k] for s in done) for k in done[0]["peak"]}
    if not res["timed_out"]:
        d = res["steps"]["dedup"]
        res["rows"] = d["rows"]
        res["dropped"] = dict(d["dropped"])
        res["rows_per_s_core"] = d["rows"] / res["wall"] / cores
        res["rows_per_cpu_s"] = d["rows"] / res["cpu_s"] if res["cpu_s"] else None
    return res


# ---------------------------------------------------------------- report

def fit(xs: Sequence[float], ys: Sequence[float]):
    """(slope, intercept) of the least-squares line, or None with fewer than two distinct x."""
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def slopes(results: List[Dict]) -> Dict[str, Dict]:
    """Per (engine, levels): per million rows, seconds and MB of each peak (linear fit over the sizes run)."""
    out: Dict[str, Dict] = {}
    groups: Dict[str, List[Dict]] = {}
    for r in results:
        if not r.get("timed_out"):
            groups.setdefault(f"{r['engine']} {'+'.join(r['levels'])}", []).append(r)
    for name, rs in groups.items():
        xs = [r["size"] / 1e6 for r in rs]
        lines = {"wall_s": fit(xs, [r["wall"] for r in rs]), "cpu_s": fit(xs, [r["cpu_s"] for r in rs])}
        lines.update({f"{k}_mb": fit(xs, [r["peak"][k] for r in rs]) for k in ("driver_py", "jvm", "tree")})
        if all(v is not None for v in lines.values()):
            out[name] = {k: {"per_million": v[0], "fixed": v[1]} for k, v in lines.items()}
            out[name]["sizes"] = sorted({r["size"] for r in rs})
            out[name]["max_mb"] = {k: max(r["peak"][k] for r in rs) for k in ("driver_py", "jvm", "tree")}
    return out


def report(results: List[Dict]) -> Dict:
    """Print the table, the per-core ratios and the slopes; return the ratios and slopes."""
    print("\n| rows | engine | levels | wall s | rows/s per core | rows per CPU s | driver Python MB | JVM MB | "
          "tree MB | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        pk = r["peak"]
        eng = "in-process" + (f" --memory-gb {r['memory_gb']:g}" if r.get("memory_gb") else "") \
            if r["engine"] == "local" else f"Spark local[{r['cores']}], driver {r['driver_memory']}"
        if r.get("timed_out"):
            rate = cpu_rate = "timed out"
        else:
            rate, cpu_rate = f"{r['rows_per_s_core']:,.0f}", f"{r['rows_per_cpu_s']:,.0f}"
        print(f"| {r['size']:,} | {eng} | {'+'.join(r['levels'])} | {r['wall']:,.1f} | {rate} | {cpu_rate} | "
              f"{pk['driver_py']:,.0f} | {pk['jvm']:,.0f} | {pk['tree']:,.0f} | {r['load1']:.1f} |")
    ratios = []
    by: Dict[tuple, Dict[str, Dict]] = {}
    for r in results:
        if not r.get("timed_out"):
            by.setdefault((r["size"], tuple(r["levels"])), {})[r["engine"]] = r
    print()
    for (size, levels), d in sorted(by.items()):
        if len(d) == 2:
            same = d["local"]["dropped"] == d["spark"]["dropped"]
            ratio = d["local"]["rows_per_s_core"] / d["spark"]["rows_per_s_core"]
            ratios.append({"size": size, "levels": list(levels), "in_process_over_spark_per_core": ratio,
                           "drops_agree": same})
            print(f"{size:>12,} {'+'.join(levels)}: drop counts agree: {same}; rows/s per core in-process / "
                  f"Spark = {ratio:.2f}x")
    sl = slopes(results)
    for name, s in sl.items():
        print(f"slopes {name} over {', '.join(f'{x:,}' for x in s['sizes'])} rows, per million rows: "
              f"{s['wall_s']['per_million']:+.1f} s (fixed {s['wall_s']['fixed']:.1f} s), "
              f"{s['cpu_s']['per_million']:+.1f} CPU s, driver Python {s['driver_py_mb']['per_million']:+.0f} MB, "
              f"JVM {s['jvm_mb']['per_million']:+.0f} MB, tree {s['tree_mb']['per_million']:+.0f} MB")
    return {"ratios": ratios, "slopes": sl, "targets": targets(results, sl)}


#: Issue 24's goals: in-process peak flat within 10% (with --memory-gb 2), Spark driver flat, in-process CPU
#: per million rows no worse than the 33.5 s measured before, Spark per-core cost within 3x at the largest size.
FLAT_SHARE, CPU_PER_MILLION, SPARK_FACTOR = 0.10, 33.5, 3.0


def _size_mb(size: int, mb: float) -> str:
    return f"{size:,}: {mb:,.0f}"


def targets(results: List[Dict], sl: Dict[str, Dict]) -> Dict:
    """Print the goals against what was measured (peak memory per size, the spread, the CPU slope, Spark's
    per-row cost relative to in-process at the largest size run by both)."""
    done = [r for r in results if not r.get("timed_out")]
    out: Dict[str, Dict] = {}
    print("\ntargets:")
    for engine, peak in (("local", "driver_py"), ("spark", "driver_py")):
        rs = sorted((r for r in done if r["engine"] == engine), key=lambda r: r["size"])
        if len(rs) < 2:
            continue
        mb = [r["peak"][peak] for r in rs]
        spread = max(mb) / min(mb) - 1
        out[f"{engine}_peak"] = {"sizes": [r["size"] for r in rs], "mb": mb, "spread": spread}
        print(f"  {'in-process' if engine == 'local' else 'Spark driver'} peak Python MB at "
              f"{', '.join(_size_mb(r['size'], m) for r, m in zip(rs, mb))}: spread {100 * spread:.1f}% "
              f"({'within' if spread <= FLAT_SHARE else 'ABOVE'} {100 * FLAT_SHARE:.0f}%)")
    for name, s in sl.items():
        if name.startswith("local"):
            cpu = s["cpu_s"]["per_million"]
            out["local_cpu_per_million"] = cpu
            print(f"  in-process CPU s per million rows (slope): {cpu:.1f} ({'<=' if cpu <= CPU_PER_MILLION else '>'} "
                  f"{CPU_PER_MILLION})")
    sizes = {r["size"] for r in done if r["engine"] == "local"} & {r["size"] for r in done if r["engine"] == "spark"}
    if sizes:
        size = max(sizes)
        loc = next(r for r in done if r["engine"] == "local" and r["size"] == size)
        spk = next(r for r in done if r["engine"] == "spark" and r["size"] == size)
        by_cpu = spk["cpu_s"] / loc["cpu_s"]
        by_wall = loc["rows_per_s_core"] / spk["rows_per_s_core"]
        out["spark_factor"] = {"size": size, "cpu": by_cpu, "wall_per_core": by_wall}
        print(f"  Spark / in-process per row at {size:,} rows: {by_cpu:.2f}x by CPU seconds, {by_wall:.2f}x by "
              f"rows/s per core ({'within' if min(by_cpu, by_wall) <= SPARK_FACTOR else 'ABOVE'} "
              f"{SPARK_FACTOR:.0f}x)")
    return out


def extrapolate(sl: Dict[str, Dict], bench_cores: int, rows_list: Sequence[int], cores_list: Sequence[int]) -> Dict:
    """Time and peak memory at other sizes from the slopes: linear in rows; Spark's per-row work linear in
    cores (its fixed cost is not divided), the in-process engine's not (one process, the cores measured).
    Also from the CPU-second slopes (what an idle machine would take: Spark's CPU spread over the cores)."""
    out: Dict[str, Dict] = {}
    print("\nextrapolation (linear in rows; Spark's per-row time / (cores / bench cores); fixed cost kept):")
    for name, s in sl.items():
        spark = name.startswith("spark")
        for rows in rows_list:
            m = rows / 1e6
            # a peak that did not grow over the sizes run (slope <= 0: noise) is taken as flat at its largest
            peaks = {k: max(s[f"{k}_mb"]["fixed"] + s[f"{k}_mb"]["per_million"] * m, s["max_mb"][k])
                     for k in ("driver_py", "jvm", "tree")}
            for cores in (cores_list if spark else [bench_cores]):
                per_row = s["wall_s"]["per_million"] * m * (bench_cores / cores if spark else 1)
                total = s["wall_s"]["fixed"] + per_row
                # from CPU seconds (an idle machine): Spark's spread over the cores, in-process's on one
                cpu_row = s["cpu_s"]["per_million"] * m / (cores if spark else 1)
                cpu_total = max(0.0, s["cpu_s"]["fixed"]) / (cores if spark else 1) + cpu_row
                out[f"{name} {rows} {cores}"] = {"engine": name, "rows": rows, "cores": cores, "hours": total / 3600,
                                                 "per_row_s": per_row, "fixed_s": s["wall_s"]["fixed"],
                                                 "hours_from_cpu": cpu_total / 3600, "peak_mb": peaks}
                print(f"  {name:28s} {rows:>13,} rows on {cores:>3} cores: {total / 3600:6.2f} h from wall "
                      f"({per_row / 60:,.1f} min + {s['wall_s']['fixed']:.0f} s fixed), {cpu_total / 3600:6.2f} h "
                      f"from CPU s; peaks if linear: driver Python {peaks['driver_py'] / 1024:,.1f} GB, JVM "
                      f"{peaks['jvm'] / 1024:,.1f} GB, tree {peaks['tree'] / 1024:,.1f} GB")
    return out


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1M,4M,16M")
    ap.add_argument("--engines", default="local,spark")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2,
                    help="Spark local[C]; rows/s per core divides by it for both engines.")
    ap.add_argument("--driver-memory", default="1g", help="spark.driver.memory of the Spark runs.")
    ap.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                    help="Extra Spark setting for the Spark runs (repeatable).")
    ap.add_argument("--memory-gb", type=float, default=2.0,
                    help="Budget passed to the in-process steps whose --help offers --memory-gb.")
    ap.add_argument("--work-dir", "--workdir", dest="work_dir", default="/tmp/ccmb_bench_scale",
                    help="Generated folders (cached by size+seed) and the runs' outputs.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", default=",".join(LEVELS), help="Dedup levels (metadata ones).")
    ap.add_argument("--timeout-s", type=float, default=None, help="Kill a run (its process group) after this.")
    ap.add_argument("--at-commit", default=None, metavar="REF",
                    help="Measure the committed code of REF (exported under --work-dir), not the working tree.")
    ap.add_argument("--code-dir", default=None, metavar="DIR",
                    help="Measure the ccmb in DIR (e.g. a snapshot of a working tree), not this working tree.")
    ap.add_argument("--json", default=None, help="Also write the results here.")
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="Print one table from earlier --json files (runs nothing).")
    ap.add_argument("--extrapolate", default="23M,250M", help="Sizes the slopes are extrapolated to.")
    ap.add_argument("--target-cores", default="16,160", help="Spark cores of the extrapolation (1 x 16, 10 x 16).")
    args = ap.parse_args()
    targets = [parse_size(s) for s in args.extrapolate.split(",")]
    target_cores = [int(c) for c in args.target_cores.split(",")]
    if args.report:
        results = [r for p in args.report for r in json.loads(Path(p).read_text())["results"]]
        summary = report(results)
        extrapolate(summary["slopes"], results[0]["cores"], targets, target_cores)
        return
    work_dir = Path(args.work_dir)
    levels = tuple(args.levels.split(","))
    unknown = set(levels) - set(ALL_LEVELS)
    if unknown:
        ap.error(f"--levels: unknown {sorted(unknown)} (metadata levels: {', '.join(ALL_LEVELS)})")
    engines = args.engines.split(",")
    global CODE
    if args.at_commit:
        CODE = export_commit(args.at_commit, work_dir)
        code_desc = f"commit {CODE.name[4:]}"
    elif args.code_dir:
        CODE = Path(args.code_dir).resolve()
        code_desc = f"code in {CODE}"
    else:
        code_desc = f"working tree at {_git_head()} (+ uncommitted edits)"
    mem_flag = {step: "local" in engines and has_option(step, "--memory-gb") for step in ("filter", "dedup")}
    print(f"ccmb of {code_desc}: {ccmb_location()}; --memory-gb offered by: "
          f"{[s for s, v in mem_flag.items() if v] or 'none'}", flush=True)
    results = []
    meta = {"git": code_desc, "cores": args.cores, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        folder = ensure_folder(work_dir, size, args.seed)
        for engine in engines:
            res = run_engine(engine, folder, work_dir / f"out_{size}_{engine}", args.cores, args.driver_memory,
                             levels, args.memory_gb, args.spark_conf, args.timeout_s, mem_flag)
            res.update(size=size, git=meta["git"])
            results.append(res)
            pk = res["peak"]
            steps = ", ".join(f"{k} {v['wall']:.1f}s" for k, v in res["steps"].items())
            rate = "TIMED OUT" if res["timed_out"] else f"{res['rows_per_s_core']:,.0f} rows/s/core"
            print(f"{size:>12,} {engine:>6}: wall {res['wall']:7.1f}s ({steps}), {rate}, cpu {res['cpu_s']:.0f}s, "
                  f"driver py {pk['driver_py']:,.0f} MB, jvm {pk['jvm']:,.0f} MB, workers {pk['workers_py']:,.0f} MB, "
                  f"tree {pk['tree']:,.0f} MB, load {res['load1']:.1f}; dropped {res.get('dropped')}", flush=True)
            if args.json:  # after every run: a killed series keeps what it measured
                Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    summary = report(results)
    summary["extrapolation"] = extrapolate(summary["slopes"], args.cores, targets, target_cores)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, **summary}, indent=1))


if __name__ == "__main__":
    main()
