"""Transfers on object storage (a real S3 API server on 127.0.0.1): byte ranges read concurrently with
neighbours merged, uploads sent in the background while the writer goes on, and a shuffled build-shards that
reads what it copies (not a read-ahead block per sample), each equal to the same work on local disk."""
from __future__ import annotations

import hashlib
import os
import random

import pyarrow as pa
import pytest

from ccmb import shards, storage
from ccmb.corpus import api
from ccmb.corpus.tables.folder import read_columns
from ccmb.corpus.tables.schema import DECISION_SCHEMA
from ccmb.corpus.tables.writer import write_table

from test_shards_s3 import write_set


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    return tmp_path / "store" if request.param == "local" else request.getfixturevalue("s3_url")


def _spy_cat_ranges(monkeypatch, url):
    fs, _ = storage._fs(url)
    calls = []
    real = fs.cat_ranges

    def spy(paths, starts, ends, **kw):
        out = real(paths, starts, ends, **kw)
        calls.append((len(paths), sum(len(b) for b in out)))
        return out

    monkeypatch.setattr(fs, "cat_ranges", spy)
    return calls


def test_read_ranges_returns_each_range_in_order_and_merges_neighbours(base, monkeypatch):
    a, b = os.urandom(300_000), os.urandom(5000)
    storage.write_bytes(storage.join(base, "a.bin"), a)
    storage.write_bytes(storage.join(base, "b.bin"), b)
    fa, fb = storage.join(base, "a.bin"), storage.join(base, "b.bin")
    ranges = [(fa, off, 700) for off in range(0, 280_000, 1000)] + [(fb, 10, 20), (fa, 299_000, 1000), (fb, 0, 5)]
    random.Random(0).shuffle(ranges)
    calls = _spy_cat_ranges(monkeypatch, base) if storage.is_url(base) else []
    got = storage.read_ranges(ranges)
    want = [(a if p == fa else b)[off:off + n] for p, off, n in ranges]
    assert got == want
    if storage.is_url(base):  # 283 ranges, gaps of 300 bytes: one read of a.bin's neighbours, one of b.bin
        assert calls == [(2, 300_000 + 30)]
    assert storage.read_ranges([]) == []


def test_a_range_past_the_end_names_the_file_and_offset(base):
    f = storage.join(base, "short.bin")
    storage.write_bytes(f, b"x" * 100)
    with pytest.raises(storage.StorageError, match=r"short\.bin: 50 bytes at offset 80 run past the end"):
        storage.read_ranges([(f, 0, 10), (f, 80, 50)])


def test_a_large_upload_is_sent_in_the_background_and_equals_what_was_written(s3_url):
    data = os.urandom(3 * storage.WRITE_BLOCK + 12345)
    target = storage.join(s3_url, "big.bin")
    with storage.atomic_open(target, digest=True) as fh:
        for i in range(0, len(data), 65536):
            fh.write(data[i:i + 65536])
        assert fh._sender is not None  # parts went out while writing
        assert not storage.exists(target)  # not visible before publish
    assert fh.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.read_bytes(target) == data
    assert storage.remove_stale_temporaries(s3_url) == 0


def test_a_failed_background_upload_is_raised_naming_the_url_and_publishes_nothing(s3_url):
    bucket = s3_url.split("://", 1)[1].split("/", 1)[0]
    target = s3_url.replace(bucket, bucket + "-missing", 1) + "/big.bin"
    out = storage.AtomicFile(target)
    with pytest.raises(OSError, match="missing/.*big\\.bin"):
        for _ in range(4):
            out.write(os.urandom(storage.WRITE_BLOCK))
        out.publish()
    out.close()
    assert not storage.exists(target)


def _keep_all(folder, table):
    keys = read_columns(folder, ["key"]).column("key")
    cols = {f.name: pa.nulls(len(keys), f.type) for f in DECISION_SCHEMA}
    cols.update(key=keys, keep=pa.array([True] * len(keys)))
    write_table(table, pa.table(cols), kind="filter", source=folder)
    return table


def test_a_shuffled_build_on_s3_reads_what_it_copies_and_equals_the_local_build(s3_url, tmp_path, monkeypatch):
    local = write_set(tmp_path / "dl", n_shards=4, per_shard=40, finalize=False)
    remote = write_set(storage.join(s3_url, "dl"), n_shards=4, per_shard=40, finalize=False)
    keep_local = _keep_all(local, tmp_path / "keep.parquet")
    keep_remote = _keep_all(remote, storage.join(s3_url, "keep.parquet"))
    api.build_shards(local, tmp_path / "out", keep_tables=[keep_local], samples_per_shard=30, shuffle=True, seed=3)
    calls = _spy_cat_ranges(monkeypatch, s3_url)
    monkeypatch.setattr(storage, "RANGE_GAP", 0)  # tiny test tars: merge only touching ranges
    out = storage.join(s3_url, "out")
    api.build_shards(remote, out, keep_tables=[keep_remote], samples_per_shard=30, shuffle=True, seed=3)
    names = sorted(n for n in os.listdir(tmp_path / "out") if n.endswith(".tar"))
    assert names == [shards.shard_name(i) + ".tar" for i in range(6)]
    for n in names:
        assert storage.read_bytes(storage.join(out, n)) == (tmp_path / "out" / n).read_bytes(), n
    source_bytes = sum(storage.size(storage.join(remote, f"{shards.shard_name(i)}.tar")) for i in range(4))
    fetched = sum(n for _, n in calls)
    # one concurrent batch per output shard; every sample read once (156: 39 per source shard, a failure has no bytes):
    # no read-ahead block per scattered sample
    assert len(calls) == 6 and sum(n for n, _ in calls) == 156
    assert 0 < fetched <= source_bytes
