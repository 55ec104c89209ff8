"""The guarded fetch through an HTTP proxy from the environment (http_proxy, https_proxy, no_proxy)."""
from __future__ import annotations

import base64
import os
import re
import select
import socket
import socketserver
import ssl
import threading
import time
from typing import Dict, List, Tuple

import pytest

from ccmb.corpus.download import http_fetch
from ccmb.corpus.download.http_fetch import FetchError, FetchLimits, fetch
from dl_fault_server import start_server
from dl_helpers import jpeg

pytestmark = pytest.mark.timeout(120)

PROXY_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy",
             "ALL_PROXY")


class ForwardProxy:
    """A tiny forward proxy on 127.0.0.1: absolute-URI GETs are relayed byte for byte, CONNECT is tunnelled.

    ``names`` maps host names to (address, port), so a target name need not resolve anywhere."""

    def __init__(self) -> None:
        self.request_lines: List[str] = []
        self.headers: List[Dict[str, str]] = []
        self.names: Dict[str, Tuple[str, int]] = {}
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(65537).decode("latin-1").rstrip("\r\n")
                headers = {}
                while True:
                    h = self.rfile.readline(65537).decode("latin-1").rstrip("\r\n")
                    if not h:
                        break
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
                proxy.request_lines.append(line)
                proxy.headers.append(headers)
                method, target, _ = line.split(" ", 2)
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    upstream = socket.create_connection(proxy.names.get(host, (host, int(port))))
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                else:
                    assert target.startswith("http://"), line  # a proxy gets the absolute URI
                    netloc, _, path = target[len("http://"):].partition("/")
                    host, _, port = netloc.rpartition(":")
                    upstream = socket.create_connection(proxy.names.get(host, (host, int(port or 80))))
                    upstream.sendall(f"GET /{path} HTTP/1.0\r\nHost: {headers['host']}\r\n"
                                     "Connection: close\r\n\r\n".encode("latin-1"))
                _relay(self.connection, upstream)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        while True:
            ready, _, _ = select.select([client, upstream], [], [], 30)
            if not ready:
                return
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (upstream if src is client else client).sendall(data)
    except OSError:
        pass
    finally:
        upstream.close()


@pytest.fixture
def proxy():
    p = ForwardProxy()
    yield p
    p.close()


@pytest.fixture
def proxy_env(monkeypatch):
    """Set proxy variables for one test; the per-process cache is cleared before and restored after."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(http_fetch, "_PROXIES", None)

    def set_env(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(http_fetch, "_PROXIES", None)

    return set_env


def test_http_goes_through_the_proxy_by_absolute_uri(image_server, proxy, proxy_env):
    proxy_env(http_proxy=proxy.url)
    n = len(image_server.requests)
    assert fetch(f"{image_server.base}/img/3.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(3)
    assert proxy.request_lines == [f"GET {image_server.base}/img/3.jpg HTTP/1.1"]
    assert proxy.headers[0]["host"] == image_server.base[len("http://"):]
    assert "proxy-authorization" not in proxy.headers[0]
    assert image_server.requests[n:] == ["/img/3.jpg"]  # the origin was reached (by the proxy)


def test_redirects_through_the_proxy_keep_their_checks(image_server, proxy, proxy_env):
    proxy_env(HTTP_PROXY=proxy.url)  # upper case works too
    assert fetch(f"{image_server.base}/redir/img/4", FetchLimits(allow_private=True, timeout=3)) == jpeg(4)
    assert [line.split()[1] for line in proxy.request_lines] == [f"{image_server.base}/redir/img/4",
                                                                 f"{image_server.base}/img/4.jpg"]
    with pytest.raises(FetchError, match=re.escape(http_fetch.BAD_REDIRECT)):
        fetch(f"{image_server.base}/redir/file/1", FetchLimits(allow_private=True, timeout=3))


def test_no_proxy_bypasses_the_proxy(image_server, proxy, proxy_env):
    proxy_env(http_proxy=proxy.url, no_proxy="example.org,127.0.0.1")
    assert fetch(f"{image_server.base}/img/1.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(1)
    assert proxy.request_lines == []


def test_proxy_settings_are_read_once_per_process(image_server, proxy, proxy_env, monkeypatch):
    proxy_env()  # no proxy: cached as such
    assert fetch(f"{image_server.base}/img/1.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(1)
    monkeypatch.setenv("http_proxy", proxy.url)
    assert fetch(f"{image_server.base}/img/1.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(1)
    assert proxy.request_lines == []
    monkeypatch.setattr(http_fetch, "_PROXIES", (-1, {}))  # as after a fork: the new process reads its own
    assert fetch(f"{image_server.base}/img/1.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(1)
    assert len(proxy.request_lines) == 1


def test_proxy_credentials_become_proxy_authorization(image_server, proxy, proxy_env):
    proxy_env(http_proxy=proxy.url.replace("http://", "http://al%40ice:p%3Ass@"))
    assert fetch(f"{image_server.base}/img/2.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(2)
    assert proxy.headers[0]["proxy-authorization"] == "Basic " + base64.b64encode(b"al@ice:p:ss").decode()
    assert proxy.request_lines[0].startswith(f"GET {image_server.base}/img/2.jpg ")  # no credentials in it


def test_the_deadline_fires_through_a_trickling_proxy(image_server, proxy, proxy_env):
    proxy_env(http_proxy=proxy.url)
    image_server.trickle_s = 0.2
    try:
        t0 = time.monotonic()
        with pytest.raises(FetchError, match=re.escape(http_fetch.DEADLINE)):
            fetch(f"{image_server.base}/trickle/1.jpg", FetchLimits(allow_private=True, timeout=1.5))
        elapsed = time.monotonic() - t0
    finally:
        image_server.trickle_s = 0.5
    assert elapsed < 3.0 and len(proxy.request_lines) == 1


def test_the_deadline_covers_a_silent_proxy(proxy_env):
    """A proxy that accepts the connection and never answers (neither a GET nor a CONNECT)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        port = listener.getsockname()[1]
        proxy_env(http_proxy=f"127.0.0.1:{port}", https_proxy=f"http://127.0.0.1:{port}")
        for url in ("http://images.test/x.jpg", "https://images.test/x.jpg"):
            t0 = time.monotonic()
            with pytest.raises(FetchError, match=re.escape(http_fetch.DEADLINE)):
                fetch(url, FetchLimits(allow_private=True, timeout=1))
            assert time.monotonic() - t0 < 2.5, url
    finally:
        listener.close()


def test_max_bytes_applies_through_the_proxy(image_server, proxy, proxy_env):
    proxy_env(http_proxy=proxy.url)
    with pytest.raises(FetchError, match="more than 1048576 bytes"):
        fetch(f"{image_server.base}/huge/1.jpg", FetchLimits(allow_private=True, timeout=10, max_bytes=1 << 20))
    with pytest.raises(FetchError, match="Content-Length 1000000000000"):
        fetch(f"{image_server.base}/hugelen/1.jpg", FetchLimits(allow_private=True, timeout=3))


def test_deny_private_allows_the_proxy_but_not_a_private_target(proxy, proxy_env, monkeypatch):
    """Only 127.0.0.1 counts as private here: the proxy on it is used, a target on it is refused."""
    inner, server = start_server("127.0.0.2")
    try:
        monkeypatch.setattr(http_fetch, "refused_ip", lambda ip: "stub" if str(ip) == "127.0.0.1" else None)
        proxy_env(http_proxy=proxy.url)
        limits = FetchLimits(timeout=3)
        assert fetch(f"{inner.base}/img/2.jpg", limits) == jpeg(2)
        assert len(proxy.request_lines) == 1
        with pytest.raises(FetchError, match=re.escape(http_fetch.PRIVATE)):
            fetch(f"http://127.0.0.1:{server.server_address[1]}/img/2.jpg", limits)
        with pytest.raises(FetchError, match=re.escape(http_fetch.PRIVATE)):  # also after a redirect to it
            fetch(f"{inner.base}/to?u=http://127.0.0.1:9/img/2.jpg", limits)
        assert len(proxy.request_lines) == 2  # neither refused target was asked of the proxy
    finally:
        server.shutdown()
        server.server_close()


def test_deny_private_passes_on_a_name_only_the_proxy_resolves(image_server, proxy, proxy_env, monkeypatch):
    port = int(image_server.base.rsplit(":", 1)[1])
    proxy.names["images.internal"] = ("127.0.0.1", port)
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kw):
        if host == "images.internal":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    proxy_env(http_proxy=proxy.url)
    assert fetch(f"http://images.internal:{port}/img/6.jpg", FetchLimits(timeout=3)) == jpeg(6)
    assert proxy.request_lines == [f"GET http://images.internal:{port}/img/6.jpg HTTP/1.1"]



def test_deny_private_target_lookup_that_hangs_is_cut_at_the_deadline(image_server, proxy, proxy_env,
                                                                       monkeypatch):
    """The local check of the target's addresses is bounded by the request's deadline too."""
    import time

    port = int(image_server.base.rsplit(":", 1)[1])
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kw):
        if host == "slow-dns.internal":
            time.sleep(5)
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    proxy_env(http_proxy=proxy.url)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="resolving slow-dns.internal"):
        fetch(f"http://slow-dns.internal:{port}/img/6.jpg", FetchLimits(timeout=1))
    assert time.monotonic() - t0 < 2.0
    assert proxy.request_lines == []  # the proxy was never asked

def test_https_goes_through_a_connect_tunnel(tls_server, proxy, proxy_env, monkeypatch):  # noqa: F811
    """TLS runs end to end with the target (its certificate and name are checked), the proxy sees CONNECT."""
    proxy_env(https_proxy=proxy.url.replace("http://", "http://bob:secret@"), http_proxy="http://127.0.0.1:9")
    port = tls_server.base.rsplit(":", 1)[1]
    proxy.names["images.test"] = ("127.0.0.1", int(port))
    monkeypatch.setattr(http_fetch, "_SSL_CONTEXT", ssl.create_default_context(cafile=tls_server.cafile))
    n = len(tls_server.requests)
    assert fetch(f"{tls_server.base}/img/5.jpg", FetchLimits(allow_private=True, timeout=5)) == jpeg(5)
    assert proxy.request_lines == [f"CONNECT 127.0.0.1:{port} HTTP/1.0"]
    assert proxy.headers[0]["proxy-authorization"] == "Basic " + base64.b64encode(b"bob:secret").decode()
    assert tls_server.requests[n:] == ["/img/5.jpg"]  # the origin gets the path, not the absolute URI
    # the certificate is for 127.0.0.1: a tunnel to another name fails verification against that name
    with pytest.raises(ssl.SSLCertVerificationError, match="images.test"):
        fetch(f"https://images.test:{port}/img/5.jpg", FetchLimits(allow_private=True, timeout=5))
    tls_server.trickle_s = 0.2
    try:
        t0 = time.monotonic()
        with pytest.raises(FetchError, match=re.escape(http_fetch.DEADLINE)):
            fetch(f"{tls_server.base}/trickle/1.jpg", FetchLimits(allow_private=True, timeout=1.5))
        assert time.monotonic() - t0 < 3.0
    finally:
        tls_server.trickle_s = 0.5



def test_an_ipv6_literal_target_is_bracketed_in_connect(tls_server, proxy, proxy_env, monkeypatch):  # noqa: F811
    """``CONNECT [::1]:PORT``: Python 3.11's http.client wrote ``CONNECT ::1:PORT``, which no proxy can parse.
    The proxy maps the target to the TLS server on 127.0.0.1, whose certificate is not for ::1, so only the
    tunnel and the request are checked here (no certificate check)."""
    proxy_env(https_proxy=proxy.url)
    port = int(tls_server.base.rsplit(":", 1)[1])
    proxy.names["[::1]"] = ("127.0.0.1", port)
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    monkeypatch.setattr(http_fetch, "_SSL_CONTEXT", unverified)
    n = len(tls_server.requests)
    assert fetch(f"https://[::1]:{port}/img/7.jpg", FetchLimits(allow_private=True, timeout=5)) == jpeg(7)
    assert proxy.request_lines == [f"CONNECT [::1]:{port} HTTP/1.0"]
    assert tls_server.requests[n:] == ["/img/7.jpg"]

def test_a_refused_tunnel_is_a_failure_with_the_proxys_status(proxy_env):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        proxy_env(https_proxy=f"http://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(OSError, match="Tunnel connection failed: 407"):
            fetch("https://images.test/x.jpg", FetchLimits(allow_private=True, timeout=3))
    finally:
        listener.close()


def test_proxy_url_forms(monkeypatch):
    def proxy_for(scheme: str, netloc: str, proxies: dict):
        monkeypatch.setattr(http_fetch, "_PROXIES", (os.getpid(), proxies))
        return http_fetch._proxy_for(scheme, netloc)

    assert proxy_for("http", "a.test", {"http": "proxy.corp:3128"}) == http_fetch._Proxy("proxy.corp:3128", None)
    assert proxy_for("https", "a.test", {"http": "proxy.corp:3128"}) is None  # no https_proxy: direct
    assert proxy_for("http", "a.test:8080", {"http": "http://p:1", "no": "a.test"}) is None
    assert proxy_for("http", "b.a.test", {"http": "http://p:1", "no": ".a.test"}) is None
    assert proxy_for("http", "b.test", {"http": "http://p:1", "no": "*"}) is None
    assert proxy_for("http", "b.test", {"http": "http://p:1", "no": "a.test"}).netloc == "p:1"
    with pytest.raises(FetchError, match="unsupported proxy 'socks5'"):
        proxy_for("http", "b.test", {"http": "socks5://p:1080"})
