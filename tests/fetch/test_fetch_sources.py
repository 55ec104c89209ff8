"""Every source path against loopback servers: plain mirror (resume, corruption, fallback), Hugging Face via
HF_ENDPOINT, Google Drive via gdown, user mirrors, file:// behind a flag, offline and no network."""
from __future__ import annotations

import json
import os
import time

import pytest

from ccmb.fetch import (Artifact, FetchError, FileSpec, GDriveSource, HFSource, UrlSource, fetch_artifact,
                        fetch_file)
from ccmb.fetch import http as fhttp
from fetch_helpers import Served, closed_port, sha256

DATA = os.urandom(300_000)


def _art(*specs, name="thing", manual="ask the authors"):
    return Artifact(kind="models", name=name, files=tuple(specs), manual=manual)


def test_plain_mirror_download_is_verified_and_cached(server, home):
    server.files["/w.bin"] = Served(DATA)
    spec = FileSpec("w.bin", (UrlSource(server.base + "/w.bin"),), size=len(DATA), sha256=sha256(DATA))
    path, downloaded = fetch_file(_art(spec), spec, home / "m")
    assert downloaded and path.read_bytes() == DATA
    assert not list((home / "m").glob("*.part*"))  # no partial leftovers
    record = json.loads((home / "m" / ".ccmb-fetch.json").read_text())
    assert record["w.bin"]["sha256"] == sha256(DATA)
    n = len(server.log)
    path2, downloaded2 = fetch_file(_art(spec), spec, home / "m")
    assert path2 == path and not downloaded2 and len(server.log) == n  # cached: no request at all


def test_resume_after_a_killed_download(server, home):
    """A killed process leaves <file>.part; the next fetch asks only for the rest."""
    server.files["/w.bin"] = Served(DATA)
    folder = home / "m"
    folder.mkdir(parents=True)
    (folder / "w.bin.part").write_bytes(DATA[:123_456])
    spec = FileSpec("w.bin", (UrlSource(server.base + "/w.bin"),), size=len(DATA), sha256=sha256(DATA))
    path, _ = fetch_file(_art(spec), spec, folder)
    assert path.read_bytes() == DATA
    gets = server.requests_for("/w.bin")
    assert [h.get("Range") for h in gets] == ["bytes=123456-"]


def test_resume_after_killing_the_downloading_process(server, home):
    """SIGKILL a real download half-way; the next fetch resumes from the bytes on disk."""
    import signal
    import subprocess
    import sys

    server.files["/slow.bin"] = Served(DATA, hold_after=150_000)  # the server stalls after 150 kB
    folder = home / "m"
    folder.mkdir(parents=True)
    code = ("import sys; from pathlib import Path; from ccmb.fetch.http import download; "
            "download(sys.argv[1], Path(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, server.base + "/slow.bin", str(folder / "w.bin")])
    part = folder / "w.bin.part"
    deadline = time.time() + 60
    while time.time() < deadline and (not part.exists() or part.stat().st_size < 100_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    server.files["/slow.bin"].release.set()
    kept = part.stat().st_size
    assert 100_000 <= kept <= 150_000 and not (folder / "w.bin").exists()
    spec = FileSpec("w.bin", (UrlSource(server.base + "/slow.bin"),), size=len(DATA), sha256=sha256(DATA))
    path, _ = fetch_file(_art(spec), spec, folder)
    assert path.read_bytes() == DATA
    assert server.requests_for("/slow.bin")[-1].get("Range") == f"bytes={kept}-"


def test_dropped_connection_is_resumed(server, home):
    server.files["/w.bin"] = Served(DATA, drop_after=100_000)
    spec = FileSpec("w.bin", (UrlSource(server.base + "/w.bin"),), sha256=sha256(DATA))
    path, _ = fetch_file(_art(spec), spec, home / "m", retries=1)
    assert path.read_bytes() == DATA
    ranges = [h.get("Range") for h in server.requests_for("/w.bin")]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0


def test_server_without_ranges_restarts_from_zero(server, home):
    server.files["/w.bin"] = Served(DATA, ranges=False)
    folder = home / "m"
    folder.mkdir(parents=True)
    (folder / "w.bin.part").write_bytes(b"x" * 5000)  # stale bytes must not survive
    spec = FileSpec("w.bin", (UrlSource(server.base + "/w.bin"),), sha256=sha256(DATA))
    assert fetch_file(_art(spec), spec, folder)[0].read_bytes() == DATA


def test_corrupt_file_is_removed_and_next_source_used(server, home):
    bad = bytearray(DATA)
    bad[1000] ^= 0xFF
    server.files["/bad/w.bin"] = Served(bytes(bad))
    server.files["/good/w.bin"] = Served(DATA)
    spec = FileSpec("w.bin", (UrlSource(server.base + "/bad/w.bin"), UrlSource(server.base + "/good/w.bin")),
                    sha256=sha256(DATA))
    path, _ = fetch_file(_art(spec), spec, home / "m")
    assert path.read_bytes() == DATA
    assert len(server.requests_for("/bad/")) == 1 and len(server.requests_for("/good/")) == 1
    # the good source started from zero: the corrupt bytes were discarded, not resumed
    assert server.requests_for("/good/")[0].get("Range") is None


def test_corrupt_cached_file_is_refetched(server, home):
    server.files["/w.bin"] = Served(DATA)
    folder = home / "m"
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(b"not it")
    spec = FileSpec("w.bin", (UrlSource(server.base + "/w.bin"),), sha256=sha256(DATA))
    assert fetch_file(_art(spec), spec, folder)[0].read_bytes() == DATA
    assert (folder / "w.bin.rejected").read_bytes() == b"not it"  # a manual copy is set aside, not deleted


def test_a_file_put_by_hand_is_verified_without_network(home, tmp_path, monkeypatch):
    folder = home / "m"
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(DATA)
    monkeypatch.setenv("CCMB_OFFLINE", "1")
    spec = FileSpec("w.bin", (UrlSource(f"http://127.0.0.1:{closed_port()}/w.bin"),), sha256=sha256(DATA))
    path, downloaded = fetch_file(_art(spec), spec, folder)
    assert not downloaded and json.loads((folder / ".ccmb-fetch.json").read_text())["w.bin"]["source"] == "present"


def test_size_mismatch_everywhere_fails_naming_each_source(server, home):
    server.files["/a/w.bin"] = Served(DATA[:-1])
    server.files["/b/w.bin"] = Served(DATA[:-2])
    spec = FileSpec("w.bin", (UrlSource(server.base + "/a/w.bin"), UrlSource(server.base + "/b/w.bin")),
                    size=len(DATA))
    with pytest.raises(FetchError) as err:
        fetch_file(_art(spec), spec, home / "m")
    msg = str(err.value)
    assert "/a/w.bin" in msg and "/b/w.bin" in msg and "failed verification" in msg and "ask the authors" in msg
    assert not (home / "m" / "w.bin").exists()


def test_hugging_face_source_through_hf_endpoint(server, home, hf_online, monkeypatch):
    server.files["/datasets/org/evalsets/resolve/main/SET.zip"] = Served(DATA)
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    spec = FileSpec("SET.zip", (HFSource("org/evalsets", "SET.zip", "dataset"),), sha256=sha256(DATA))
    path, downloaded = fetch_file(_art(spec), spec, home / "d")
    assert downloaded and path.read_bytes() == DATA
    assert server.requests_for("/datasets/org/evalsets/resolve/main/SET.zip")  # went through the endpoint
    assert not (home / "d" / ".hf-SET.zip").exists()  # huggingface_hub's working folder is cleaned up


def test_google_drive_source_through_gdown(server, home, monkeypatch):
    server.gdrive["FILEID123"] = ("original_name.pth", Served(DATA))
    monkeypatch.setenv("CCMB_GDRIVE_URL", server.base + "/uc?id={id}")
    spec = FileSpec("r2d2.pth", (GDriveSource("FILEID123"),), sha256=sha256(DATA))
    path, _ = fetch_file(_art(spec), spec, home / "m")
    assert path.name == "r2d2.pth" and path.read_bytes() == DATA
    assert server.requests_for("/uc?id=FILEID123")


def test_gdrive_url_must_stay_http(home, monkeypatch, tmp_path):
    monkeypatch.setenv("CCMB_GDRIVE_URL", "file:///etc/{id}")
    spec = FileSpec("x", (GDriveSource("passwd"),))
    with pytest.raises(FetchError, match="only http"):
        fetch_file(_art(spec), spec, tmp_path / "m")


def test_user_mirrors_come_first(server, home, monkeypatch):
    server.files["/mirror/models/thing/w.bin"] = Served(DATA)
    server.files["/official/w.bin"] = Served(DATA)
    monkeypatch.setenv("CCMB_MIRRORS", f"http://127.0.0.1:{closed_port()}/dead, {server.base}/mirror")
    spec = FileSpec("w.bin", (UrlSource(server.base + "/official/w.bin"),), sha256=sha256(DATA))
    fetch_file(_art(spec), spec, home / "m")
    assert server.requests_for("/mirror/models/thing/w.bin") and not server.requests_for("/official/")


def test_mirrors_txt_with_placeholders(server, home):
    server.files["/flat/w.bin"] = Served(DATA)
    home.mkdir(parents=True)
    (home / "mirrors.txt").write_text(f"# my mirror\n{server.base}/flat/{{file}}\n")
    spec = FileSpec("w.bin", (), sha256=sha256(DATA))
    assert fetch_file(_art(spec), spec, home / "m")[0].read_bytes() == DATA


def test_file_urls_need_the_flag(home, tmp_path):
    src = tmp_path / "local.bin"
    src.write_bytes(DATA)
    spec = FileSpec("w.bin", (UrlSource(src.as_uri()),), sha256=sha256(DATA))
    with pytest.raises(FetchError, match="allow-file-urls"):
        fetch_file(_art(spec), spec, tmp_path / "m")
    assert fetch_file(_art(spec), spec, tmp_path / "m", allow_file=True)[0].read_bytes() == DATA


def test_no_network_fails_within_seconds(home, hf_online, monkeypatch, tmp_path):
    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setenv("CCMB_GDRIVE_URL", dead + "/uc?id={id}")
    spec = FileSpec("w.pth", (GDriveSource("GID"), HFSource("org/repo", "w.pth"), UrlSource(dead + "/w.pth")))
    t0 = time.perf_counter()
    with pytest.raises(FetchError) as err:
        fetch_file(_art(spec, manual="browser: https://example.org/manual"), spec, tmp_path / "m")
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "Google Drive GID" in msg and "Hugging Face model org/repo/w.pth" in msg and dead + "/w.pth" in msg
    assert "https://example.org/manual" in msg and str(tmp_path / "m" / "w.pth") in msg


def test_offline_uses_cache_and_never_touches_the_network(server, home, monkeypatch):
    server.files["/w.bin"] = Served(DATA)
    spec = FileSpec("w.bin", (UrlSource(server.base + "/w.bin"),), sha256=sha256(DATA))
    other = FileSpec("v.bin", (UrlSource(server.base + "/v.bin"),))
    fetch_file(_art(spec), spec, home / "m")
    n = len(server.log)
    monkeypatch.setenv("CCMB_OFFLINE", "1")
    assert fetch_file(_art(spec), spec, home / "m")[0].read_bytes() == DATA
    t0 = time.perf_counter()
    with pytest.raises(FetchError, match="offline") as err:
        fetch_file(_art(other), other, home / "m")
    assert time.perf_counter() - t0 < 2 and len(server.log) == n
    assert server.base + "/v.bin" in str(err.value)  # names the source it would have tried


def test_manual_only_artifact_explains(tmp_path):
    art = Artifact("datasets", "secret", files=(), manual="get it from https://zero.so.com")
    with pytest.raises(FetchError, match="zero.so.com"):
        fetch_artifact(art, tmp_path)


def test_http_416_on_a_complete_part_finishes(server, tmp_path):
    server.files["/w.bin"] = Served(DATA)
    dest = tmp_path / "w.bin"
    fhttp.part_path(dest).write_bytes(DATA)
    path, resumed = fhttp.download(server.base + "/w.bin", dest)
    assert path.read_bytes() == DATA and resumed == len(DATA)
