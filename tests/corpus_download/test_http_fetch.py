"""The guarded fetch against the fault server: deadline, size cap, redirect schemes, private addresses, 1xx,
server text with control characters."""
from __future__ import annotations

import time

import pytest

from ccmb.corpus.download import http_fetch
from ccmb.corpus.download.http_fetch import FetchError, FetchLimits, fetch
from dl_fault_server import start_server
from dl_helpers import jpeg

pytestmark = pytest.mark.timeout(120)


def _fails(url: str, limits: FetchLimits = FetchLimits(allow_private=True, timeout=3)) -> str:
    with pytest.raises(FetchError) as info:
        fetch(url, limits)
    return str(info.value)


def test_a_plain_image_and_a_redirect_to_one(image_server):
    b = image_server.base
    assert fetch(f"{b}/img/3.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(3)
    assert fetch(f"{b}/redir/img/4", FetchLimits(allow_private=True, timeout=3)) == jpeg(4)


def test_http_errors_keep_urllibs_wording(image_server):
    assert _fails(f"{image_server.base}/404/1.jpg") == "HTTP Error 404: Not Found"
    assert _fails(f"{image_server.base}/500/1.jpg").startswith("HTTP Error 500")


def test_deadline_is_per_request_not_per_read(image_server):
    """A server sending one byte every 0.2 s never trips a per-read timeout; the deadline stops it."""
    image_server.trickle_s = 0.2
    try:
        t0 = time.monotonic()
        reason = _fails(f"{image_server.base}/trickle/1.jpg", FetchLimits(allow_private=True, timeout=1.5))
        elapsed = time.monotonic() - t0
    finally:
        image_server.trickle_s = 0.5
    assert reason.startswith(http_fetch.DEADLINE), reason
    assert elapsed < 3.0  # 1.5 s deadline (the old fetch took len(jpeg) * 0.2 s, minutes)


def test_deadline_covers_a_slow_first_byte(image_server):
    image_server.slow_s = 3.0
    try:
        t0 = time.monotonic()
        reason = _fails(f"{image_server.base}/slow/1.jpg", FetchLimits(allow_private=True, timeout=1))
    finally:
        image_server.slow_s = 0.5
    assert reason.startswith(http_fetch.DEADLINE) and time.monotonic() - t0 < 2.5


def test_body_over_max_bytes_is_cut_while_streaming(image_server):
    image_server.huge_bytes = 32 << 20
    try:
        t0 = time.monotonic()
        reason = _fails(f"{image_server.base}/huge/1.jpg", FetchLimits(allow_private=True, timeout=10, max_bytes=1 << 20))
    finally:
        image_server.huge_bytes = 8 << 20
    assert reason.startswith(http_fetch.TOO_LARGE) and "more than 1048576 bytes" in reason
    assert time.monotonic() - t0 < 5


def test_huge_content_length_is_refused_before_reading(image_server):
    reason = _fails(f"{image_server.base}/hugelen/1.jpg")
    assert reason == f"{http_fetch.TOO_LARGE} (Content-Length {10 ** 12} > {http_fetch.DEFAULT_MAX_BYTES})"


@pytest.mark.parametrize("target", ["ftp", "file", "data"])
def test_redirects_only_to_http(image_server, target):
    assert _fails(f"{image_server.base}/redir/{target}/1").startswith(http_fetch.BAD_REDIRECT)


def test_redirect_loop_and_truncated_body(image_server):
    assert _fails(f"{image_server.base}/loop/1").startswith(http_fetch.REDIRECT_LOOP)
    assert _fails(f"{image_server.base}/short/1.jpg").startswith(http_fetch.TRUNCATED)


def test_compressed_bodies_are_never_inflated(image_server):
    """A gzip 'bomb' (64 MB of zeros in ~64 KB) is stored as sent, not decompressed into memory."""
    body = fetch(f"{image_server.base}/gzipbomb/1.jpg", FetchLimits(allow_private=True, timeout=10, max_bytes=1 << 20))
    assert body == image_server.gzip_bomb and len(body) < 1 << 20


def test_non_http_urls_are_refused():
    assert _fails("ftp://127.0.0.1/x.jpg").startswith("unsupported URL scheme 'ftp'")
    assert _fails("file:///etc/hostname").startswith("unsupported URL scheme 'file'")


def test_the_private_address_guard_is_on_unless_allowed(image_server):
    url = f"{image_server.base}/img/1.jpg"
    assert fetch(url, FetchLimits(allow_private=True, timeout=3)) == jpeg(1)
    n = len(image_server.requests)
    assert _fails(url, FetchLimits(timeout=3)).startswith(http_fetch.PRIVATE)
    assert len(image_server.requests) == n  # no connection was made


def test_the_guard_is_checked_again_after_a_redirect(image_server, monkeypatch):
    """Only 127.0.0.2 counts as private here: a redirect from 127.0.0.1 to it is refused at the new hop."""
    inner, server = start_server("127.0.0.2")
    try:
        monkeypatch.setattr(http_fetch, "refused_ip", lambda ip: "stub" if str(ip) == "127.0.0.2" else None)
        limits = FetchLimits(timeout=3)
        assert fetch(f"{inner.base}/img/2.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(2)  # reachable when allowed
        assert fetch(f"{image_server.base}/img/2.jpg", limits) == jpeg(2)  # 127.0.0.1 allowed by the stub
        reason = _fails(f"{image_server.base}/to?u={inner.base}/img/2.jpg", limits)
        assert reason.startswith(http_fetch.PRIVATE), reason
        assert len(inner.requests) == 1  # only the allowed direct request reached it
    finally:
        server.shutdown()
        server.server_close()


def test_non_ascii_and_spaces_in_the_path_are_percent_encoded(image_server):
    """Chinese file names are common in the Zero URLs; urllib sent them raw and failed ('ascii' codec)."""
    n = len(image_server.requests)
    assert fetch(f"{image_server.base}/img/图片 1.jpg?q=猫", FetchLimits(allow_private=True, timeout=3)) == jpeg(0)
    assert image_server.requests[n:] == ["/img/%E5%9B%BE%E7%89%87%201.jpg"]


def test_https_verifies_certificates_and_keeps_the_deadline(tls_server, monkeypatch):
    import ssl

    url = f"{tls_server.base}/img/5.jpg"
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):  # self-signed: refused by default
        fetch(url, FetchLimits(allow_private=True, timeout=5))
    monkeypatch.setattr(http_fetch, "_SSL_CONTEXT", ssl.create_default_context(cafile=tls_server.cafile))
    assert fetch(url, FetchLimits(allow_private=True, timeout=5)) == jpeg(5)
    tls_server.trickle_s = 0.2
    t0 = time.monotonic()
    reason = _fails(f"{tls_server.base}/trickle/1.jpg", FetchLimits(allow_private=True, timeout=1.5))
    assert reason.startswith(http_fetch.DEADLINE) and time.monotonic() - t0 < 3.0, reason
    assert _fails(f"{tls_server.base}/redir/file/1").startswith(http_fetch.BAD_REDIRECT)


def test_a_silent_tls_peer_is_cut_at_the_deadline():
    """A peer that accepts the connection and never answers the TLS handshake."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        t0 = time.monotonic()
        reason = _fails(f"https://127.0.0.1:{listener.getsockname()[1]}/x.jpg", FetchLimits(allow_private=True, timeout=1))
        assert reason.startswith(http_fetch.DEADLINE) and time.monotonic() - t0 < 2.5, reason
    finally:
        listener.close()


def test_a_hanging_dns_lookup_is_cut_at_the_deadline(image_server, monkeypatch):
    """A resolver that never answers (a dead nameserver): the row fails at the deadline, not after the
    resolver's own timeouts; a name that resolves at once still goes through the threaded lookup."""
    import socket

    real = socket.getaddrinfo
    port = int(image_server.base.rsplit(":", 1)[1])

    def getaddrinfo(host, *args, **kw):
        if host == "hangs.example":
            time.sleep(5)
        if host in ("hangs.example", "fast.example"):
            host = "127.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    t0 = time.monotonic()
    reason = _fails(f"http://hangs.example:{port}/img/1.jpg", FetchLimits(allow_private=True, timeout=1))
    assert reason.startswith(http_fetch.DEADLINE) and "resolving hangs.example" in reason, reason
    assert time.monotonic() - t0 < 2.0
    assert fetch(f"http://fast.example:{port}/img/2.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(2)


def test_a_failed_dns_lookup_keeps_its_error(monkeypatch):
    import socket

    def getaddrinfo(host, *args, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(socket.gaierror, match="Name or service not known"):
        fetch("http://nowhere.example/1.jpg", FetchLimits(allow_private=True, timeout=3))


def test_informational_responses_are_skipped(image_server):
    """``103 Early Hints`` (and ``100 Continue``) before the final response: the image is read, not a failure."""
    assert fetch(f"{image_server.base}/early/4.jpg", FetchLimits(allow_private=True, timeout=3)) == jpeg(4)


def test_control_characters_from_the_server_are_escaped(image_server):
    reason = _fails(f"{image_server.base}/esc/1.jpg", FetchLimits(allow_private=True, timeout=3))
    # the status line's bytes (ESC, BEL, and U+202E in UTF-8, read as Latin-1 like every status line) are escaped
    assert reason == "HTTP Error 500: \\x1b[2J\\x1b]0;owned\\x07 \xe2\\x80\xaeevil", reason
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in reason)


def test_retry_after_is_parsed_on_429():
    from ccmb.corpus.download.http_fetch import parse_retry_after

    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 10) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("-1") is None


def test_same_authority_stops_at_a_redirect_to_another_host(image_server):
    inner, server = start_server("127.0.0.3")
    try:
        limits = FetchLimits(allow_private=True, timeout=3)
        with pytest.raises(http_fetch.CrossAuthorityRedirect) as info:
            fetch(f"{image_server.base}/to?u={inner.base}/img/2.jpg", limits, same_authority=True)
        assert info.value.url == f"{inner.base}/img/2.jpg" and inner.requests == []
        assert fetch(f"{image_server.base}/redir/img/2", limits, same_authority=True) == jpeg(2)  # same host: followed
        hops = []
        with pytest.raises(FetchError, match="blocked hop"):
            fetch(f"{image_server.base}/redir/img/2", limits, check_hop=lambda u: hops.append(u) or "blocked hop")
        assert hops == [f"{image_server.base}/img/2.jpg"]
    finally:
        server.shutdown()
        server.server_close()
