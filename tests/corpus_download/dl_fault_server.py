"""A loopback fault server for download tests: generated images and every kind of bad response.

Routes (``/<kind>/<n>[.ext]``): ``img`` (a JPEG), ``slow`` (sleeps ``slow_s`` first), ``404``, ``500``,
``loop`` (redirects to itself), ``text``, ``truncated`` (half a JPEG, honest length), ``short`` (fewer
bytes than its Content-Length, then close), ``noai``, ``flaky``, ``bomb`` (PNG claiming 17000x17000
pixels), ``gzipbomb`` (a gzip stream of ``gzip_bomb_mb`` MB of zeros, ``Content-Encoding: gzip``),
``trickle`` (one byte every ``trickle_s`` seconds), ``huge`` (``huge_bytes`` of body, no Content-Length),
``hugelen`` (claims a Content-Length of 10**12), ``redir/<ftp|file|data|img>`` (redirects to such a URL),
``to?u=URL`` (redirects to URL), ``early`` (``103 Early Hints`` and ``100 Continue`` first), ``esc`` (a status
line with terminal escapes).
"""
from __future__ import annotations

import gzip
import http.server
import os
import struct
import threading
import time
import zlib
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

from dl_helpers import jpeg

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def bomb_png(side: int = 17_000) -> bytes:
    """A small PNG (1-bit, all zeros) whose header claims side x side pixels (over ccmb's pixel cap)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    co = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    body = b"".join(co.compress(row) for _ in range(side)) + co.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


class ImageServer:
    """State shared with the handler: request log, the flaky switch, slow delay."""

    def __init__(self) -> None:
        self.flaky_ok = False
        self.slow_s = 0.5
        self.requests: List[str] = []
        self.user_agents: List[str] = []
        self.lock = threading.Lock()
        self._bomb: Optional[bytes] = None
        self._gzip_bomb: Optional[bytes] = None
        self.gzip_bomb_mb = 64
        self.trickle_s = 0.5
        self.huge_bytes = 8 * 1024 * 1024
        self.base = ""

    @property
    def bomb(self) -> bytes:
        if self._bomb is None:
            self._bomb = bomb_png()
        return self._bomb

    @property
    def gzip_bomb(self) -> bytes:
        if self._gzip_bomb is None:
            self._gzip_bomb = gzip.compress(b"\0" * (self.gzip_bomb_mb << 20), 9)
        return self._gzip_bomb


def send(handler: http.server.BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "image/jpeg",
         headers: Optional[Dict[str, str]] = None) -> None:
    """A complete response with its Content-Length (a client gone away is not an error)."""
    handler.send_response(code)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    try:
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _handler(state: ImageServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, fmt, *args):  # quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", headers: Dict[str, str] = None):
            send(self, code, body, ctype, headers)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _stream(self, body_parts, headers: Dict[str, str]) -> None:
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            try:
                for part in body_parts:
                    self.wfile.write(part)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass

        def do_GET(self):  # noqa: N802
            path = self.path.split("?")[0]
            with state.lock:
                state.requests.append(path)
                state.user_agents.append(self.headers.get("User-Agent", ""))
            parts = path.strip("/").split("/")
            n = int(parts[-1].split(".")[0]) if parts[-1].split(".")[0].isdigit() else 0
            kind = parts[0]
            if kind == "img":
                self._send(200, jpeg(n))
            elif kind == "slow":
                time.sleep(state.slow_s)
                self._send(200, jpeg(n))
            elif kind == "404":
                self._send(404, b"not found", "text/plain")
            elif kind == "500":
                self._send(500, b"boom", "text/plain")
            elif kind == "loop":
                self.send_response(302)
                self.send_header("Location", f"/loop/{n}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif kind == "text":
                self._send(200, b"<html>this is not an image</html>" * 10)
            elif kind == "truncated":
                data = jpeg(n, size=(120, 90))
                self._send(200, data[: len(data) // 2])
            elif kind == "noai":
                self._send(200, jpeg(n), headers={"X-Robots-Tag": "noai"})
            elif kind == "flaky":
                if state.flaky_ok:
                    self._send(200, jpeg(n))
                else:
                    self._send(503, b"try later", "text/plain")
            elif kind == "bomb":
                self._send(200, state.bomb, "image/png")
            elif kind == "gzipbomb":
                self._send(200, state.gzip_bomb, "image/jpeg", headers={"Content-Encoding": "gzip"})
            elif kind == "trickle":
                data = jpeg(n)

                def trickle():
                    for i in range(len(data)):
                        time.sleep(state.trickle_s)
                        yield data[i:i + 1]
                self._stream(trickle(), {"Content-Type": "image/jpeg", "Content-Length": str(len(data))})
            elif kind == "huge":
                block = b"\0" * 65536
                self._stream((block for _ in range(state.huge_bytes // len(block))), {"Content-Type": "image/jpeg"})
            elif kind == "hugelen":
                self._stream(iter([b"\0" * 1024]), {"Content-Type": "image/jpeg", "Content-Length": str(10 ** 12)})
            elif kind == "short":
                data = jpeg(n)
                self._stream(iter([data[: len(data) // 2]]),
                             {"Content-Type": "image/jpeg", "Content-Length": str(len(data))})
            elif kind == "redir":
                target = parts[1] if len(parts) > 2 else ""
                self._redirect({"ftp": "ftp://127.0.0.1/x.jpg", "file": "file:///etc/hostname",
                                "data": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ==",
                                "img": f"/img/{n}.jpg"}.get(target, "/404/0"))
            elif kind == "early":  # 103 Early Hints (and a 100 Continue) before the final response
                self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                                 b"HTTP/1.1 100 Continue\r\n\r\n")
                self._send(200, jpeg(n))
            elif kind == "esc":  # a status line with terminal escapes and a bidi override (UTF-8 bytes)
                self.wfile.write(b"HTTP/1.0 500 \x1b[2J\x1b]0;owned\x07 \xe2\x80\xaeevil\r\n"
                                 b"Content-Length: 0\r\n\r\n")
                self.close_connection = True
            elif kind == "to":
                self._redirect(parse_qs(urlsplit(self.path).query)["u"][0])
            else:
                self._send(404, b"unknown route", "text/plain")

    return Handler


def start_server(host: str = "127.0.0.1", tls_context=None):
    """Start a fault server on ``host`` (a thread of the test process); returns (state, server).

    With ``tls_context`` (a server-side ``ssl.SSLContext``) it serves https."""
    state = ImageServer()
    server = http.server.ThreadingHTTPServer((host, 0), _handler(state))
    server.daemon_threads = True
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.base = f"{'https' if tls_context else 'http'}://{host}:{server.server_address[1]}"
    return state, server
