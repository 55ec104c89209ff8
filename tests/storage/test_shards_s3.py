"""The shard format on object storage (a real S3 API server on 127.0.0.1): ShardWriter, finalize, readers,
``verify``, ``ccmb shards ls/finalize`` give the same bytes and the same answers as on disk, and a killed
writer leaves nothing that looks finished."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from ccmb import shards, storage

ROOT = Path(__file__).resolve().parents[2]


def jpeg(i: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_set(where, n_shards: int = 3, per_shard: int = 6, finalize: bool = True):
    """A shard set with successes and failures, byte-identical wherever it is written (mtime fixed)."""
    for s in range(n_shards):
        with shards.ShardWriter(where, s, source="test.jsonl", mtime=0) as w:
            for i in range(per_shard):
                key = shards.make_key(s, i, per_shard)
                if i == per_shard - 1:
                    w.write_failure({"key": key, "url": f"http://x/{key}.jpg"}, "failed_to_download", "HTTP 404")
                    continue
                w.write(key, jpeg(s * per_shard + i), f"标题{key}",
                        {"title": f"标题{key}", "url": f"http://x/{key}.jpg", "width": 24, "height": 24})
    if finalize:
        shards.finalize_shard_set(where, command="test")
    return where


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def test_shard_set_on_s3_equals_the_local_one(s3_url, tmp_path):
    local = write_set(tmp_path / "shards")
    remote = write_set(s3_url)
    names = ["00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar", "00001_stats.json",
             "00002.parquet", "00002.tar", "00002_stats.json", "manifest.json", "sizes.json"]
    assert storage.listdir(remote) == names == sorted(os.listdir(local))
    for n in names:
        if n.endswith((".tar", ".parquet")):
            assert storage.read_bytes(storage.join(remote, n)) == (local / n).read_bytes(), n
    assert shards.read_manifest(remote)["shards"] == shards.read_manifest(local)["shards"]
    assert shards.read_sizes(remote) == shards.read_sizes(local) == {"00000.tar": 5, "00001.tar": 5, "00002.tar": 5}

    tars = shards.list_shards(remote)
    assert tars == [f"{s3_url}/0000{i}.tar" for i in range(3)]
    assert shards.list_shards(f"{s3_url}/{{00001..00002}}.tar") == tars[1:]
    assert [(s.key, s.text, s.image) for s in shards.iter_samples(remote)] == \
        [(s.key, s.text, s.image) for s in shards.iter_samples(local)]
    assert shards.finished_shards(remote) == ["00000", "00001", "00002"]
    assert shards.count_tar_samples(tars[0]) == 5
    assert shards.shard_entry(tars[0]) == shards.shard_entry(local / "00000.tar")
    parquets = shards.shard_parquets(remote)
    assert [storage.name(p) for p in parquets] == ["00000.parquet", "00001.parquet", "00002.parquet"]
    assert shards.read_parquet(parquets[1]).equals(shards.read_parquet(local / "00001.parquet"))
    assert shards.read_parquet(parquets[1], columns=["key", "status"]).to_pylist() == \
        shards.read_parquet(local / "00001.parquet", columns=["key", "status"]).to_pylist()
    assert shards.expects_parquets(remote)
    stats = shards.read_shard_stats(tars[2])
    assert stats["count"] == 6 and stats["ccmb"]["parquet"]["sha256"] == storage.sha256(parquets[2])

    report = shards.verify_shard_set(remote)
    assert report.ok, report.problems
    assert (report.shards_checked, report.samples) == (3, 15)


def test_verify_on_s3_names_each_damaged_object_like_on_disk(s3_url, tmp_path):
    local = write_set(tmp_path / "shards")
    remote = write_set(s3_url)
    for where in (local, remote):
        storage.remove(storage.join(where, "00001.parquet"))  # a parquet deleted
        storage.write_bytes(storage.join(where, "00002.tar"), b"\0" * 1024)  # a tar replaced
        storage.write_bytes(storage.join(where, "00007.tar"),
                            storage.read_bytes(storage.join(where, "00000.tar")))  # an unlisted tar
    got_local = shards.verify_shard_set(local, decode_images=False).problems
    got_remote = shards.verify_shard_set(remote, decode_images=False).problems
    assert [p.replace(s3_url, str(local)) for p in got_remote] == got_local
    assert f"{s3_url}/00001.parquet: missing (the shard's rows, failures included, live there)" in got_remote
    assert f"{s3_url}/00002.tar: sha256 differs from manifest.json" in got_remote
    assert f"{s3_url}/00007.tar: not listed in manifest.json" in got_remote
    with pytest.raises(shards.MissingShardFileError, match=f"{s3_url}/00001.parquet"):
        shards.shard_parquets(remote)
    storage.remove(storage.join(remote, "manifest.json"))
    assert shards.verify_shard_set(remote).problems == [
        f"{s3_url}/manifest.json: missing (not a finished shard set: finish it with `ccmb build-shards`, a rerun "
        f"of `ccmb download`, or `ccmb shards finalize`)"]


def test_a_failing_or_rewritten_shard_on_s3(s3_url):
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(s3_url, 0, mtime=0) as w:
            w.write("000000", jpeg(0), "t")
            raise RuntimeError("the writer fails mid-shard")
    assert not storage.isdir(s3_url)  # no object at all under the prefix
    assert storage.remove_stale_temporaries(s3_url) == 0  # the upload was aborted, not left behind
    write_set(s3_url, n_shards=1, finalize=False)
    first = storage.read_bytes(f"{s3_url}/00000_stats.json")
    with shards.ShardWriter(s3_url, 0, mtime=0) as w:  # rewritten: the new stats replace the old ones last
        w.write("000000", jpeg(99), "新")
    assert storage.read_bytes(f"{s3_url}/00000_stats.json") != first
    assert [s.text for s in shards.iter_samples(s3_url)] == ["新"]


_KILLED_SHARD_WRITER = textwrap.dedent("""
    import os, sys, time
    from ccmb import shards
    with shards.ShardWriter(sys.argv[1], 1, mtime=0) as w:
        for i in range(12):
            w.write(f"0000100{i:02d}", os.urandom(1 << 20), "t")  # 12 MB: a part is uploaded
        print("writing", flush=True)
        time.sleep(600)
""")


def test_a_killed_shard_writer_leaves_no_shard_on_s3(s3_url):
    write_set(s3_url, n_shards=1, finalize=False)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SHARD_WRITER, s3_url], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env=_env())
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert storage.listdir(s3_url) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    assert shards.finished_shards(s3_url) == ["00000"]
    assert storage.remove_stale_temporaries(s3_url) == 1  # the killed writer's unfinished upload


def test_cli_shards_ls_and_finalize_on_s3(s3_url):
    write_set(s3_url, n_shards=2, finalize=False)
    run = [sys.executable, "-m", "ccmb", "shards"]
    out = subprocess.run(run + ["ls", s3_url], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["00000.tar\t5", "00001.tar\t5", "total\t10"]
    out = subprocess.run(run + ["finalize", s3_url], capture_output=True, text=True, env=_env(), cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2 shards, 10 samples"
    assert shards.read_sizes(s3_url) == {"00000.tar": 5, "00001.tar": 5}
    assert shards.verify_shard_set(s3_url).ok
    out = subprocess.run(run + ["ls", f"{s3_url}/nothing"], capture_output=True, text=True, env=_env(), cwd=ROOT,
                         timeout=300)
    assert out.returncode == 2 and f"{s3_url}/nothing: does not exist" in out.stderr
