"""ccmb.outdir: ownership markers, the one-writer lock, outputs inside inputs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccmb import outdir


def test_claim_new_empty_and_own_folder(tmp_path: Path) -> None:
    new = outdir.claim(tmp_path / "a" / "b", "demo")
    assert outdir.owner(new)["kind"] == "demo"
    empty = tmp_path / "empty"
    empty.mkdir()
    outdir.claim(empty, "demo")
    (new / "x.txt").write_text("made by the demo")
    assert outdir.claim(new, "demo") == new  # its own marker: accepted again


def test_claim_refuses_user_folder_and_other_kind(tmp_path: Path) -> None:
    user = tmp_path / "work"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.txt").write_text("years of work")
    with pytest.raises(outdir.OutputFolderError, match=r"work.*not empty.*thesis.txt|work.*not empty.*sub"):
        outdir.claim(user, "demo")
    assert (user / "thesis.txt").read_text() == "years of work"
    with pytest.raises(outdir.OutputFolderError):
        outdir.clear(user, "demo")
    assert (user / "thesis.txt").exists()
    other = outdir.claim(tmp_path / "other", "build-shards")
    with pytest.raises(outdir.OutputFolderError, match="build-shards output, not a demo"):
        outdir.claim(other, "demo")
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(outdir.OutputFolderError, match="not a folder"):
        outdir.claim(afile, "demo")


def test_claim_legacy_and_clear(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "commands.sh").write_text("#!/bin/sh\n")
    outdir.claim(old, "demo", legacy=lambda p: (p / "commands.sh").exists())
    (old / "deep").mkdir()
    (old / "deep" / "f").write_text("1")
    outdir.clear(old, "demo")
    assert sorted(p.name for p in old.iterdir()) == [outdir.OWNER_FILE]


def test_refuse_inside(tmp_path: Path) -> None:
    dl = tmp_path / "download"
    dl.mkdir()
    for bad in (dl, dl / "shards", dl / "x" / "t.parquet"):
        with pytest.raises(outdir.OutputFolderError, match="inside the download folder"):
            outdir.refuse_inside(bad, [dl], "download")
    outdir.refuse_inside(tmp_path / "download2", [dl, None], "download")  # a sibling with a common prefix


def test_lock_refuses_second_writer_and_dies_with_holder(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with outdir.FolderLock(folder, "ccmb test-one"):
        with pytest.raises(outdir.OutputFolderError, match=r"another run.*pid %d.*ccmb test-one" % os.getpid()):
            outdir.FolderLock(folder, "ccmb test-two").acquire()
    with outdir.FolderLock(folder, "again"):  # released on exit
        pass
    # a holder in another process; killed, its lock goes with it
    code = ("import sys, time; from ccmb.outdir import FolderLock; FolderLock(sys.argv[1], 'holder').acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(outdir.OutputFolderError, match=r"pid %d.*'holder'" % proc.pid):
            outdir.FolderLock(folder).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 5
    while True:
        try:
            outdir.FolderLock(folder).acquire().release()
            break
        except outdir.OutputFolderError:
            assert time.time() < deadline
            time.sleep(0.05)


def test_a_lock_dies_with_its_holder_even_while_forked_children_live(tmp_path):
    """DataLoader workers and pool processes are forked with the lock's descriptor: they close their copy at
    once, so a killed holder's lock is free although its orphaned children still run."""
    script = (
        "import os, sys, time\n"
        "from ccmb.outdir import FolderLock\n"
        "lock = FolderLock(sys.argv[1], 'holder').acquire()\n"
        "if os.fork() == 0:\n"
        "    time.sleep(30); os._exit(0)\n"
        "print('locked', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(outdir.OutputFolderError, match="another run is writing"):
            outdir.FolderLock(tmp_path).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)
        outdir.FolderLock(tmp_path).acquire().release()  # the child still lives, the lock is free
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
