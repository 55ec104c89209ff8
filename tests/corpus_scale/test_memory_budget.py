"""The bounded-memory in-process engine (``ccmb dedup --memory-gb``): the same decisions whatever the number
of on-disk buckets, peak memory flat as rows grow, and the external ImageKey check."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ccmb import shards as fmt
from ccmb.corpus import ingest
from ccmb.corpus.api import dedup_samples, dedup_table
from ccmb.corpus.steps.levels import DedupConfig
from ccmb.corpus.api import filter_samples
from ccmb.corpus.tables.decisions import read_decisions
from ccmb.corpus.tables.schema import CurationError

METADATA_LEVELS = ("url", "sha256", "caption")
CJK = np.array(list("城市夜景山水花鸟人物春夏秋冬东南西北风雨雷电江河湖海日月星辰金木水火土天地玄黄宇宙洪荒"))


def synthetic_folder(out: Path, rows: int, per_file: int, seed: int = 0, completion_order: bool = True) -> Path:
    """A metadata-only download folder: 5% failures, repeats at the same URL (with a tracking parameter) or
    the same bytes, exact and near-duplicate captions and chains (A~B~C); each parquet's rows in a shuffled
    order, as ``ccmb download`` writes them (the order downloads complete in), unless ``completion_order``
    is False (keys ascending)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, len(CJK), size=(rows, 30))
    src = np.arange(rows)
    copy = (rng.random(rows) < 0.15) & (src > 0)
    src[copy] = (rng.random(int(copy.sum())) * src[copy]).astype(np.int64)
    src[copy] = src[src[copy]]  # copies of originals
    near = copy & (rng.random(rows) < 0.4)  # copies with one character changed (a chain when several)
    chars = base[src].copy()
    chars[near, 10 + (np.arange(rows)[near] % 12)] = (chars[near, 10] + 1) % len(CJK)
    captions = ["".join(CJK[c]) for c in chars]
    sha = [f"{(int(s) * 2654435761) % (1 << 64):064x}" for s in src]
    same_url = copy & ~near & (rng.random(rows) < 0.5)
    urls = [f"http://img{s % 50}.example.com/{s}.jpg" + ("?utm_source=x" if u else "")
            if u or not c else f"http://mirror.example.org/{i}.jpg"
            for i, (s, u, c) in enumerate(zip(src.tolist(), same_url.tolist(), copy.tolist()))]
    sha = [h if not (c and not u and n) else f"{i:064x}" for i, (h, c, u, n) in
           enumerate(zip(sha, copy.tolist(), same_url.tolist(), near.tolist()))]
    ok = rng.random(rows) >= 0.05
    for f, lo in enumerate(range(0, rows, per_file)):
        hi = min(rows, lo + per_file)
        n = hi - lo
        cols = {"key": [fmt.make_key(f, i, per_file) for i in range(n)], "url": urls[lo:hi],
                "caption": captions[lo:hi], "title": captions[lo:hi],
                "sha256": [s if o else None for s, o in zip(sha[lo:hi], ok[lo:hi])],
                "status": ["success" if o else "failed_to_download" for o in ok[lo:hi]]}
        for side in ("width", "height", "original_width", "original_height"):
            cols[side] = [256 if o else None for o in ok[lo:hi]]
        table = pa.table({name: pa.array(cols[name], fld.type) if name in cols else pa.nulls(n, fld.type)
                          for name, fld in zip(fmt.PARQUET_SCHEMA.names, fmt.PARQUET_SCHEMA)})
        if completion_order:
            table = table.take(pa.array(rng.permutation(n)))
        pq.write_table(table, out / f"{f:05d}.parquet")
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("budget") / "download", 6000, 1000)


def test_tiny_budget_many_buckets_gives_the_in_memory_table(synthetic, planted_scale, tmp_path):
    for name, folder, levels in (("synthetic", synthetic, METADATA_LEVELS),
                                 ("planted", planted_scale, ("url", "sha256", "phash", "caption"))):
        ref = dedup_table(folder, DedupConfig(levels=levels))
        reasons = set(ref.column("reason").to_pylist())
        assert {f"duplicate_{lv}" for lv in levels} <= reasons
        for buckets, memory_gb in ((None, 8.0), (1, 0.001), (7, 0.001), (64, 0.001)):
            out = tmp_path / f"{name}_{buckets}.parquet"
            summary = dedup_samples(folder, out, levels=levels, memory_gb=memory_gb, spill_buckets=buckets)
            got = read_decisions(out)
            assert got.equals(ref), [(a, b) for a, b in zip(got.to_pylist(), ref.to_pylist()) if a != b][:5]
            assert summary.rows == ref.num_rows and summary.kept == sum(ref.column("keep").to_pylist())
            assert not list(tmp_path.glob(".ccmb-work-*"))  # the spill folder is removed
    # chains of near-duplicate captions are stars: every dropped caption is within the threshold of its kept one
    from ccmb.corpus.primitives.minhash import jaccard_sets, ngrams, normalize_texts

    table = read_decisions(tmp_path / "synthetic_64.parquet").to_pylist()
    text = {}
    for p in sorted(synthetic.glob("*.parquet")):
        t = pq.read_table(p, columns=["key", "caption"])
        text.update(zip(t.column("key").to_pylist(), normalize_texts(t.column("caption")).to_pylist()))
    capdups = [r for r in table if r["reason"] == "duplicate_caption"]
    assert capdups
    assert all(jaccard_sets(ngrams(text[r["key"]], 3), ngrams(text[r["duplicate_of"]], 3)) >= 0.8 for r in capdups)


def test_keep_table_and_buckets(synthetic, tmp_path):
    filter_samples(synthetic, tmp_path / "f.parquet", min_side=0, blocklist=["城市"])
    ref = dedup_samples(synthetic, tmp_path / "a.parquet", levels=METADATA_LEVELS, memory_gb=8,
                        keep_tables=[tmp_path / "f.parquet"])
    small = dedup_samples(synthetic, tmp_path / "b.parquet", levels=METADATA_LEVELS, memory_gb=0.001,
                          spill_buckets=16, keep_tables=[tmp_path / "f.parquet"])
    assert ref.dropped == small.dropped and "blocklist" in ref.dropped
    assert read_decisions(tmp_path / "a.parquet").equals(read_decisions(tmp_path / "b.parquet"))


def test_duplicate_keys_name_the_files_with_many_buckets(synthetic, tmp_path):
    d = tmp_path / "dl"
    d.mkdir()
    for p in sorted(synthetic.glob("*.parquet"))[:2]:
        (d / p.name).write_bytes(p.read_bytes())
    t = pq.read_table(d / "00001.parquet")
    keys = t.column("key").to_pylist()
    keys[0] = pq.read_table(d / "00000.parquet").column("key")[-1].as_py()  # the last key of 00000 again
    pq.write_table(t.set_column(0, "key", pa.array(keys, pa.string())), d / "00001.parquet")
    with pytest.raises(CurationError, match=r"not unique.*00000\.parquet.*00001\.parquet"):
        dedup_samples(d, tmp_path / "x.parquet", levels=METADATA_LEVELS, memory_gb=0.001, spill_buckets=9)
    assert not (tmp_path / "x.parquet").exists() and not list(tmp_path.glob(".ccmb-work-*"))


def test_image_key_check_is_external_and_names_key_and_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest._KeyCheck, "FLUSH", 7)  # many spill files, many buckets
    monkeypatch.setattr(ingest, "plan", lambda gb, rows: type("P", (), {"buckets": 13})())
    src = tmp_path / "zero.jsonl"
    recs = [{"ImageUrl": f"http://h/{i}.jpg", "Title": f"t{i}", "ImageKey": f"key-{i % 40:05d}"} for i in range(100)]
    src.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    log = tmp_path / "refused.tsv"
    res = ingest.normalize_inputs([src], tmp_path / "norm", ingest.Layout(mode="zero"), samples_per_shard=10,
                                  part_rows=30, refused_path=log, refused_examples=3)
    rows = pa.concat_tables([pq.read_table(p) for p in res.parts]).to_pylist()
    assert res.rows == 100 and res.refused == {"duplicate ImageKey": 60}
    for i, r in enumerate(rows):
        if i < 40:
            assert r[ingest.ERROR_COLUMN] is None and r["url"] == f"http://h/{i}.jpg"
        else:
            assert r[ingest.ERROR_COLUMN] == f"duplicate ImageKey 'key-{i % 40:05d}' ({src}:{i + 1})"
            assert r["url"] == "" and r[ingest.INPUT_URL_COLUMN] == f"http://h/{i}.jpg"
    assert res.refused_examples == [f"{src}:{i + 1}: duplicate ImageKey 'key-{i % 40:05d}'" for i in range(40, 43)]
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines == [f"{src}:{i + 1}\tduplicate ImageKey 'key-{i % 40:05d}'" for i in range(40, 100)]
    assert not list((tmp_path / "norm").glob(".ccmb-*"))


PEAK = """
import resource, sys
from ccmb.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_mb(folder: Path, out: Path, memory_gb: float) -> float:
    res = subprocess.run([sys.executable, "-c", PEAK, "dedup", "--input", str(folder), "--output", str(out),
                          "--no-phash", "--memory-gb", str(memory_gb)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.split("PEAK_KB")[-1].split()[0]) / 1024


def test_peak_memory_is_flat_from_n_to_4n_rows(tmp_path):
    n = 20_000
    small = synthetic_folder(tmp_path / "n", n, 5000, seed=1)
    large = synthetic_folder(tmp_path / "4n", 4 * n, 5000, seed=1)
    a = _peak_mb(small, tmp_path / "a.parquet", 0.05)
    b = _peak_mb(large, tmp_path / "b.parquet", 0.05)
    # the in-memory engine grows ~1.7 GB per million rows (+100 MB here); bounded: 2 bytes per row + dups
    assert b - a < 25, (a, b)
    assert read_decisions(tmp_path / "b.parquet").num_rows == 4 * n


def test_any_row_order_gives_the_same_table(tmp_path, caplog):
    """Keys ascending, rows in completion order within each parquet, parquets out of key order: one table."""
    ordered = synthetic_folder(tmp_path / "ordered", 3000, 1000, seed=2, completion_order=False)
    shuffled = synthetic_folder(tmp_path / "shuffled", 3000, 1000, seed=2)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for a, b in (("00000", "00002"), ("00001", "00001"), ("00002", "00000")):  # later keys first
        (swapped / f"{a}.parquet").write_bytes((shuffled / f"{b}.parquet").read_bytes())
    assert pq.read_table(shuffled / "00000.parquet").column("key").to_pylist() != \
        sorted(pq.read_table(shuffled / "00000.parquet").column("key").to_pylist())
    tables = []
    for folder in (ordered, shuffled, swapped):
        out = tmp_path / f"{folder.name}.parquet"
        dedup_samples(folder, out, levels=METADATA_LEVELS, memory_gb=0.001, spill_buckets=5)
        tables.append(read_decisions(out))
        assert tables[-1].column("key").to_pylist() == sorted(tables[-1].column("key").to_pylist())
    assert tables[0].equals(tables[1])
    cols = ["key", "keep", "reason", "duplicate_of"]  # the swapped parquets name other tars
    assert tables[0].select(cols).equals(tables[2].select(cols))
    assert "in-memory engine" not in caplog.text and not list(tmp_path.glob(".ccmb-work-*"))
