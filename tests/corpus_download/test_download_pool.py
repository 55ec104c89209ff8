"""The download process pool never hangs: the 16-shard shape finishes, dead workers and full disks end the run."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ccmb.corpus.download import glue as dl_img2dataset
from ccmb.corpus.download.glue import DiskFullError, pool_distributor
from stress_pool import one_run


class _Task:
    """A picklable stand-in for img2dataset's Downloader: records each row it finishes in ``folder``."""

    def __init__(self, folder: Path, die_on=None, full_on=None) -> None:
        self.folder, self.die_on, self.full_on = str(folder), die_on, full_on

    def __call__(self, row):
        time.sleep(0.05)
        marker = Path(self.folder) / f"died-{row}"
        if row == self.die_on and not marker.exists():
            marker.touch()
            os._exit(1)  # a worker killed mid-shard (OOM killer, kill -9)
        if row == self.full_on:
            raise DiskFullError("No space left on device (test)")
        (Path(self.folder) / f"done-{row}").touch()
        return True, row


def _done(folder: Path):
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("done-*"))


@pytest.mark.timeout(120)
def test_a_dead_worker_fails_its_shards_which_are_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(dl_img2dataset, "SHARDS_PER_POOL", 2)  # several pool generations
    pool_distributor(2, _Task(tmp_path, die_on=5), iter(range(12)), None, 1)
    assert _done(tmp_path) == list(range(12))
    assert (tmp_path / "died-5").exists()


class _Timed:
    """Records when each shard ran (start, end) in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def __call__(self, row):
        start = time.time()
        time.sleep(0.3)
        (Path(self.folder) / f"ran-{row[0]}").write_text(f"{start} {time.time()}")
        return True, row


@pytest.mark.timeout(120)
def test_one_shard_of_a_host_group_at_a_time(tmp_path):
    from ccmb.corpus.download.grouping import ShardLanes

    lanes = ShardLanes((0, 1, 0, 1, 0, 1, 2, 2))
    pool_distributor(2, _Timed(tmp_path), iter([(i, f"s{i}") for i in range(8)]), None, 1, lanes=lanes)
    spans = {i: tuple(map(float, (tmp_path / f"ran-{i}").read_text().split())) for i in range(8)}
    for a in range(8):
        for b in range(a + 1, 8):
            overlap = min(spans[a][1], spans[b][1]) - max(spans[a][0], spans[b][0])
            if lanes.lane_of(a) == lanes.lane_of(b):
                assert overlap <= 0, (a, b)  # the same group: one after the other
    assert any(min(spans[a][1], spans[b][1]) > max(spans[a][0], spans[b][0])
               for a in range(8) for b in range(a + 1, 8))  # two groups did run at once


@pytest.mark.timeout(120)
def test_disk_full_stops_the_run(tmp_path):
    with pytest.raises(DiskFullError, match="No space left"):
        pool_distributor(1, _Task(tmp_path, full_on=3), iter(range(40)), None, 1)
    assert len(_done(tmp_path)) < 10  # no new shard started after it (one may have been queued)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sixteen_shards_two_processes_finish_every_time(tmp_path, image_server):
    """The shape that hung 2 of 2 times with PR_SET_PDEATHSIG workers (32 rows, 2 per shard, 2 processes).

    ``tests/corpus_download/stress_pool.py --runs 20`` runs it 20 times."""
    for i in range(3):
        ok, seconds, note = one_run(image_server.base, tmp_path / f"run{i}", limit_s=240)
        assert ok, f"run {i + 1}: {note} after {seconds:.0f}s"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_exits_non_zero_at_once(tmp_path, image_server):
    """img2dataset's SIGINT handler exits with status 0; an interrupted download must not look finished."""
    import signal
    import subprocess
    import sys

    from dl_helpers import write_jsonl, zero_record

    src = write_jsonl(tmp_path / "zero.jsonl", [zero_record(i, f"{image_server.base}/slow/{i}.jpg")
                                                for i in range(40)])
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "ccmb"), "download", "zero", "-i", str(src), "-o", str(out),
           "--processes", "1", "--threads", "2", "--samples-per-shard", "4", "--image-size", "32", "--allow-private"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    deadline = time.monotonic() + 200
    while not (out / "00000_stats.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Aborted!" in output, output[-2000:]
    assert not (out / "manifest.json").exists()
