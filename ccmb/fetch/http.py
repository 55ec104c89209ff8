"""Resumable single-file downloads over http(s) (``file://`` only when the caller allows it, for tests).

Bytes go to ``<dest>.part``; an interrupted download leaves that file (and ``<dest>.part.json`` with the
server's validator), and the next call asks for the rest with ``Range: bytes=N-`` + ``If-Range``. A server that
answers 200 instead of 206 (no range support, or the file changed) restarts from zero. The finished ``.part`` is
fsynced and renamed onto ``dest`` (atomic).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Tuple

logger = logging.getLogger(__name__)

CHUNK = 1 << 16  # small enough that a dropped connection loses little (urllib3 drops a partial chunk)
PART_SUFFIX = ".part"


class DownloadError(RuntimeError):
    """A transfer that did not complete (network error, HTTP error, refused scheme); partial bytes are kept."""


def connect_timeout() -> float:
    """Seconds to wait for a connection (and between bytes): ``$CCMB_FETCH_TIMEOUT``, default 10."""
    try:
        return float(os.environ.get("CCMB_FETCH_TIMEOUT", "10"))
    except ValueError:
        return 10.0


def read_timeout() -> float:
    """Seconds to wait for the next bytes of an answer: ``$CCMB_FETCH_READ_TIMEOUT``, default the larger of the
    connect timeout and 30 (a slow mirror is not a dead one)."""
    try:
        return float(os.environ["CCMB_FETCH_READ_TIMEOUT"])
    except (KeyError, ValueError):
        return max(connect_timeout(), 30.0)


def describe_error(exc: BaseException, url: str = "") -> str:
    """One readable line for a failed transfer: what went wrong with which host ("cannot resolve
    drive.google.com: no network or no DNS"), never the nested repr of urllib3's retry errors."""
    import socket
    import ssl

    parts = urllib.parse.urlsplit(url) if url else None
    host = (parts.hostname or "") if parts else ""
    where = f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}" if host else "the server"
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, socket.gaierror) or name == "NameResolutionError":
            return f"cannot resolve {host or 'the host name'}: no network or no DNS"
        if isinstance(e, ConnectionRefusedError):
            return f"connection refused by {where} (nothing listens there)"
        if isinstance(e, ConnectionResetError):
            return f"connection reset by {where}"
        if isinstance(e, ssl.SSLError) or name == "SSLError" and not isinstance(e, OSError):
            return f"TLS error with {where}: {getattr(e, 'reason', None) or _short(e)}"
        if isinstance(e, (socket.timeout, TimeoutError)) or name in ("ConnectTimeoutError", "ConnectTimeout",
                                                                      "ReadTimeoutError", "ReadTimeout"):
            return (f"timed out talking to {where} (connect {connect_timeout():g} s, read {read_timeout():g} s: "
                    "$CCMB_FETCH_TIMEOUT, $CCMB_FETCH_READ_TIMEOUT)")
        if isinstance(e, OSError) and e.errno is not None and e.strerror and name not in ("ConnectionError",):
            return f"{e.strerror.lower()} ({where})"
        nested = [getattr(e, "reason", None), e.__cause__, e.__context__]
        nested += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        todo += [n for n in nested if isinstance(n, BaseException)]
    return _short(exc)


def _short(exc: BaseException) -> str:
    """``Type: first line`` without object reprs (``<urllib3... object at 0x...>``), at most 200 characters."""
    import re

    text = " ".join(str(exc).split())
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*", "", text)
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_scheme(url: str, allow_file: bool = False) -> str:
    """The URL's scheme if allowed: http(s) always, ``file`` only with ``allow_file``."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return scheme
    if scheme == "file" and allow_file:
        return scheme
    raise DownloadError(f"{url}: only http(s) sources are allowed"
                        + (" (file:// needs --allow-file-urls)" if scheme == "file" else ""))


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def _meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX + ".json")


def _read_meta(dest: Path) -> dict:
    try:
        return json.loads(_meta_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def discard_partial(dest: Path) -> None:
    """Remove the partial bytes of ``dest`` (after a verification failure)."""
    for p in (part_path(dest), _meta_path(dest)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _finish(part: Path, dest: Path) -> Path:
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    try:
        _meta_path(dest).unlink()
    except FileNotFoundError:
        pass
    return dest


def download(url: str, dest: Path, *, allow_file: bool = False, timeout: Optional[float] = None,
             progress: Optional[Callable[[int, Optional[int]], None]] = None,
             headers: Optional[dict] = None) -> Tuple[Path, int]:
    """Download ``url`` to ``dest`` (resuming a previous ``.part``); returns ``(dest, resumed_from_bytes)``.

    Raises :class:`DownloadError` on any failure; the partial file stays for the next attempt.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = check_scheme(url, allow_file)
    part = part_path(dest)
    if scheme == "file":
        src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        if not src.is_file():
            raise DownloadError(f"{url}: no such file")
        shutil.copyfile(src, part)
        return _finish(part, dest), 0

    import requests

    timeout = connect_timeout() if timeout is None else timeout
    have = part.stat().st_size if part.is_file() else 0
    meta = _read_meta(dest)
    if have and meta.get("url") not in (None, url):
        logger.info("%s: partial bytes came from %s; resuming from this mirror (verification follows)",
                 dest.name, meta.get("url"))
    req_headers = {"Accept-Encoding": "identity", "User-Agent": "ccmb-fetch"}
    req_headers.update(headers or {})
    if have:
        req_headers["Range"] = f"bytes={have}-"
        if meta.get("validator"):
            req_headers["If-Range"] = meta["validator"]
    try:
        resp = requests.get(url, headers=req_headers, stream=True, timeout=(timeout, read_timeout()),
                            allow_redirects=True)
    except requests.RequestException as exc:
        raise DownloadError(f"{url}: {describe_error(exc, url)}") from exc
    with resp:
        if resp.status_code == 416 and have:  # our range starts at/after the end: maybe already complete
            total = _total_from_content_range(resp.headers.get("Content-Range", ""))
            if total is not None and total == have:
                return _finish(part, dest), have
            discard_partial(dest)
            raise DownloadError(f"{url}: server refused the resume range (HTTP 416); partial file discarded")
        if resp.status_code not in (200, 206):
            raise DownloadError(f"{url}: HTTP {resp.status_code} {resp.reason}")
        if resp.status_code == 206 and have:
            start = _start_from_content_range(resp.headers.get("Content-Range", ""))
            if start != have:
                raise DownloadError(f"{url}: server answered range starting at {start}, asked {have}")
            mode, resumed = "ab", have
        else:
            if have:
                logger.info("%s: server sent the whole file (no range support or the file changed); restarting",
                         dest.name)
            mode, resumed = "wb", 0
        length = resp.headers.get("Content-Length")
        total = (int(length) + resumed) if length and length.isdigit() else None
        validator = resp.headers.get("ETag")
        if not validator or validator.startswith("W/"):
            validator = resp.headers.get("Last-Modified")
        _meta_path(dest).write_text(json.dumps({"url": url, "validator": validator, "total": total}),
                                    encoding="utf-8")
        done = resumed
        try:
            with open(part, mode) as fh:
                for chunk in resp.iter_content(CHUNK):
                    if chunk:
                        fh.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
        except (requests.RequestException, OSError) as exc:
            raise DownloadError(f"{url}: interrupted after {done} bytes ({describe_error(exc, url)}); "
                                f"partial file kept for resume: {part}") from exc
        if total is not None and done != total:
            raise DownloadError(f"{url}: got {done} of {total} bytes; partial file kept for resume: {part}")
    return _finish(part, dest), resumed


def _start_from_content_range(value: str) -> Optional[int]:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total_from_content_range(value: str) -> Optional[int]:
    # "bytes */200"
    try:
        total = value.rsplit("/", 1)[1]
        return None if total == "*" else int(total)
    except (IndexError, ValueError):
        return None
