"""Fixtures of the download tests: the loopback fault server (``dl_fault_server``) over http and https."""
from __future__ import annotations

import http.server
import os
import socket
import threading

import pytest

from dl_fault_server import ImageServer, _handler, start_server

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def image_server():
    """A ThreadingHTTPServer on 127.0.0.1 (a thread of the test process); yields its state with ``.base``."""
    state = ImageServer()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def refused_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/img/1.jpg"


@pytest.fixture
def small_opts() -> dict:
    """Download options for tests: one process, few threads, tiny images, short timeout, loopback allowed."""
    return dict(processes=1, threads=4, image_size=32, timeout=2, retries=0, samples_per_shard=10, allow_private=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """The fault server over https, with a self-signed certificate for 127.0.0.1 (made by openssl)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out",
                    str(d / "cert.pem")], check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    state, server = start_server(tls_context=server_ctx)
    state.cafile = str(d / "cert.pem")
    yield state
    server.shutdown()
    server.server_close()
