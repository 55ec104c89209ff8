"""Both console scripts answer --help and --version, as installed entry points."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ccmb import __version__
from ccmb.cli import main as ccmb_main
from ccmb_bench.cli import main as bench_main


@pytest.mark.parametrize("main,name", [(ccmb_main, "ccmb"), (bench_main, "ccmb-bench")])
def test_help_and_version(main, name):
    runner = CliRunner()
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output and "--verbose" in res.output
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output and name in res.output


def test_every_subcommand_has_help():
    runner = CliRunner()
    for main in (ccmb_main, bench_main):
        stack = [([], main)]
        while stack:
            path, cmd = stack.pop()
            res = runner.invoke(main, path + ["--help"])
            assert res.exit_code == 0, (path, res.output)
            for name, sub in getattr(cmd, "commands", {}).items():
                stack.append((path + [name], sub))


@pytest.mark.parametrize("script", ["ccmb", "ccmb-bench"])
def test_console_scripts_installed(script):
    exe = shutil.which(script) or str(__import__("pathlib").Path(sys.executable).parent / script)
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


def test_verbose_flag_sets_logging():
    import logging

    runner = CliRunner()
    res = runner.invoke(ccmb_main, ["-vv", "shards", "--help"])
    assert res.exit_code == 0
    assert logging.getLogger().level == logging.DEBUG
