"""A full disk: one clear error line, a non-zero exit, and a folder that the same command resumes."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main
from ccmb.corpus import download as dl
from dl_helpers import write_jsonl, zero_record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SITE = Path(__file__).parent / "disk_full_site"
OPTS = ["--allow-private", "--processes", "1", "--threads", "4", "--image-size", "32", "--timeout", "5", "--retries", "0",
        "--samples-per-shard", "4"]


def _cmd(src: Path, out: Path):
    return [str(Path(sys.executable).parent / "ccmb"), "download", "zero", "-i", str(src), "-o", str(out)] + OPTS


def test_worker_disk_full_stops_with_one_line_and_resumes(tmp_path, image_server):
    """Writing shard 00001's tar fails with a real ENOSPC (/dev/full) inside the download worker."""
    b = image_server.base
    src = write_jsonl(tmp_path / "zero.jsonl", [zero_record(i, f"{b}/img/{i}.jpg") for i in range(12)])
    out = tmp_path / "out"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join([str(SITE)] + [p for p in os.environ.get("PYTHONPATH", "").split(
                   os.pathsep) if p]), CCMB_TEST_DISK_FULL=str(out / "00001.tar"))
    res = subprocess.run(_cmd(src, out), capture_output=True, text=True, env=env, timeout=240)
    text = res.stdout + res.stderr
    assert res.returncode != 0, text[-3000:]
    errors = [line for line in text.splitlines() if "disk full" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: disk full"), text[-3000:]
    assert "No space left on device" in errors[0] and "run the same command again" in errors[0]
    assert "Traceback" not in text and text.count("No space left on device") == 1, text[-3000:]
    assert not (out / "manifest.json").exists() and "00001" not in shards.finished_shards(out)

    # the same command without the fault resumes and completes
    env.pop("CCMB_TEST_DISK_FULL")
    res = subprocess.run(_cmd(src, out), capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "successes       12" in res.stdout
    report = shards.verify_shard_set(out)
    assert report.ok, report.problems
    assert sorted(s.key for s in shards.iter_samples(out)) == sorted(
        r["key"] for p in sorted(out.glob("[0-9]*.parquet")) for r in shards.read_parquet(p).to_pylist())


def test_driver_disk_full_is_one_error_line(tmp_path, image_server, monkeypatch):
    b = image_server.base
    src = write_jsonl(tmp_path / "zero.jsonl", [zero_record(i, f"{b}/img/{i}.jpg") for i in range(6)])
    out = tmp_path / "out"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "sizes.json"))

    monkeypatch.setattr(shards, "finalize_shard_set", full)
    res = CliRunner().invoke(main, ["download", "zero", "-i", str(src), "-o", str(out)] + OPTS)
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if "disk full" in line]
    assert len(errors) == 1 and errors[0] == res.output.splitlines()[-1], res.output
    assert errors[0].startswith(f"Error: disk full writing {out / 'sizes.json'} (No space left on device)")
    assert "Traceback" not in res.output
    monkeypatch.undo()
    summary = dl.download([src], out, allow_private=True, processes=1, threads=4, image_size=32, timeout=5, retries=0,
                          samples_per_shard=4)
    assert summary.complete and summary.successes == 6 and (out / "manifest.json").exists()
