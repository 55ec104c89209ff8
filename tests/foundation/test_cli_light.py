"""`--help` of both commands stays fast: no heavy library is imported to render it, and it answers within 1 s.

The module check is the deterministic part; the timing is a median of 3 subprocess runs against a budget
of 1 s on a machine where a bare ``python -c "import click"`` takes 50 ms, and proportionally more where that takes
longer (a loaded 2-core CI machine), so load alone does not fail it; heavy imports fail the module check anyway.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import click
import pytest

from ccmb.clikit import input_errors_as_click, parse_key_values, setup_logging

# Imported for --help, these would cost from 0.1 s (numpy) to seconds (torch, pyspark).
HEAVY = ("pyarrow", "numpy", "PIL", "pandas", "scipy", "sklearn", "torch", "transformers", "pyspark", "img2dataset",
         "webdataset")
# `ccmb --help` imports the ccmb command modules (shards.py needs pyarrow, hence numpy); nothing heavier:
# import scipy, torch & co. inside the functions that use them.
HEAVY_FOR_CCMB = ("scipy", "sklearn", "torch", "transformers", "pyspark", "img2dataset", "webdataset")

PROBE = """
import json, sys
from click.testing import CliRunner
from {module} import main
res = CliRunner().invoke(main, ["--help"])
assert res.exit_code == 0, res.output
print(json.dumps(sorted(sys.modules)))
"""

HELP_BUDGET_S = 1.0
BARE_NOMINAL_S = 0.05  # `python -c "import click"` on an idle machine; the budget grows in proportion above it


def _loaded_after_help(module: str):
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _median_seconds(argv, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t0)
        assert out.returncode == 0, out.stderr
    return statistics.median(times)


def test_bench_help_loads_no_heavy_module_and_no_ccmb_commands():
    loaded = _loaded_after_help("ccmb_bench.cli")
    heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY))
    assert not heavy, f"`ccmb-bench --help` imports {heavy}"
    back_edge = sorted(m for m in loaded if m == "ccmb.cli" or m.startswith("ccmb.cli."))
    assert not back_edge, f"`ccmb-bench --help` imports the ccmb command modules: {back_edge}"


def test_ccmb_help_loads_no_model_stack():
    loaded = _loaded_after_help("ccmb.cli")
    heavy = sorted({m.split(".")[0] for m in loaded} & set(HEAVY_FOR_CCMB))
    assert not heavy, f"`ccmb --help` imports {heavy}: import them inside the functions that use them"


@pytest.mark.parametrize("package", ["ccmb", "ccmb_bench"])
def test_help_answers_within_a_second(package):
    bare = _median_seconds([sys.executable, "-c", "import click"])
    budget = HELP_BUDGET_S * max(1.0, bare / BARE_NOMINAL_S)
    took = _median_seconds([sys.executable, "-m", package, "--help"])
    assert took < budget, f"`python -m {package} --help`: median {took:.2f} s > {budget:.2f} s (bare {bare:.2f} s)"


def test_clikit_is_light():
    out = subprocess.run([sys.executable, "-c", "import json, sys, ccmb.clikit; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    ours = sorted(m for m in loaded if m.split(".")[0] in ("ccmb", "models", "ccmb_bench"))
    assert ours == ["ccmb", "ccmb.clikit"], ours


def test_parse_key_values():
    assert parse_key_values(()) == {}
    assert parse_key_values(["num_images=1000", " images =a=b", "empty="]) == {
        "num_images": "1000", "images": "a=b", "empty": ""}
    assert parse_key_values(["k=1", "k=2"]) == {"k": "2"}  # the later one wins
    for bad in ("novalue", "=x", "  =x"):
        with pytest.raises(click.BadParameter, match="expected KEY=VALUE") as info:
            parse_key_values(["ok=1", bad], param_hint="--param")
        assert repr(bad) in str(info.value.message)


def test_both_clis_use_the_one_parser():
    import ccmb_bench.cli
    from ccmb.cli import main as ccmb_main
    from click.testing import CliRunner

    res = CliRunner().invoke(ccmb_main, ["datasets", "info", "icr", "--root", ".", "-p", "oops"])
    assert res.exit_code == 2 and "expected KEY=VALUE, got 'oops'" in res.output, res.output
    # `ccmb-bench run -p` parses after importing the whole runner: check the wiring, not a full run.
    assert ccmb_bench.cli.parse_key_values is parse_key_values
    assert not hasattr(ccmb_bench.cli, "_params")


def test_input_errors_become_click_errors(caplog):
    @click.command()
    @click.argument("what")
    @input_errors_as_click
    def cmd(what):
        if what == "value":
            raise ValueError("bad setting 'x' (config.json:3)")
        if what == "missing":
            raise FileNotFoundError("no such file: a.jsonl")
        raise RuntimeError("a bug")

    from click.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(cmd, ["value"])
    assert res.exit_code == 1 and "Error: bad setting 'x' (config.json:3)" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cmd, ["missing"])
    assert res.exit_code == 1 and "Error: no such file: a.jsonl" in res.output
    res = runner.invoke(cmd, ["bug"])  # not an input error: stays an exception
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)


def test_setup_logging_levels(monkeypatch):
    import logging

    monkeypatch.delenv("CCMB_LOG_LEVEL", raising=False)
    for verbose, level in ((0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG), (5, logging.DEBUG)):
        setup_logging(verbose)
        assert logging.getLogger().level == level
    monkeypatch.setenv("CCMB_LOG_LEVEL", "error")
    setup_logging(2)
    assert logging.getLogger().level == logging.ERROR
    setup_logging(0)
    monkeypatch.delenv("CCMB_LOG_LEVEL")
    setup_logging(0)
