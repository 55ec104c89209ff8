"""The per-command read cache on object storage (``storage.read_cache``, ``storage.warm``) and what build-shards
saves with it, against the S3 API server on 127.0.0.1: a small object is fetched once per block, this process's
own writes and removals are never answered from stale bytes, and a fresh build sends no request it can do
without (each source parquet and tar read once, no check of outputs that cannot exist yet)."""
from __future__ import annotations

import os

import pytest

from ccmb import outdir, storage
from ccmb.corpus import api
from ccmb.corpus.tables.schema import CurationError

from test_s3_transfer import _count_requests, _keep_all, _spy_gets
from test_shards_s3 import write_set


def test_a_small_object_is_fetched_once_per_block_and_own_writes_are_seen(s3_url, monkeypatch):
    f = storage.join(s3_url, "rc", "a.json")
    storage.write_bytes(f, b"one")
    sent = _count_requests(monkeypatch, s3_url)
    with storage.read_cache():
        assert storage.read_bytes(f) == b"one" and storage.read_bytes(f) == b"one"
        assert storage.sha256(f) and storage.isfile(f) and storage.exists(f) and not storage.isdir(f)
        assert sent == ["GetObject"]  # one request for all of the above
        storage.write_bytes(f, b"two")  # this process's write: remembered as written
        assert storage.read_bytes(f) == b"two"
        storage.remove(f)
        with pytest.raises(FileNotFoundError, match="a.json"):
            storage.read_bytes(f)
        storage.write_bytes(f, b"three")
    assert storage.read_bytes(f) == b"three"  # outside the block: read from the store again
    assert sent.count("GetObject") == 3


def test_the_budget_bounds_what_is_kept_and_remove_tree_forgets_only_what_it_removes(s3_url, monkeypatch):
    big, small, kept = (storage.join(s3_url, "rc2", n) for n in ("big.bin", "small.bin", "keep.bin"))
    storage.write_bytes(big, os.urandom(5000))
    storage.write_bytes(small, b"s")
    storage.write_bytes(kept, b"k")
    sent = _count_requests(monkeypatch, s3_url)
    with storage.read_cache(limit=100):
        for _ in range(2):
            storage.read_bytes(big)
            storage.read_bytes(small)
            storage.read_bytes(kept)
        assert sent == ["GetObject"] * 4  # the 5000-byte object does not fit: read each time
        sent.clear()
        storage.remove_tree(storage.join(s3_url, "rc2"), keep={"keep.bin"})
        assert storage.read_bytes(kept) == b"k"
        assert "GetObject" not in sent  # kept: still cached
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(small)


def test_warm_reads_ahead_and_a_missing_object_is_raised_by_its_reader(s3_url, monkeypatch):
    files = {storage.join(s3_url, "rc3", f"{i}.bin"): os.urandom(1000 + i) for i in range(4)}
    for path, data in files.items():
        storage.write_bytes(path, data)
    missing = storage.join(s3_url, "rc3", "gone.bin")
    gets = _spy_gets(monkeypatch, s3_url)
    with storage.read_cache():
        storage.warm([(p, len(d)) for p, d in files.items()] + [(missing, 10)])
        for path, data in files.items():
            assert storage.read_bytes(path) == data
            assert storage.read_ranges([(path, 5, 10)]) == [data[5:15]]
        with pytest.raises(FileNotFoundError, match="gone.bin"):
            storage.read_bytes(missing)
    assert sorted(k for k, _ in gets if not k.endswith("gone.bin")) == sorted(
        storage._fs(p)[1].split("/", 1)[1] for p in files)  # each one GET, by the read-ahead
    before = len(gets)
    storage.warm([(p, len(d)) for p, d in files.items()])  # outside a block: nothing happens
    assert len(gets) == before and not storage._WARMING


def test_s3_checksums_default_to_when_required_unless_the_user_set_them(s3_url, monkeypatch):
    fs, _ = storage._fs(s3_url)
    config = fs.s3.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    import fsspec.config

    saved = {k: dict(v) if isinstance(v, dict) else v for k, v in fsspec.config.conf.items()}
    try:
        fsspec.config.conf.setdefault("s3", {}).pop("config_kwargs", None)
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
        storage.configure("s3")  # new clients from here on
        fs, _ = storage._fs(storage.join(s3_url, "x"))
        assert "request_checksum_calculation" not in fs.config_kwargs  # the user's variable decides
        assert fs.config_kwargs["response_checksum_validation"] == "when_required"
    finally:
        fsspec.config.conf.clear()
        fsspec.config.conf.update(saved)
        storage.configure("s3")


def test_a_fresh_build_reads_each_source_once_and_checks_nothing_that_cannot_exist(s3_url, monkeypatch):
    src = write_set(storage.join(s3_url, "src"), n_shards=2, per_shard=8, finalize=False)
    keep = _keep_all(src, storage.join(s3_url, "keep.parquet"))
    sent = _count_requests(monkeypatch, s3_url)
    out = storage.join(s3_url, "out")
    summary = api.build_shards(src, out, keep_tables=[keep], samples_per_shard=8)
    assert summary.shards == 2 and summary.written == ["00000", "00001"]
    # no unfinished-upload listing and no plan.json check in a folder claimed new; no old table looked for
    assert "ListMultipartUploads" not in sent and sent.count("HeadObject") == 1  # the claim's "is it a file?"
    assert sent.count("DeleteObject") == 1  # the lock
    gets = _spy_gets(monkeypatch, s3_url)
    again = api.build_shards(src, out, keep_tables=[keep], samples_per_shard=8)  # a rerun: all done, resumed
    assert again.skipped == ["00000", "00001"] and not again.written
    assert any(k.endswith("_build/plan.json") for k, _ in gets)  # the rerun does read the saved plan


def test_a_refused_input_lets_the_output_lock_go(s3_url):
    out = storage.join(s3_url, "out-refused")
    with pytest.raises(CurationError, match="not a folder|no NNNNN.parquet"):
        api.build_shards(storage.join(s3_url, "no-such-download"), out, samples_per_shard=8)
    assert outdir.LOCK_FILE not in storage.listdir(out)  # claimed meanwhile, but not left locked
