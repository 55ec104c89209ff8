"""A model family from another package: the plug-in example of docs/bench.md ("Plug-ins"), written out from the
doc, pip-installed into a folder of its own (``--no-deps --target``, the shared venv untouched) and used through
its entry point by ``ccmb-bench models`` and ``ccmb-bench run`` in subprocesses."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "bench.md"


def plugin_files() -> dict:
    """``{relative path: text}`` of the code blocks marked ``<!-- plugin-file: PATH -->`` in docs/bench.md."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"<!-- plugin-file: (\S+) -->\n```[a-z]*\n(.*?)\n```", text, flags=re.S)
    return {path: body + "\n" for path, body in found}


def _install(package: Path, target: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                           "--target", str(target), str(package)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _bench(env, *args, check=True):
    done = subprocess.run([sys.executable, "-m", "ccmb_bench", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    files = plugin_files()
    assert set(files) == {"pyproject.toml", "ccmb_colourhist/__init__.py"}, sorted(files)
    base = tmp_path_factory.mktemp("plugin")
    package = base / "ccmb-colourhist"
    for rel, body in files.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(body, encoding="utf-8")
    target = base / "site"
    _install(package, target)
    assert (target / "ccmb_colourhist" / "__init__.py").is_file()
    assert list(target.glob("ccmb_colourhist-*.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(target)]),
           "CCMB_HOME": str(base / "home")}
    return env, base


def test_plugin_is_listed_by_ccmb_bench_models(plugin_env):
    env, _ = plugin_env
    rows = json.loads(_bench(env, "models", "--json").stdout)
    row = next(r for r in rows if r["name"] == "colourhist-6")
    assert row["kind"] == "colourhist" and row["plugin"] == "colourhist = ccmb_colourhist"
    assert row["size"] == "no weights"
    assert any(r["name"] == "altclip" for r in rows)  # the built-in families are still there
    assert "plug-in: colourhist = ccmb_colourhist" in _bench(env, "models").stdout


def test_plugin_runs_by_name_and_by_directory(plugin_env, bench_root):
    env, base = plugin_env
    out = base / "out"
    _bench(env, "run", "-m", "colourhist-6", "-d", "flickr30k-cna", "-r", bench_root, "-o", out, "--bootstrap", "20")
    res = json.loads(next((out / "results").glob("colourhist-6__*flickr30k-cna*.json")).read_text(encoding="utf-8"))
    assert res["model_kind"] == "colourhist" and res["checkpoint_fingerprint"] == "bins6"
    assert 0 <= res["metrics"]["MR"] <= 100 and res["metrics"]["t2i_queries"] > 0
    folder = base / "my-colours"
    folder.mkdir()
    (folder / "colourhist.json").write_text('{"bins": 12}', encoding="utf-8")
    _bench(env, "run", "-m", folder, "-d", "icm", "-r", bench_root, "-o", out, "--bootstrap", "0")
    res = json.loads(next((out / "results").glob("my-colours__*icm*.json")).read_text(encoding="utf-8"))
    assert res["model_kind"] == "colourhist" and res["checkpoint_fingerprint"] == "bins12"
    assert 0 <= res["metrics"]["AUC"] <= 100


def test_a_broken_plugin_is_skipped_with_a_warning(plugin_env, tmp_path):
    """An entry point whose module does not import is named in a warning; the other families still work."""
    env, _ = plugin_env
    site = tmp_path / "broken"
    dist = site / "ccmb_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ccmb-broken\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[ccmb_bench.adapters]\nbroken = ccmb_no_such_module\n", encoding="utf-8")
    env = {**env, "PYTHONPATH": env["PYTHONPATH"] + os.pathsep + str(site)}
    done = _bench(env, "models", "--json")
    assert "plug-in broken (ccmb_no_such_module): cannot be loaded" in done.stderr
    names = [r["name"] for r in json.loads(done.stdout)]
    assert "colourhist-6" in names and "r2d2-vitl14" in names
