"""A loopback server for the fetch tests: plain files (with Range), a Hugging Face ``resolve`` endpoint and a
Google Drive ``uc?id=`` endpoint; it records every request and can drop a transfer half-way."""
from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    body: bytes
    drop_after: Optional[int] = None  # close the connection after this many body bytes (once)
    ranges: bool = True
    hold_after: Optional[int] = None  # send this many body bytes, then wait for `release` (to kill a client)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Loopback:
    files: Dict[str, Served] = field(default_factory=dict)  # "/path" -> content
    gdrive: Dict[str, Tuple[str, Served]] = field(default_factory=dict)  # id -> (filename, content)
    log: List[Tuple[str, str, Dict[str, str]]] = field(default_factory=list)  # (method, path, headers)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_for(self, fragment: str, method: str = "GET") -> List[Dict[str, str]]:
        return [h for m, p, h in self.log if fragment in p and m == method]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(members: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _handler(state: Loopback):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _lookup(self) -> Tuple[Optional[Served], Dict[str, str]]:
            parts = urlsplit(self.path)
            extra: Dict[str, str] = {}
            if parts.path == "/uc":
                fid = parse_qs(parts.query).get("id", [""])[0]
                if fid in state.gdrive:
                    name, served = state.gdrive[fid]
                    extra["Content-Disposition"] = f'attachment; filename="{name}"'
                    return served, extra
                return None, extra
            served = state.files.get(parts.path)
            if served is not None and "/resolve/" in parts.path:  # the Hugging Face endpoint
                extra["X-Repo-Commit"] = COMMIT
                extra["ETag"] = f'"{sha256(served.body)}"'
            return served, extra

        def _send(self, head_only: bool) -> None:
            state.log.append((self.command, self.path, dict(self.headers)))
            served, extra = self._lookup()
            if served is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, start, status = served.body, 0, 200
            rng = self.headers.get("Range")
            if rng and served.ranges and not head_only:
                m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                if m:
                    start = int(m.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
            self.send_response(status)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes" if served.ranges else "none")
            if "ETag" not in extra:
                self.send_header("ETag", f'"{sha256(body)[:16]}"')
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            for k, v in extra.items():
                self.send_header(k, v)
            if served.drop_after is not None and not head_only:
                self.send_header("Connection", "close")
            self.end_headers()
            if head_only:
                return
            if served.drop_after is not None:
                cut = served.drop_after
                served.drop_after = None  # only once
                self.wfile.write(chunk[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            if served.hold_after is not None:
                cut = served.hold_after
                served.hold_after = None  # only once
                try:
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    served.release.wait(60)
                    self.wfile.write(chunk[cut:])
                except (BrokenPipeError, ConnectionResetError):  # the client was killed meanwhile
                    pass
                self.close_connection = True
                return
            self.wfile.write(chunk)

        def do_GET(self):
            self._send(head_only=False)

        def do_HEAD(self):
            self._send(head_only=True)

    return Handler


class LoopbackServer:
    def __init__(self) -> None:
        self.state = Loopback()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.httpd.daemon_threads = True
        self.state.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self.state

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
