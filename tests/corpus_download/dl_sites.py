"""Scripted loopback web sites for the politeness tests, each on its own 127.0.0.x address.

A :class:`Site` serves ``/robots.txt`` as scripted (a body, or a status such as 404/500) and:
``/img/N`` a JPEG; ``/private/N`` a JPEG (robots.txt may disallow it); ``/slow/N`` a JPEG after ``slow_s``;
``/throttle/N`` ``429`` the first time (with ``Retry-After: retry_after`` when set), then the JPEG;
``/busy/N`` always ``503``; ``/xrobots/N``, ``/usage/N``, ``/tdm/N`` a JPEG with an opt-out header
(``X-Robots-Tag: img2dataset: noai``, ``Content-Usage: train-ai=n``, ``tdm-reservation: 1``);
``/googlebot/N`` a JPEG with ``X-Robots-Tag: googlebot: noindex`` (not for us); ``/to?u=URL`` a redirect.

Every request is logged with its arrival time, and the site counts requests in flight (``max_in_flight``: from
the request's arrival until its answer is ready);
``hits(prefix)`` / ``times(prefix)`` read the log.
"""
from __future__ import annotations

import http.server
import threading
import time
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from dl_fault_server import send
from dl_helpers import jpeg


class Site:
    def __init__(self, host: str, robots: Optional[str] = None, robots_status: int = 200, slow_s: float = 0.3,
                 retry_after: Optional[str] = None) -> None:
        self.host = host
        self.robots = robots
        self.robots_status = robots_status
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.log: List[Tuple[float, str, str]] = []  # (time, path, user agent)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.throttled: Dict[str, int] = {}
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _finished(self) -> None:
                """The answer is ready: the request stops counting as in flight before a byte of it is sent (the
                client may start its next request the moment it has read this one)."""
                if not self._counted:
                    return
                self._counted = False
                with site.lock:
                    site.in_flight -= 1

            def _send(self, code: int, body: bytes, headers: Optional[Dict[str, str]] = None,
                      ctype: str = "image/jpeg") -> None:
                self._finished()
                send(self, code, body, ctype, headers)

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                with site.lock:
                    site.log.append((time.monotonic(), path, self.headers.get("User-Agent", "")))
                    site.in_flight += 1
                    site.max_in_flight = max(site.max_in_flight, site.in_flight)
                self._counted = True
                try:
                    self._route(path)
                finally:
                    self._finished()

            def _route(self, path: str) -> None:
                parts = path.strip("/").split("/")
                n = int(parts[-1].split(".")[0]) if parts[-1].split(".")[0].isdigit() else 0
                kind = parts[0]
                if path == "/robots.txt":
                    if site.robots is None or site.robots_status != 200:
                        self._send(site.robots_status if site.robots is not None else 404, b"no", ctype="text/plain")
                    else:
                        self._send(200, site.robots.encode(), ctype="text/plain")
                elif kind in ("img", "private", "nai"):
                    self._send(200, jpeg(n))
                elif kind == "slow":
                    time.sleep(site.slow_s)
                    self._send(200, jpeg(n))
                elif kind == "throttle":
                    with site.lock:
                        seen = site.throttled.get(path, 0)
                        site.throttled[path] = seen + 1
                    if seen == 0:
                        headers = {"Retry-After": site.retry_after} if site.retry_after is not None else {}
                        self._send(429, b"slow down", headers, ctype="text/plain")
                    else:
                        self._send(200, jpeg(n))
                elif kind == "busy":
                    self._send(503, b"busy", ctype="text/plain")
                elif kind == "xrobots":
                    self._send(200, jpeg(n), {"X-Robots-Tag": "img2dataset: noai"})
                elif kind == "usage":
                    self._send(200, jpeg(n), {"Content-Usage": "search=y, train-ai=n"})
                elif kind == "tdm":
                    self._send(200, jpeg(n), {"tdm-reservation": "1", "tdm-policy": "https://example.org/p.json"})
                elif kind == "googlebot":
                    self._send(200, jpeg(n), {"X-Robots-Tag": "googlebot: noindex"})
                elif kind == "to":
                    self._finished()
                    self.send_response(302)
                    self.send_header("Location", parse_qs(urlsplit(self.path).query)["u"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(404, b"unknown route", ctype="text/plain")

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://{host}:{self.server.server_address[1]}"

    def hits(self, prefix: str) -> List[str]:
        with self.lock:
            return [p for _, p, _ in self.log if p.startswith(prefix)]

    def times(self, prefix: str) -> List[float]:
        with self.lock:
            return [t for t, p, _ in self.log if p.startswith(prefix)]

    def agents(self) -> List[str]:
        with self.lock:
            return [a for _, _, a in self.log]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
