"""A real S3 API server on 127.0.0.1 for the tests: moto's standalone server (``python -m moto.server``), an
HTTP server speaking the S3 REST API; the client side is the real s3fs/botocore over HTTP (nothing mocked in
the client). Started once per test session, stopped by its pid.

Fixtures (registered in ``tests/conftest.py``):

* ``s3_server`` (session): :class:`S3Server` with ``endpoint``, ``bucket`` and the credentials, which are
  also put into the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
  ``AWS_ENDPOINT_URL``) so CLI subprocesses, DataLoader workers and Spark tasks reach it too;
* ``s3_url`` (function): a fresh ``s3://BUCKET/<test>-<random>`` prefix for one test.

``python tests/s3_server.py`` runs one by hand (prints the endpoint and the variables to export).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import pytest

BUCKET = "ccmb-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ccmb-test-key", "AWS_SECRET_ACCESS_KEY": "ccmb-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
#: Variables that would point the client elsewhere (a user's profile, a session token, another endpoint).
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE", "FSSPEC_S3", "FSSPEC_S3_ENDPOINT_URL")


@dataclass
class S3Server:
    """A running moto S3 server: ``endpoint`` (http://127.0.0.1:PORT), ``bucket``, ``pid``."""

    endpoint: str
    bucket: str
    pid: int
    log: Path
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)

    @property
    def env(self) -> Dict[str, str]:
        """The variables a process needs to reach this server."""
        return dict(CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint)

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}"] + [p.strip("/") for p in parts if p])

    def stop(self) -> None:
        """Stop the server by its pid (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_server(log_dir: Path, timeout: float = 60.0) -> S3Server:
    """Start ``python -m moto.server`` on 127.0.0.1 (a free port chosen by the OS) and wait until it answers."""
    log = Path(log_dir) / "moto-server.log"
    fh = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, **CREDENTIALS))
    fh.close()
    deadline = time.monotonic() + timeout
    port = None
    while time.monotonic() < deadline:
        m = re.search(rb"Running on http://127\.0\.0\.1:(\d+)", log.read_bytes())
        if m:
            port = int(m.group(1))
            break
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    if port is None:
        proc.kill()
        raise RuntimeError(f"moto server did not start within {timeout:.0f} s: {log}")
    server = S3Server(endpoint=f"http://127.0.0.1:{port}", bucket=BUCKET, pid=proc.pid, log=log, proc=proc)
    _create_bucket(server, deadline)
    return server


def _create_bucket(server: S3Server, deadline: float) -> None:
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    while True:
        try:
            client.create_bucket(Bucket=server.bucket)
            return
        except Exception:  # noqa: BLE001 - the server may still be starting its app
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_server():
    """One S3 server for the session; its endpoint and credentials are in the environment while it runs."""
    saved = {k: os.environ.get(k) for k in list(CREDENTIALS) + ["AWS_ENDPOINT_URL", *_CLEARED]}
    log_dir = Path(tempfile.mkdtemp(prefix="ccmb-s3-"))
    server = start_server(log_dir)
    for k in _CLEARED:
        os.environ.pop(k, None)
    os.environ.update(server.env)
    _drop_cached_filesystems()
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _drop_cached_filesystems()


def _drop_cached_filesystems() -> None:
    """s3fs caches filesystem instances (and their endpoint); the next use must see the current environment."""
    try:
        import s3fs
    except ImportError:  # pragma: no cover - s3fs is in the test extra
        return
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_url(s3_server, request) -> str:
    """A fresh prefix ``s3://BUCKET/<test name>-<random>`` for one test."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return s3_server.url(f"{safe}-{uuid.uuid4().hex[:8]}")


if __name__ == "__main__":  # pragma: no cover - manual use
    srv = start_server(Path(tempfile.mkdtemp(prefix="ccmb-s3-")))
    print(f"S3 server pid {srv.pid} at {srv.endpoint}, bucket s3://{srv.bucket}; log {srv.log}")
    print(" ".join(f"{k}={v}" for k, v in srv.env.items()))
    try:
        srv.proc.wait()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        srv.stop()
