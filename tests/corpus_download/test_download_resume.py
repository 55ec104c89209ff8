"""Resume after ``kill -9``: no truncated shard survives and the final key set equals an uninterrupted run's."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccmb import shards
from ccmb.corpus import download as dl
from dl_helpers import write_jsonl, zero_record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

OPTS = ["--allow-private", "--processes", "1", "--threads", "2", "--image-size", "32", "--timeout", "5", "--retries", "0",
        "--samples-per-shard", "4"]


def _children(pid: int):
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""


def _keys(out: Path):
    samples = {s.key for s in shards.iter_samples(out)}
    rows = [r["key"] for p in sorted(out.glob("[0-9]*.parquet")) for r in shards.read_parquet(p).to_pylist()]
    return samples, rows


def test_resume_after_kill_9(tmp_path, image_server):
    b = image_server.base
    recs = [zero_record(i, f"{b}/slow/{i}.jpg" if i % 5 else f"{b}/404/{i}.jpg") for i in range(20)]
    src = write_jsonl(tmp_path / "zero.jsonl", recs)
    image_server.slow_s = 0.5

    killed = tmp_path / "killed"
    ccmb = str(Path(sys.executable).parent / "ccmb")
    cmd = [ccmb, "download", "zero", "-i", str(src), "-o", str(killed)] + OPTS
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 90
    workers = []
    while time.time() < deadline and proc.poll() is None:
        workers = [c for c in _children(proc.pid)] or workers
        if (killed / "00001_stats.json").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the download finished before it could be killed; make the routes slower"
    workers = _children(proc.pid) or workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the download workers die with their parent (no orphan keeps writing a shard)
    time.sleep(1.5)
    assert workers and not [(w, _cmdline(w)) for w in workers if _alive(w)]
    finished = shards.finished_shards(killed)
    assert 1 <= len(finished) < 5

    # resume with the same command: unfinished shards are removed and downloaded again
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    new = int(re.search(r"this run\s+(\d+) new images", res.stdout).group(1))
    assert new < 16  # finished shards were kept, not downloaded again

    fresh = tmp_path / "fresh"
    summary = dl.download([src], fresh, allow_private=True, processes=1, threads=2, image_size=32, timeout=5, retries=0,
                          samples_per_shard=4)
    assert summary.complete and summary.successes == 16
    k_samples, k_rows = _keys(killed)
    f_samples, f_rows = _keys(fresh)
    assert k_samples == f_samples and sorted(k_rows) == sorted(f_rows) and len(k_rows) == 20
    for out in (killed, fresh):
        report = shards.verify_shard_set(out)
        assert report.ok, report.problems
        assert not list(out.glob(".*tmp-*")) and not (out / "_tmp").exists()
    assert shards.read_sizes(killed) == shards.read_sizes(fresh)
