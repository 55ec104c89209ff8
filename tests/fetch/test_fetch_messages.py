"""`ccmb fetch` says what it tries as it goes, turns network errors into one readable line (never urllib3's
repr), and offline flags put the Hugging Face client offline too (no request, no retries)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import urllib3
from click.testing import CliRunner

from ccmb.fetch import Artifact, FetchError, FileSpec, UrlSource, fetch_file
from ccmb.fetch.http import describe_error
from fetch_helpers import LoopbackServer, Served, closed_port, sha256


def test_describe_error_reads_through_urllib3():
    url = "https://drive.google.com/uc?id=X"
    gai = socket.gaierror(-2, "Name or service not known")
    conn = urllib3.connection.HTTPSConnection("drive.google.com")
    nre = urllib3.exceptions.NameResolutionError("drive.google.com", conn, gai)
    wrapped = requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/uc", nre))
    assert describe_error(wrapped, url) == "cannot resolve drive.google.com: no network or no DNS"
    refused = requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/", urllib3.exceptions.NewConnectionError(conn, "refused")))
    refused.args[0].reason.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert describe_error(refused, "http://127.0.0.1:9/x") == "connection refused by 127.0.0.1:9 (nothing listens there)"
    assert "timed out talking to h:443" in describe_error(requests.ConnectTimeout("x"), "https://h/x")
    odd = RuntimeError("failed: <urllib3.connection.HTTPSConnection object at 0x7f00deadbeef>: boom")
    assert describe_error(odd) == "RuntimeError: failed: boom"


def _art(*specs):
    return Artifact(kind="models", name="thing", files=tuple(specs), manual="ask the authors")


def test_each_source_is_reported_with_a_readable_failure(home, tmp_path):
    data = os.urandom(5000)
    lines = []
    with LoopbackServer() as server:
        server.files["/w.bin"] = Served(data)
        dead = f"http://127.0.0.1:{closed_port()}/w.bin"
        spec = FileSpec("w.bin", (UrlSource(dead), UrlSource(server.base + "/w.bin")), size=len(data),
                        sha256=sha256(data))
        path, downloaded = fetch_file(_art(spec), spec, tmp_path / "m", report=lines.append)
    assert downloaded and path.read_bytes() == data
    assert lines[0] == f"w.bin (5.0 KB): trying source 1/2, {dead}"
    assert lines[1].startswith("  failed after ") and "connection refused by 127.0.0.1" in lines[1]
    assert lines[2].startswith("w.bin (5.0 KB): trying source 2/2, ")
    assert lines[3].startswith("  got 5.0 KB in ") and "verified (size 5000; sha256" in lines[3]
    again = []
    fetch_file(_art(spec), spec, tmp_path / "m", report=again.append)
    assert again == [f"w.bin: cached in {tmp_path / 'm'}, verified earlier"]


def test_a_server_that_never_answers_times_out_in_one_line(home, tmp_path, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    monkeypatch.setenv("CCMB_FETCH_TIMEOUT", "0.5")
    monkeypatch.setenv("CCMB_FETCH_READ_TIMEOUT", "1")
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/w.bin"
    spec = FileSpec("w.bin", (UrlSource(url),))
    t0 = time.perf_counter()
    with pytest.raises(FetchError) as err:
        fetch_file(_art(spec), spec, tmp_path / "m", retries=0)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "timed out talking to 127.0.0.1" in msg and "object at 0x" not in msg and "Pool" not in msg
    listener.close()


def test_fetch_model_cli_reports_as_it_goes(home, tmp_path, monkeypatch):
    from ccmb.cli import main
    from models import hub

    dead = f"http://127.0.0.1:{closed_port()}"
    registry = {"files": {}, "models": {"tiny-thing": {
        "config": "r2d2-tiny", "description": "a tiny thing", "manual": "ask the maintainers",
        "checkpoint": {"name": "t.pth", "size": 1234, "sha256": None, "sources": [{"url": dead + "/t.pth"}]}}}}
    monkeypatch.setattr(hub, "_registry", lambda: registry)
    res = CliRunner().invoke(main, ["fetch", "model", "tiny-thing"])
    assert res.exit_code == 1
    out = res.output
    assert "fetching model tiny-thing (a tiny thing): 1 files into" in out
    assert "t.pth (1.2 KB): trying source 1/1, " + dead + "/t.pth" in out
    assert "connection refused by 127.0.0.1" in out and "ask the maintainers" in out
    assert "urllib3" not in out and "object at 0x" not in out and "Traceback" not in out
    res = CliRunner().invoke(main, ["fetch", "model", "tiny-thin"])
    assert res.exit_code == 1 and "did you mean 'tiny-thing'" in res.output


def test_no_fetch_puts_the_hub_client_offline(tmp_path):
    """`ccmb-bench run --model chinese-clip-vit-b16 --no-fetch` (or CCMB_OFFLINE=1): transformers never asks the
    hub (HF_ENDPOINT points at a loopback server that counts requests) and no retries are spent."""
    root = tmp_path / "data"
    root.mkdir()
    with LoopbackServer() as server:
        for flags, extra_env in ((["--no-fetch"], {}), ([], {"CCMB_OFFLINE": "1"})):
            env = {k: v for k, v in os.environ.items()
                   if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CCMB_OFFLINE")}
            env.update(HF_ENDPOINT=server.base, CCMB_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"),
                       **extra_env)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "ccmb_bench", "run", "-m", "chinese-clip-vit-b16", "-d", "icm",
                                  "-r", str(root), *flags], capture_output=True, text=True, timeout=300, env=env)
            took = time.perf_counter() - t0
            assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
            assert "chinese-clip-vit-base-patch16" in out.stderr
            assert not server.log, f"{flags or extra_env}: the hub was asked: {json.dumps(server.log[:3])}"
            assert took < 120
