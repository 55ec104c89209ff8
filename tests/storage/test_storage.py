"""ccmb.storage on local disk, on a real S3 API server (moto, over HTTP) and on fsspec's memory filesystem (the
temporary-name + mv strategy): the same file operations and the same guarantees on each."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from ccmb import storage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3", "memory"])
def base(request, tmp_path):
    """A fresh folder on each kind of store."""
    if request.param == "local":
        return tmp_path / "store"
    if request.param == "s3":
        return request.getfixturevalue("s3_url")
    return f"memory://ccmb-tests/{uuid.uuid4().hex[:8]}"


def test_names_and_locations():
    assert storage.is_url("s3://b/k") and storage.is_url("gs://b/k") and storage.is_url("simplecache::s3://b/k")
    assert not storage.is_url("dir/x.tar") and not storage.is_url(Path("s3:/b")) and not storage.is_url("file:///tmp/x")
    assert storage.location("file:///tmp/x") == Path("/tmp/x")
    assert storage.location("s3://b/dir/") == "s3://b/dir"
    assert storage.join("s3://b/dir", "00001.tar") == "s3://b/dir/00001.tar"
    assert storage.join("dir", "00001.tar") == Path("dir/00001.tar")
    assert storage.name("s3://b/dir/00001.tar") == "00001.tar" and storage.stem("s3://b/dir/00001.tar") == "00001"
    assert storage.parent("s3://b/dir/00001.tar") == "s3://b/dir"
    assert storage.sibling("s3://b/dir/00001.tar", "00001_stats.json") == "s3://b/dir/00001_stats.json"
    assert storage.parent("dir/00001.tar") == Path("dir")


def test_import_is_light():
    """Importing ccmb.storage (and the shard format) does not import fsspec: only a URL does."""
    code = "import sys, ccmb.storage, ccmb.shards; print('fsspec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert out.stdout.strip() == "False"


def test_file_operations(base):
    a = storage.join(base, "a.bin")
    storage.write_bytes(a, b"x" * 1000)
    storage.write_json(storage.join(base, "m.json"), {"k": "值"})
    storage.makedirs(storage.join(base, "sub"))
    storage.write_text(storage.join(base, "sub", "t.txt"), "hi")
    assert storage.exists(a) and storage.isfile(a) and not storage.isdir(a)
    assert storage.isdir(base) and storage.size(a) == 1000
    assert storage.read_bytes(a) == b"x" * 1000
    assert storage.read_json(storage.join(base, "m.json")) == {"k": "值"}
    assert storage.read_text(storage.join(base, "m.json")).endswith("\n")
    assert storage.list_files(base) == {"a.bin": 1000, "m.json": storage.size(storage.join(base, "m.json"))}
    assert storage.listdir(base) == ["a.bin", "m.json", "sub"]
    assert [storage.name(p) for p in storage.glob(base, "*.json")] == ["m.json"]
    assert storage.sha256(a) == hashlib.sha256(b"x" * 1000).hexdigest()
    with storage.open_read(a) as fh:
        fh.seek(990)
        assert fh.read() == b"x" * 10
    with storage.open_read(storage.join(base, "m.json"), "r") as fh:
        assert json.load(fh) == {"k": "值"}
    storage.write_bytes(a, b"new")  # replaces
    assert storage.read_bytes(a) == b"new"
    storage.remove(a)
    assert not storage.exists(a)
    storage.remove(a)  # missing_ok
    with pytest.raises(FileNotFoundError):
        storage.remove(a, missing_ok=False)
    with pytest.raises(FileNotFoundError, match="a.bin"):
        storage.read_bytes(a)
    with pytest.raises(OSError, match="m.json"):
        storage.read_bytes(storage.join(base, "m.json"), max_bytes=3)


def test_a_file_appears_whole_or_not_at_all(base):
    big = os.urandom(11 << 20)  # several multipart parts on S3
    target = storage.join(base, "00000.tar")
    storage.write_bytes(storage.join(base, "keep.txt"), b"other")
    out = storage.AtomicFile(target, digest=True)
    out.write(big[: 6 << 20])
    out.write(big[6 << 20:])
    assert not storage.exists(target), "visible before publish"
    assert out.size == len(big) and out.sha256 == hashlib.sha256(big).hexdigest()
    out.publish()
    assert storage.read_bytes(target) == big

    with pytest.raises(RuntimeError):  # an error inside the block: the old content stays, nothing else appears
        with storage.atomic_open(target, "wb") as fh:
            fh.write(b"half")
            raise RuntimeError("writer failed")
    assert storage.read_bytes(target) == big
    with storage.atomic_open(storage.join(base, "t.json"), "w") as fh:
        fh.write('{"a": 1}')
    assert storage.read_json(storage.join(base, "t.json")) == {"a": 1}
    dropped = storage.AtomicFile(storage.join(base, "never.bin"))
    dropped.write(b"abc")
    dropped.close()  # closed without publish: aborted
    assert sorted(storage.list_files(base)) == ["00000.tar", "keep.txt", "t.json"]  # no temporaries left
    assert storage.remove_stale_temporaries(base) == 0


_KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    from ccmb import storage
    out = storage.AtomicFile(sys.argv[1])
    out.write(os.urandom(12 << 20))  # on S3 a full part goes to the background sender; the rest buffered
    if getattr(out, "_sender", None) is not None:
        out._sender.finish()  # wait until the part is sent: the upload exists, unfinished
    print("written", flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_writer_killed_mid_file_leaves_nothing_then_cleanup(kind, tmp_path, request):
    base = tmp_path / "out" if kind == "local" else request.getfixturevalue("s3_url")
    storage.write_bytes(storage.join(base, "done.json"), b"{}")
    target = storage.join(base, "00000.tar")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not storage.exists(target)
    assert list(storage.list_files(base)) == (["done.json"] if kind == "s3" else
                                              sorted(["done.json"] + [n for n in os.listdir(base) if ".tmp-" in n]))
    assert storage.remove_stale_temporaries(base) == 1  # the temporary file / the unfinished upload
    assert storage.remove_stale_temporaries(base) == 0
    assert list(storage.list_files(base)) == ["done.json"]


def test_errors_name_the_url(s3_server, s3_url):
    with pytest.raises(FileNotFoundError, match=r"s3://.*/nothing\.json"):
        storage.read_bytes(storage.join(s3_url, "nothing.json"))
    with pytest.raises(FileNotFoundError, match=r"s3://.*/nothing"):
        storage.list_files(storage.join(s3_url, "nothing"))
    with pytest.raises(OSError, match=r"s3://no-such-bucket-ccmb/x\.json"):
        storage.read_bytes("s3://no-such-bucket-ccmb/x.json")
    with pytest.raises(OSError, match=r"nosuchproto://x"):
        storage.read_bytes("nosuchproto://x")


def test_configuration_reaches_child_processes_through_the_environment(s3_server, s3_url):
    """fsspec's own variables configure the endpoint and keys; without credentials the error names the URL."""
    url = storage.join(s3_url, "x.txt")
    storage.write_text(url, "hello")
    code = ("import sys\nfrom ccmb import storage\ntry:\n    print(storage.read_text(sys.argv[1]))\n"
            "except OSError as e:\n    print(type(e).__name__, e)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    base.update(PYTHONPATH=str(ROOT), AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                AWS_EC2_METADATA_DISABLED="true")
    fsspec_env = dict(base, FSSPEC_S3_ENDPOINT_URL=s3_server.endpoint, FSSPEC_S3_KEY="k", FSSPEC_S3_SECRET="s")
    no_keys = dict(base, AWS_ENDPOINT_URL=s3_server.endpoint)
    out = [subprocess.run([sys.executable, "-c", code, url], env=env, capture_output=True, text=True, timeout=120,
                          cwd=ROOT).stdout.strip() for env in (fsspec_env, no_keys)]
    assert out[0] == "hello"
    assert out[1] == f"StorageError {url}: read: NoCredentialsError: Unable to locate credentials"
