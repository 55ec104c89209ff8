"""Issue 23: result JSONs and per-query files are read bounded and checked. A 400-digit integer, deep nesting,
a FIFO named *.json, a link to /dev/zero, a link out of the folder, an oversized file, a per_query_file
pointing outside its folder, an .npz whose header declares a terabyte: each is one warning naming the file,
and the rest of the leaderboard (rank groups included) and of compare still works: no hang, no traceback,
bounded memory (the command runs in a child process with a time and an address-space limit)."""
from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ccmb_bench.resultfiles import UnsafeFileError, read_json, read_npz, real_root

from lb_helpers import matching_pq, res, write_with_per_query

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 6 << 30  # address space of the child: a read of /dev/zero would hit it, not the machine


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def bench(*args, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ccmb_bench", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=_limited)


def _npz_with_header(path: Path, shape) -> None:
    """An .npz whose single array header declares ``shape`` of float64, with 8 bytes of data."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': %r, }" % (tuple(shape),)
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 8
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pairs/score.npy", npy)
    path.write_bytes(buf.getvalue())


@pytest.fixture
def hostile(tmp_path):
    out = tmp_path / "bench"
    rng = np.random.default_rng(0)
    good = matching_pq(rng, 300, 2.0)
    write_with_per_query(out / "a", "good-a", "icm", "val", "matching", good)
    write_with_per_query(out / "b", "good-b", "icm", "val", "matching", matching_pq(rng, 300, 0.0))
    bad = out / "bad"
    bad.mkdir()
    template = res("x", "icm", "val", "matching", {"AUC": 50.0})
    text = json.dumps(template)
    (bad / "big_int.json").write_text(text.replace('"AUC": 50.0', '"AUC": 1' + "0" * 400), encoding="utf-8")
    (bad / "deep.json").write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    (bad / "deep_metrics.json").write_text(text.replace('"AUC": 50.0', '"AUC": ' + "[" * 500 + "]" * 500),
                                           encoding="utf-8")
    os.mkfifo(bad / "fifo.json")
    os.symlink("/dev/zero", bad / "zero.json")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "r.json").write_text(text, encoding="utf-8")
    os.symlink(outside / "r.json", bad / "link_out.json")
    (bad / "huge.json").write_text('{"schema": "' + "a" * (17 << 20) + '"}', encoding="utf-8")
    # usable results whose per-query file is not: their row stays, without a rank group
    r = res("pq-outside", "icm", "val", "matching", {"AUC": 60.0})
    r["per_query_file"] = "../../../elsewhere/x.npz"
    (bad / "pq_outside.json").write_text(json.dumps(r), encoding="utf-8")
    r = res("pq-bomb", "icm", "val", "matching", {"AUC": 61.0})
    r["per_query_file"] = "bomb.npz"
    (bad / "pq_bomb.json").write_text(json.dumps(r), encoding="utf-8")
    _npz_with_header(bad / "bomb.npz", (1 << 40,))
    r = res("pq-zero", "icm", "val", "matching", {"AUC": 62.0})
    r["per_query_file"] = "zero.npz"
    (bad / "pq_zero.json").write_text(json.dumps(r), encoding="utf-8")
    os.symlink("/dev/zero", bad / "zero.npz")
    names = ["big_int.json", "deep.json", "deep_metrics.json", "fifo.json", "zero.json", "link_out.json",
             "huge.json", "pq_outside.json", "pq_bomb.json", "pq_zero.json"]
    return out, names


def test_leaderboard_survives_hostile_files(hostile, tmp_path):
    out, names = hostile
    html = tmp_path / "lb.html"
    proc = bench("leaderboard", "--results", out, "--html", html, "--csv", tmp_path / "lb.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln]
    for name in names:
        hits = [ln for ln in warnings if f"/{name}" in ln]
        assert len(hits) == 1, (name, warnings)
    reasons = {name: next(ln for ln in warnings if f"/{name}" in ln) for name in names}
    assert "digits" in reasons["big_int.json"] and "nested deeper" in reasons["deep.json"]
    assert "FIFO" in reasons["fifo.json"] and "outside" in reasons["zero.json"]
    assert "outside" in reasons["link_out.json"] and "bytes" in reasons["huge.json"]
    assert "outside" in reasons["pq_outside.json"] and "bytes" in reasons["pq_bomb.json"]
    assert "outside" in reasons["pq_zero.json"]
    csv_text = (tmp_path / "lb.csv").read_text(encoding="utf-8")
    for model in ("good-a", "good-b", "pq-outside", "pq-bomb", "pq-zero"):
        assert model in csv_text
    lines = {ln.split(",")[3]: ln for ln in csv_text.splitlines()[1:] if ln.startswith("icm,")}
    assert ",1," in lines["good-a"] and ",2," in lines["good-b"]  # the rank groups were still computed
    assert html.is_file()


def test_strict_names_every_hostile_file(hostile):
    out, names = hostile
    proc = bench("leaderboard", "--results", out, "--strict")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert all(name in proc.stderr for name in names)


def test_compare_survives_hostile_files(hostile, tmp_path):
    out, _ = hostile
    proc = bench("compare", out / "a", out / "b", "--bootstrap", "200")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # a folder holding a FIFO and a link to /dev/zero: warnings, then its one valid run is compared
    (out / "a" / "results" / "fifo.json").parent.mkdir(exist_ok=True)
    os.mkfifo(out / "a" / "results" / "fifo.json")
    os.symlink("/dev/zero", out / "a" / "results" / "zero.json")
    proc = bench("compare", out / "a", out / "b", "--bootstrap", "200")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "fifo.json" in proc.stderr and "zero.json" in proc.stderr
    # a result whose per-query file lies outside its folder: one line naming it
    proc = bench("compare", out / "bad" / "pq_outside.json", out / "b")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "pq_outside.json" in err[0] and "outside" in err[0]
    proc = bench("compare", out / "bad" / "pq_bomb.json", out / "bad" / "pq_zero.json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "pq_bomb.json" in proc.stderr


def test_bounded_readers_directly(tmp_path):
    root = real_root(tmp_path)
    os.mkfifo(tmp_path / "f.json")
    with pytest.raises(UnsafeFileError, match="FIFO"):
        read_json(tmp_path / "f.json", root)
    (tmp_path / "n.json").write_text('{"a": [' + "1" * 5000 + "]}", encoding="utf-8")
    with pytest.raises(UnsafeFileError, match="not readable JSON"):  # beyond Python's int digit limit
        read_json(tmp_path / "n.json", root)
    (tmp_path / "ok.json").write_text('{"a": [1, 2.5, NaN]}', encoding="utf-8")
    assert read_json(tmp_path / "ok.json", root)["a"][:2] == [1, 2.5]
    _npz_with_header(tmp_path / "big.npz", (3, 1 << 45))
    with pytest.raises(UnsafeFileError, match="bytes"):
        read_npz(tmp_path / "big.npz", root)
    _npz_with_header(tmp_path / "short.npz", (4,))  # 8 bytes of data for 32 declared
    with pytest.raises(UnsafeFileError, match="truncated"):
        read_npz(tmp_path / "short.npz", root)
    buf = io.BytesIO()
    np.savez(buf, **{"pairs/query": np.array([{"a": 1}], dtype=object)})
    (tmp_path / "obj.npz").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeFileError, match="objects"):
        read_npz(tmp_path / "obj.npz", root)
