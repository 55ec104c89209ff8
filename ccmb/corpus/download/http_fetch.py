"""The guarded HTTP fetch used for every image download (it replaces img2dataset's urllib fetch).

Limits, all enforced while the response streams in, each failure a short reason for the row:

* a wall-clock **deadline per request** (``--timeout``: DNS, connect, headers, body and redirects together;
  a server trickling one byte per second cannot hold a row longer): ``deadline exceeded``;
* a **maximum response size** (``--max-bytes``): a larger ``Content-Length`` is refused before the body
  is read, a body without one is cut off at the cap: ``response larger than --max-bytes``;
* **redirects only to http(s)** (``file:``, ``data:``, ``ftp:`` ... refused): ``redirect to non-http(s)
  URL``; at most :data:`MAX_REDIRECTS` hops: ``redirect loop``;
* unless ``allow_private`` (``--allow-private``), no connection to an address that is not public unicast
  (:mod:`ccmb.corpus.download.netguard`: every IANA special-purpose range, IPv4-mapped/NAT64/6to4 forms),
  checked on the address actually connected to, at every hop (so also after a redirect and a DNS answer
  that changes): ``private address refused``;
* informational responses (``1xx``, e.g. ``103 Early Hints``) are skipped, the final response is read;
* a response that is not 2xx fails as ``HTTP Error <status>: <reason>`` (:class:`HTTPStatusError`, which
  carries the status and the parsed ``Retry-After``), with the server's text escaped
  (:func:`ccmb.corpus.download.safetext.escape_controls`).

``check_hop`` may refuse any URL of the redirect chain before it is requested, and
``same_authority`` stops at a redirect to another scheme/host/port (:class:`CrossAuthorityRedirect`, so
the caller can check robots.txt and pace the new host first).

**Proxies** follow urllib's environment (``http_proxy``, ``https_proxy``, ``no_proxy`` and their upper-case
forms; :func:`urllib.request.getproxies` / ``proxy_bypass_environment``), read once per process: an http
target is requested from the proxy by absolute URI, an https target through a ``CONNECT`` tunnel (TLS and
certificate checks end to end with the target); ``user:pass@`` in the proxy URL becomes a Basic
``Proxy-Authorization``. The deadline and the size cap apply unchanged (the watchdog holds the socket to
the proxy). The private-address guard allows the proxy's own address (corporate proxies often sit on
private addresses); the *target* host is resolved locally and refused if any of its addresses is refused
(best effort: the proxy resolves it again itself, and a name that does not resolve locally is passed on).

The deadline is enforced by one watchdog thread per process that shuts down the socket of a request
whose deadline has passed, which wakes any blocked read at once. No content decoding is done
(``Accept-Encoding: identity``), so a compressed "bomb" is stored as sent (and then fails to decode).
"""
from __future__ import annotations

import base64
import email.utils
import heapq
import http.client
import io
import ipaddress
import itertools
import os
import socket
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote, unquote, urljoin, urlsplit

from .netguard import parse_ip, refused_ip
from .safetext import escape_controls

MAX_REDIRECTS = 10
#: Informational (1xx) responses skipped before the final one; more fail the request.
MAX_INTERIM = 8
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
CHUNK = 64 * 1024
REDIRECT_CODES = (301, 302, 303, 307, 308)

# Reasons (first words of the error message; ccmb.corpus.download counts failures by them).
DEADLINE = "deadline exceeded"
TOO_LARGE = "response larger than --max-bytes"
BAD_REDIRECT = "redirect to non-http(s) URL"
REDIRECT_LOOP = "redirect loop"
PRIVATE = "private address refused"
TRUNCATED = "truncated response"


class FetchError(Exception):
    """A request failed; ``str()`` is the reason stored for the row."""


class HTTPStatusError(FetchError):
    """The final response was not 2xx: ``status``, and ``retry_after`` (seconds) when the server sent one."""

    def __init__(self, status: int, reason: str, retry_after: Optional[float] = None) -> None:
        super().__init__(f"HTTP Error {status}: {escape_controls(reason, 200)}")
        self.status = status
        self.retry_after = retry_after


class CrossAuthorityRedirect(Exception):
    """With ``same_authority``: the server redirects to ``url`` on another scheme, host or port."""

    def __init__(self, url: str) -> None:
        super().__init__(f"redirect to {escape_controls(url, 200)}")
        self.url = url


@dataclass(frozen=True)
class FetchLimits:
    """Per-request limits (picklable: they travel to the download workers)."""

    timeout: float = 10.0  # wall-clock seconds for the whole request, redirects included
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_private: bool = False  # connect to loopback/private/special-purpose addresses too


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value[:12]))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# ----------------------------------------------------------------------------------- the watchdog

class _Watchdog:
    """One daemon thread per process: shuts down the sockets of requests past their deadline."""

    def __init__(self) -> None:
        self._heap: List[Tuple[float, int, "_Request"]] = []
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._pid = 0

    def add(self, request: "_Request") -> None:
        with self._cond:
            if self._thread is None or self._pid != os.getpid():  # (re)start after a fork
                self._heap = []
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="ccmb-fetch-deadline", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (request.end, next(self._ids), request))
            if self._heap[0][2] is request:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                end = self._heap[0][0]
                now = time.monotonic()
                if now < end:
                    self._cond.wait(end - now)
                    continue
                _, _, request = heapq.heappop(self._heap)
            request.expire()


_WATCHDOG = _Watchdog()


class _Request:
    """Deadline state of one request: the watchdog shuts down its current socket when time is up."""

    def __init__(self, timeout: float) -> None:
        self.end = time.monotonic() + timeout
        self.timeout = timeout
        self.done = False
        self.expired = False
        self.sock: Optional[socket.socket] = None
        self._lock = threading.Lock()

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise FetchError(f"{DEADLINE} ({self.timeout:g}s per request)")
        return left

    def set_socket(self, sock: Optional[socket.socket]) -> None:
        with self._lock:
            self.sock = sock
            if sock is not None and self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            if self.sock is not None:
                _shutdown(self.sock)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self.sock = None


def _shutdown(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown (an SSLSocket's own would drop its TLS state under a reader)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


# ----------------------------------------------------------------------------------- connections

def resolve(host: str, port: int, request: "_Request") -> list:
    """``socket.getaddrinfo(host, port)`` for TCP, within the request's deadline.

    The lookup runs in a daemon thread: a resolver that hangs (a dead nameserver costs its own timeout times its
    retries, often 30 s or more) fails the row with ``deadline exceeded`` when the request's time is up instead
    of holding it. The abandoned lookup finishes in the background (``getaddrinfo`` cannot be interrupted)."""
    if _is_ip_literal(host):  # nothing to look up: no thread
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    outcome: Dict[str, Any] = {}
    finished = threading.Event()

    def lookup() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the waiting request
            outcome["error"] = exc
        finished.set()

    threading.Thread(target=lookup, name="ccmb-fetch-resolve", daemon=True).start()
    if not finished.wait(request.remaining()):
        raise FetchError(f"{DEADLINE} ({request.timeout:g}s per request; resolving {host} did not finish)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["infos"]


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        return False


def _connect(host: str, port: int, request: _Request, allow_private: bool,
             source_address: Any = None) -> socket.socket:
    """Resolve ``host`` and connect to its first allowed address, within the request's deadline."""
    infos = resolve(host, port, request)
    last: Optional[BaseException] = None
    refused: Optional[str] = None
    for family, socktype, proto, _, addr in infos:
        why = None if allow_private else refused_ip(parse_ip(addr[0]))
        if why:
            refused = refused or f"{addr[0]}: {why}"
            continue
        sock = socket.socket(family, socktype, proto)
        try:
            sock.settimeout(request.remaining())
            if source_address:
                sock.bind(source_address)
            request.set_socket(sock)
            sock.connect(addr)
            return sock
        except BaseException as exc:
            request.set_socket(None)
            sock.close()
            if isinstance(exc, FetchError) or not isinstance(exc, OSError):
                raise
            last = exc
    if last is not None:
        raise last
    if refused:
        raise FetchError(f"{PRIVATE} ({host} -> {refused}; --allow-private allows it)")
    raise OSError(f"getaddrinfo returned no address for {host}")


class _Response(http.client.HTTPResponse):
    """A response that skips informational (1xx) responses, such as ``103 Early Hints``, before the final one."""

    def _read_status(self):  # type: ignore[override]
        for _ in range(MAX_INTERIM + 1):
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim response's headers: discarded
        raise FetchError(f"more than {MAX_INTERIM} informational (1xx) responses")


def _connection_class(base: type) -> type:
    class Guarded(base):  # type: ignore[misc, valid-type]
        response_class = _Response

        def __init__(self, host: str, *, request: _Request, allow_private: bool, **kw: Any) -> None:
            super().__init__(host, timeout=request.timeout, **kw)
            self._request = request

            def create_connection(address, timeout=None, source_address=None):
                sock = _connect(address[0], address[1], request, allow_private, source_address)
                sock.settimeout(min(request.timeout, max(request.end - time.monotonic(), 0.001)))
                return sock

            self._create_connection = create_connection

        def _tunnel(self) -> None:
            # CONNECT [v6]:port: Python < 3.12 writes an IPv6 literal without its brackets ("CONNECT ::1:443"),
            # which a proxy cannot parse; 3.12+ brackets it itself and leaves a bracketed host alone
            host = self._tunnel_host
            if host and ":" in host and not host.startswith("["):
                self._tunnel_host = f"[{host}]"
            try:
                super()._tunnel()
            finally:
                self._tunnel_host = host

        def connect(self) -> None:
            if not isinstance(self, http.client.HTTPSConnection):
                super().connect()
                return
            # https: wrap without the implicit handshake, so the watchdog holds the TLS socket during it
            # (a server trickling its handshake is cut at the deadline too). Through a proxy, the plain
            # connect() below has already opened the CONNECT tunnel; TLS then speaks to the tunnel host.
            http.client.HTTPConnection.connect(self)
            server_hostname = self._tunnel_host or self.host
            sock = self._context.wrap_socket(self.sock, server_hostname=server_hostname,
                                             do_handshake_on_connect=False)
            self.sock = sock
            self._request.set_socket(sock)
            sock.do_handshake()

    return Guarded


_HTTPConnection = _connection_class(http.client.HTTPConnection)
_HTTPSConnection = _connection_class(http.client.HTTPSConnection)
_SSL_CONTEXT: Optional[ssl.SSLContext] = None


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


# ----------------------------------------------------------------------------------- proxies

_PROXIES: Optional[Tuple[int, Dict[str, str]]] = None  # (pid, urllib.request.getproxies()) of this process


def _proxy_settings() -> Dict[str, str]:
    """urllib's proxy settings from the environment, read once per process (workers read their own)."""
    global _PROXIES
    if _PROXIES is None or _PROXIES[0] != os.getpid():
        _PROXIES = (os.getpid(), urllib.request.getproxies())
    return _PROXIES[1]


@dataclass(frozen=True)
class _Proxy:
    netloc: str  # host[:port] of the proxy
    authorization: Optional[str]  # the Proxy-Authorization header value, if the URL has credentials


def _proxy_for(scheme: str, netloc: str) -> Optional[_Proxy]:
    """The proxy to use for a ``scheme`` URL on ``netloc`` (host[:port]), or None for a direct connection."""
    proxies = _proxy_settings()
    url = proxies.get(scheme)
    if not url or urllib.request.proxy_bypass_environment(netloc, proxies):
        return None
    if "://" not in url:  # "proxy:3128", as urllib accepts
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        # urllib also talks plain HTTP to an https:// proxy URL; other schemes (socks...) it cannot use
        raise FetchError(f"unsupported proxy {parts.scheme or 'URL'!r} in {scheme}_proxy (only http proxies)")
    authorization = None
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(creds).decode("ascii")
    return _Proxy(parts.netloc.rpartition("@")[2], authorization)


def _check_target_address(host: str, port: int, request: "_Request") -> None:
    """The guard through a proxy: refuse a target that resolves (here) to a refused address."""
    try:
        infos = resolve(host, port, request)
    except socket.gaierror:
        return  # not resolvable here (common behind an egress proxy): the proxy resolves it
    for *_, addr in infos:
        why = refused_ip(parse_ip(addr[0]))
        if why:
            raise FetchError(f"{PRIVATE} ({host} -> {addr[0]}: {why}; --allow-private allows it)")


# ----------------------------------------------------------------------------------- the fetch

HeaderCheck = Callable[[http.client.HTTPMessage], Optional[str]]


def fetch(url: str, limits: FetchLimits, headers: Optional[dict] = None, check_headers: Optional[HeaderCheck] = None,
          *, check_hop: Optional[Callable[[str], Optional[str]]] = None, max_redirects: int = MAX_REDIRECTS,
          same_authority: bool = False, truncate_at: Optional[int] = None) -> bytes:
    """GET ``url`` (http or https) within ``limits``; returns the body, raises :class:`FetchError` or OSError.

    ``check_headers`` may refuse the final response by its headers (returns a reason, or None);
    ``check_hop`` may refuse a redirect target before it is requested (same). With ``same_authority`` a
    redirect to another scheme/host/port raises :class:`CrossAuthorityRedirect` instead of being followed.
    ``truncate_at`` returns the first that many bytes of a longer body instead of failing (robots.txt).
    """
    request = _Request(limits.timeout)
    _WATCHDOG.add(request)
    try:
        return _fetch(url, limits, request, headers or {}, check_headers, check_hop, max_redirects, same_authority,
                      truncate_at)
    except (OSError, http.client.HTTPException) as exc:
        if request.expired or time.monotonic() >= request.end:
            raise FetchError(f"{DEADLINE} ({limits.timeout:g}s per request)") from exc
        raise
    finally:
        request.finish()


def authority(parts) -> Tuple[str, str, int]:
    """(scheme, host, port) of a split URL: what one robots.txt covers."""
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _fetch(url: str, limits: FetchLimits, request: _Request, headers: dict, check_headers: Optional[HeaderCheck],
           check_hop: Optional[Callable[[str], Optional[str]]], max_redirects: int, same_authority: bool,
           truncate_at: Optional[int] = None) -> bytes:
    seen = set()
    first = authority(urlsplit(url))
    for hop in range(max_redirects + 1):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(f"unsupported URL scheme {scheme!r} (only http/https)")
        if not parts.hostname:
            raise FetchError("invalid URL: no host")
        if hop:
            if same_authority and authority(parts) != first:
                raise CrossAuthorityRedirect(url)
            reason = check_hop(url) if check_hop is not None else None
            if reason:
                raise FetchError(reason)
        seen.add(url)
        netloc = parts.netloc.rpartition("@")[2]
        cls = _HTTPSConnection if scheme == "https" else _HTTPConnection
        kw = {"context": _ssl_context()} if scheme == "https" else {}
        path = _quote(parts.path or "/")
        if parts.query:
            path += "?" + _quote(parts.query)
        extra = {}
        proxy = _proxy_for(scheme, netloc)
        if proxy is None:
            conn = cls(netloc, request=request, allow_private=limits.allow_private, **kw)
        else:
            if not limits.allow_private:
                _check_target_address(parts.hostname, parts.port or (443 if scheme == "https" else 80), request)
            conn = cls(proxy.netloc, request=request, allow_private=True, **kw)  # the proxy may be private
            auth = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else {}
            if scheme == "https":
                conn.set_tunnel(netloc, headers=auth)  # CONNECT; credentials go to the proxy only
            else:
                path = f"http://{netloc}{path}"  # absolute URI; http.client sets Host to the target
                extra = auth
        try:
            conn.request("GET", path, headers={"Accept-Encoding": "identity", "Connection": "close", **headers,
                                               **extra})
            resp = conn.getresponse()
            location = resp.getheader("Location") if resp.status in REDIRECT_CODES else None
            if location is not None:
                new = urljoin(url, location.strip())
                if urlsplit(new).scheme.lower() not in ("http", "https"):
                    raise FetchError(f"{BAD_REDIRECT} ({escape_controls(urlsplit(new).scheme, 40) or 'no'} scheme)")
                if new in seen:
                    raise FetchError(f"{REDIRECT_LOOP} (back to an earlier URL)")
                url = new.split("#")[0]
                continue
            if not 200 <= resp.status < 300:
                retry_after = None
                if resp.status in (429, 503):
                    retry_after = parse_retry_after(resp.getheader("Retry-After"))
                raise HTTPStatusError(resp.status, resp.reason or "", retry_after)
            if check_headers is not None:
                reason = check_headers(resp.msg)
                if reason:
                    raise FetchError(reason)
            return _read_body(resp, limits, request, truncate_at)
        finally:
            conn.close()
            request.set_socket(None)
    raise FetchError(f"{REDIRECT_LOOP} (more than {max_redirects} redirects)")


def _quote(text: str) -> str:
    """Percent-encode what may not appear in a request line (non-ASCII, spaces); keeps %XX and delimiters."""
    if text.isascii() and " " not in text:
        return text
    return quote(text, safe="!#$%&'()*+,/:;=?@[]~")


def _read_body(resp: http.client.HTTPResponse, limits: FetchLimits, request: _Request,
               truncate_at: Optional[int] = None) -> bytes:
    length = resp.getheader("Content-Length")
    expected: Optional[int] = None
    if length is not None:
        try:
            expected = int(length.strip())
        except ValueError:
            expected = None
        if truncate_at is not None:
            expected = None if expected is None or expected > truncate_at else expected
        elif expected is not None and expected > limits.max_bytes:
            raise FetchError(f"{TOO_LARGE} (Content-Length {expected} > {limits.max_bytes})")
    buf = io.BytesIO()
    size = 0
    while True:
        request.remaining()
        chunk = resp.read1(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if truncate_at is not None and size >= truncate_at:
            buf.write(chunk[: len(chunk) - (size - truncate_at)])
            return buf.getvalue()
        if size > limits.max_bytes:
            raise FetchError(f"{TOO_LARGE} (more than {limits.max_bytes} bytes)")
        buf.write(chunk)
    if request.expired:
        raise FetchError(f"{DEADLINE} ({limits.timeout:g}s per request)")
    if expected is not None and size < expected:
        raise FetchError(f"{TRUNCATED} ({size} of {expected} bytes)")
    return buf.getvalue()
