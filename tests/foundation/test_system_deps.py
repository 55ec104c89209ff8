"""`make test` on a bare machine: `.ci/system-deps` installs Chromium/Java with apt-get as root, otherwise stops
with a clear message before the suite; the Makefile runs it (and the lint gate) before pytest."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "system-deps"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")  # the script is bash


def _fake_bin(tmp_path: Path, uid: int, tools=()) -> Path:
    """A PATH with bash and cat, an `id` answering ``uid``, a logging `apt-get`, and fake ``tools``."""
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True)
    for name in ("bash", "cat"):
        os.symlink(shutil.which(name), bindir / name)
    log = tmp_path / "apt.log"
    scripts = {"id": f"echo {uid}", "apt-get": f'echo "$@" >> {log}'}
    scripts.update({t: "true" for t in tools})
    for name, body in scripts.items():
        (bindir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bindir / name).chmod(0o755)
    return bindir


def _run(bindir: Path, *args: str, **env: str):
    return subprocess.run([str(bindir / "bash"), str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": str(bindir), **env})


def test_root_installs_what_is_missing_with_apt_get(tmp_path):
    bindir = _fake_bin(tmp_path, uid=0)
    res = _run(bindir, "test")
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0].startswith("update")
    assert calls[1].startswith("install") and calls[1].split()[-2:] == ["chromium", "default-jre-headless"]


def test_nothing_to_do_when_everything_is_there(tmp_path):
    bindir = _fake_bin(tmp_path, uid=0, tools=("chromium", "java"))
    res = _run(bindir, "test")
    assert res.returncode == 0 and res.stderr == ""
    assert not (tmp_path / "apt.log").exists()  # idempotent: no apt-get when nothing is missing


def test_without_root_a_clear_message_and_a_stop(tmp_path):
    bindir = _fake_bin(tmp_path, uid=1000, tools=("java",))
    res = _run(bindir, "test")
    assert res.returncode == 1
    assert "missing chromium" in res.stderr and "apt-get install -y chromium" in res.stderr
    assert "CCMB_NO_BROWSER=1" in res.stderr
    assert not (tmp_path / "apt.log").exists()
    # The documented ways round it.
    assert _run(bindir, "test", CCMB_NO_BROWSER="1").returncode == 0
    assert _run(_fake_bin(tmp_path / "x", uid=1000), "test", SKIP_SYSTEM_DEPS="1").returncode == 0


def test_make_test_runs_system_deps_and_lint_before_pytest():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -n: print the commands in order, run nothing
    out = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    deps = next(i for i, line in enumerate(lines) if ".ci/system-deps test" in line)
    lint = next(i for i, line in enumerate(lines) if "ruff check" in line)
    tests = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert deps < lint < tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make" in ci and "test" in ci and "apt-get" not in ci  # CI is a one-line call of `make test`
