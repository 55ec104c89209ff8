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


def _spy_gets(monkeypatch, url):
    """(key, bytes received) of every GetObject the client sends from here on."""
    fs, _ = storage._fs(url)
    fs.connect()
    got = []
    real = fs._s3._make_api_call

    async def spy(operation, params):
        out = await real(operation, params)
        if operation == "GetObject":
            got.append((params["Key"], int(out.get("ContentLength") or 0)))
        return out

    monkeypatch.setattr(fs._s3, "_make_api_call", spy)
    return got


@pytest.mark.parametrize("cache", ["default", "none"])
def test_a_shuffled_build_on_s3_reads_what_it_copies_and_equals_the_local_build(cache, s3_url, tmp_path,
                                                                                 monkeypatch):
    local = write_set(tmp_path / "dl", n_shards=4, per_shard=40, finalize=False)
    remote = write_set(storage.join(s3_url, "dl"), n_shards=4, per_shard=40, finalize=False)
    keep_local = _keep_all(local, tmp_path / "keep.parquet")
    keep_remote = _keep_all(remote, storage.join(s3_url, "keep.parquet"))
    api.build_shards(local, tmp_path / "out", keep_tables=[keep_local], samples_per_shard=30, shuffle=True, seed=3)
    if cache == "none":
        monkeypatch.setattr(storage, "READ_CACHE_BYTES", 0)
    calls = _spy_cat_ranges(monkeypatch, s3_url)
    gets = _spy_gets(monkeypatch, s3_url)
    monkeypatch.setattr(storage, "RANGE_GAP", 0)  # tiny test tars: merge only touching ranges
    out = storage.join(s3_url, "out")
    api.build_shards(remote, out, keep_tables=[keep_remote], samples_per_shard=30, shuffle=True, seed=3)
    gets = [(k, n) for k, n in gets if "/dl/" in f"/{k}"]  # the build's reads of the source folder
    names = sorted(n for n in os.listdir(tmp_path / "out") if n.endswith(".tar"))
    assert names == [shards.shard_name(i) + ".tar" for i in range(6)]
    for n in names:
        assert storage.read_bytes(storage.join(out, n)) == (tmp_path / "out" / n).read_bytes(), n
    sizes = {f"{shards.shard_name(i)}.tar": storage.size(storage.join(remote, f"{shards.shard_name(i)}.tar"))
             for i in range(4)}
    whole = sorted((k.rsplit("/", 1)[-1], n) for k, n in gets if k.endswith(".tar") and n == sizes[k.rsplit("/", 1)[-1]])
    # the plan's tar index: each (small) source tar read whole, once, by one GET
    assert whole == sorted(sizes.items())
    if cache == "default":  # the copy takes the members from the tars the index read: no request more
        assert calls == [] and len([k for k, _ in gets if k.endswith(".tar")]) == 4
    else:  # no read cache: one concurrent batch per output shard; every sample read once (156: 39 per source
        # shard, a failure has no bytes): no read-ahead block per scattered sample
        assert len(calls) == 6 and sum(n for n, _ in calls) == 156
        assert 0 < sum(b for _, b in calls) <= sum(sizes.values())


def _count_requests(monkeypatch, url):
    """The S3 operations the client sends from here on (names, in order)."""
    fs, _ = storage._fs(url)
    fs.connect()  # the client exists before we wrap its calls
    sent = []
    real = fs._s3._make_api_call

    async def spy(operation, params):
        sent.append(operation)
        return await real(operation, params)

    monkeypatch.setattr(fs._s3, "_make_api_call", spy)
    return sent


def test_small_reads_and_checks_cost_one_request_each_and_equal_the_local_answers(base, monkeypatch):
    small, large, empty = b'{"a": 1}\n', os.urandom(storage.RANDOM_BLOCK + 12345), b""
    for name, data in (("small.json", small), ("large.bin", large), ("empty.bin", empty)):
        storage.write_bytes(storage.join(base, "d", name), data)
    sent = _count_requests(monkeypatch, base) if storage.is_url(base) else []
    f = storage.join(base, "d", "small.json")
    assert storage.read_bytes(f, max_bytes=100) == small
    assert storage.isfile(f) and not storage.isfile(storage.join(base, "d", "missing.json"))
    assert not storage.isfile(storage.join(base, "d"))  # a folder is not a file
    if storage.is_url(base):  # a ranged GET (no HEAD first), then one HEAD per file check (no listing)
        assert sent == ["GetObject", "HeadObject", "HeadObject", "HeadObject"]
    assert storage.read_bytes(storage.join(base, "d", "empty.bin"), max_bytes=10) == b""  # a range on 0 bytes: 416
    assert storage.read_bytes(storage.join(base, "d", "large.bin")) == large
    assert storage.sha256(storage.join(base, "d", "large.bin")) == hashlib.sha256(large).hexdigest()
    assert storage.sha256(storage.join(base, "d", "empty.bin")) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(storage.StorageError, match=r"large\.bin: 1060921 bytes, more than the 1000 allowed"):
        storage.read_bytes(storage.join(base, "d", "large.bin"), max_bytes=1000)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        storage.read_bytes(storage.join(base, "d", "missing.json"), max_bytes=10)
    with pytest.raises(FileNotFoundError):
        storage.listdir(storage.join(base, "nothing-here"))


def test_write_many_publishes_every_file_and_a_failure_names_it(base, s3_server):
    files = {storage.join(base, "m", f"{i}.json"): storage.json_bytes({"i": i}) for i in range(5)}
    storage.write_many(files)
    assert {p: storage.read_bytes(p) for p in files} == files
    storage.write_many({})
    if storage.is_url(base):
        bad = f"s3://no-such-bucket-{os.getpid()}/x.json"
        with pytest.raises(OSError, match="no-such-bucket"):
            storage.write_many({storage.join(base, "m", "ok.json"): b"1", bad: b"2"})
        assert storage.read_bytes(storage.join(base, "m", "ok.json")) == b"1"


def test_shard_groups_keep_order_and_balance_the_slots():
    from ccmb.corpus.steps.build import SHARDS_PER_JOB, shard_groups

    assert shard_groups(4, 1) == [[0, 1, 2, 3]]
    assert shard_groups(40, 1) == [list(range(0, 16)), list(range(16, 32)), list(range(32, 40))]
    assert shard_groups(4, 2) == [[0], [1], [2], [3]]
    many = shard_groups(1000, 8)
    assert [i for g in many for i in g] == list(range(1000)) and max(map(len, many)) <= SHARDS_PER_JOB
    assert shard_groups(0, 1) == []


def test_a_failed_publish_stops_the_job_and_the_rerun_completes_the_set(base, tmp_path, monkeypatch):
    """Shards publish in the background while the next is written: a publish that fails raises from the job,
    the shards published before it stay, and the rerun writes the rest (byte-identical to a clean build)."""
    src = storage.join(base, "src")
    write_set(src, n_shards=2, per_shard=6, finalize=False)
    keep = [_keep_all(src, storage.join(base, "keep.parquet"))]
    ref = api.build_shards(src, storage.join(base, "ref"), keep_tables=keep, samples_per_shard=3)
    real = storage.write_many
    calls = []

    def failing(files):
        calls.append(sorted(storage.name(p) for p in files))
        if any(storage.name(p) == "00002_stats.json" for p in files):
            raise storage.StorageError(f"{next(iter(files))}: simulated store failure")
        real(files)

    monkeypatch.setattr(storage, "write_many", failing)
    out = storage.join(base, "out")
    with pytest.raises(storage.StorageError, match="simulated store failure"):
        api.build_shards(src, out, keep_tables=keep, samples_per_shard=3)
    assert storage.isfile(storage.join(out, "00001_stats.json"))
    assert not storage.isfile(storage.join(out, "00002_stats.json"))
    assert not storage.isfile(storage.join(out, "manifest.json"))
    monkeypatch.setattr(storage, "write_many", real)
    again = api.build_shards(src, out, keep_tables=keep, samples_per_shard=3)
    # shard 3 may have been published behind the failed one (it was queued); shard 2 is written again
    assert again.skipped[:2] == ["00000", "00001"] and "00002" in again.written
    sha = {n: storage.sha256(storage.join(out, n)) for n in storage.listdir(out) if n.endswith(".tar")}
    assert sha == {n: storage.sha256(storage.join(ref.output, n)) for n in storage.listdir(ref.output)
                   if n.endswith(".tar")}


def test_prefetch_reads_files_in_one_round_trip_each_answering_one_read(s3_url, monkeypatch):
    files = {storage.join(s3_url, "p", f"{i}.bin"): os.urandom(1000 * (i + 1)) for i in range(3)}
    for path, data in files.items():
        storage.write_bytes(path, data)
    missing = storage.join(s3_url, "p", "missing.bin")
    sent = _count_requests(monkeypatch, s3_url)
    with storage.prefetch([*files, missing]):
        assert len(sent) == 4  # sent together, before any read
        assert {p: storage.read_bytes(p) for p in files} == files
        assert len(sent) == 4
        assert storage.read_bytes(next(iter(files))) == files[next(iter(files))]  # a second read asks the store
        assert len(sent) == 5
        with pytest.raises(FileNotFoundError, match="missing.bin"):
            storage.read_bytes(missing)
    assert storage._PREFETCHED == {}
