"""The generator and the report helpers of perf/bench_scale.py (tiny sizes: the bench itself runs for hours)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ccmb.shards import PARQUET_SCHEMA

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "perf" / "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def part(bench):
    return bench.make_part(3, 20_000, seed=7)


def test_part_schema_rows_keys(part):
    assert part.schema == PARQUET_SCHEMA
    assert part.num_rows == 20_000
    keys = part.column("key").to_pylist()
    assert len(set(keys)) == 20_000 and min(keys) == "00003000000" and max(keys) == "00003019999"
    assert keys != sorted(keys)  # completion order, as ccmb download writes the parquets


def test_part_failures_and_hashes(part):
    ok = pc.equal(part.column("status"), "success").to_numpy(zero_copy_only=False)
    assert 0.04 < 1 - ok.mean() < 0.06
    sha = np.array(part.column("sha256").to_pylist(), dtype=object)
    assert all(s is None for s in sha[~ok])  # img2dataset writes no hash or size for a failed row
    assert part.column("width").null_count == (~ok).sum()
    assert all(len(s) == 64 and int(s, 16) >= 0 for s in sha[ok][:500])
    text = part.column("caption").to_pylist()
    assert text == part.column("title").to_pylist()
    assert all(12 <= len(t) < 40 and all(0x4E00 <= ord(c) < 0x9FA5 for c in t) for t in text[:500])


def test_part_repeat_and_near_shares(bench, part):
    part = part.sort_by([("key", "ascending")])  # back in key order: row i is the generator's row i
    text = part.column("caption").to_pylist()
    sha = part.column("sha256").to_pylist()
    url = part.column("url").to_pylist()
    repeat, near, src = bench._sources(np.random.default_rng([7, 3]), part.num_rows)
    assert 0.09 < repeat.mean() < 0.11 and 0.025 < near.mean() < 0.035
    assert (src[repeat | near] < np.flatnonzero(repeat | near)).all()
    assert not (repeat | near)[src].any()  # sources are originals: no chains
    # exact repeats: the source's caption and bytes; the URL is the source's with utm_ or a mirror
    for i in np.flatnonzero(repeat):
        s = src[i]
        assert text[i] == text[s]
        assert sha[i] is None or sha[s] is None or sha[i] == sha[s]
        assert url[i] == url[s] + "?utm_source=feed" or url[i].rsplit("/", 1)[1] == url[s].rsplit("/", 1)[1]
    # near duplicates: same length, exactly one character changed
    for i in np.flatnonzero(near):
        a, b = text[i], text[src[i]]
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    # measured from the output alone: ~10% of captions repeat an earlier one exactly
    seen, dup = set(), 0
    for t in text:
        dup += t in seen
        seen.add(t)
    assert 0.09 < dup / len(text) < 0.115


def test_part_deterministic_by_seed_and_index(bench, part):
    assert bench.make_part(3, 20_000, seed=7).equals(part)
    assert bench.make_part(3, 20_000, seed=8).column("sha256") != part.column("sha256")


def test_folder_streams_parts_resumes_and_reuses(bench, tmp_path):
    small = tmp_path / "a"
    bench.make_folder(small, 2_500, seed=1, rows_per_file=1_000)
    names = sorted(p.name for p in small.iterdir())
    assert names == ["00000.parquet", "00001.parquet", "00002.parquet"]
    assert [pq.read_metadata(small / n).num_rows for n in names] == [1_000, 1_000, 500]
    # a larger folder of the same seed hard-links the full parts and generates the rest
    big = tmp_path / "b"
    bench.make_folder(big, 4_000, seed=1, rows_per_file=1_000, reuse=[small])
    assert os.path.samefile(big / "00001.parquet", small / "00001.parquet")
    assert not os.path.samefile(big / "00002.parquet", small / "00002.parquet")
    assert pq.read_table(big / "00002.parquet").equals(bench.make_part(2, 1_000, seed=1))
    # a part already there is kept (an interrupted generation resumes)
    before = (big / "00003.parquet").stat().st_mtime_ns
    bench.make_folder(big, 4_000, seed=1, rows_per_file=1_000)
    assert (big / "00003.parquet").stat().st_mtime_ns == before
    assert not [p for p in big.iterdir() if ".tmp-" in p.name]


def test_summary_parse_and_linear_fit(bench):
    out = "rows 10, kept 6, dropped 4\n  too_small: 3\n  duplicate_url: 1\nwrote /x/dedup.parquet\n"
    assert bench.parse_summary(out) == {"rows": 10, "kept": 6, "dropped": {"too_small": 3, "duplicate_url": 1}}
    with pytest.raises(RuntimeError, match="no summary"):
        bench.parse_summary("Error: something\n")
    slope, icept = bench.fit([1, 4, 16], [12, 30, 102])
    assert slope == pytest.approx(6.0) and icept == pytest.approx(6.0)
    assert bench.fit([1, 1], [2, 3]) is None
