"""Where ccmb's data lives: a local path or any fsspec URL (``s3://``, ``gs://``, ``hdfs://``, ...).

The one module that turns a path a user gives into file operations: open for reading, atomic writes, list,
exists, size, remove. Local paths (and ``file://`` URLs) take the standard library exactly as before
(:mod:`ccmb.atomic`: temporary file, fsync, rename) and come back as :class:`pathlib.Path`; every other
``scheme://`` URL goes through fsspec (imported on first use, so ``import ccmb.storage`` stays light) and
comes back as a ``str`` (``Path`` would fold ``s3://`` into ``s3:/``).

Guarantees, the same on disk and on object storage:

* **A file appears whole or not at all** (:class:`AtomicFile`, :func:`atomic_open`, :func:`write_bytes`):

  - local: a temporary ``.NAME.tmp-*`` beside it, fsync, rename;
  - object stores whose uploads publish atomically (S3 and S3-compatible servers, GCS: :data:`UPLOAD_PUBLISH`):
    a file smaller than :data:`WRITE_BLOCK` stays in memory and is sent by one ``PutObject`` at
    :meth:`AtomicFile.publish` (a PUT makes the object appear whole); a larger one is opened *uncommitted*
    (fsspec's ``autocommit=False``): its bytes travel as a multipart upload that no reader sees until
    :meth:`AtomicFile.publish` completes it in one request; a completed upload replaces an existing object
    atomically. Nothing is copied. A writer killed mid-file leaves an unfinished
    upload, never an object; :func:`remove_stale_temporaries` aborts those under a folder (a bucket lifecycle
    rule ``AbortIncompleteMultipartUpload`` does it too);
  - every other fsspec filesystem (HDFS, SFTP, Azure, memory, ...): a temporary ``.NAME.tmp-*`` in the same
    folder, then ``mv`` (a rename where the filesystem has one, else copy + delete: the final name appears
    only once all its bytes are there); leftovers are removed by :func:`remove_stale_temporaries`.
* **Markers last**: multi-file outputs publish their files one by one and the file that says "complete" (a
  shard's ``_stats.json``, ``manifest.json``, a table's marker) last; readers decide completeness by the
  marker alone, so a listing between two publishes never shows a complete-looking partial output.
* **Fresh listings**: fsspec's listing cache is dropped before :func:`listdir` / :func:`list_files` /
  :func:`exists`, so a resumed run sees what another (or a killed) process left.
* **One read per object per run, where asked for**: inside a :func:`read_cache` block (``build-shards`` opens
  one) a small object read whole answers later reads of its path from memory, and :func:`warm` reads objects
  ahead into it; this process's writes and removals through this module update or forget what it holds.
* **Errors name the path**: a missing file is a :class:`FileNotFoundError`, any other failure of the store
  (no credentials, endpoint unreachable, access denied) an :class:`OSError` whose message starts with the URL.

Credentials and endpoints come from the usual places of each filesystem, so subprocesses (CLI commands,
DataLoader workers, Spark tasks) get them from the environment: for S3 ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_ENDPOINT_URL`` (or ``~/.aws``), and fsspec's own
``FSSPEC_<PROTOCOL>_<OPTION>`` variables (``FSSPEC_S3_ENDPOINT_URL=http://...``), or :func:`configure`.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import atomic
from .types import PathLike

logger = logging.getLogger(__name__)

#: A place as the functions here return it: a ``Path`` for local files, a ``str`` URL for everything else.
Location = Union[Path, str]

#: fsspec protocols whose uncommitted uploads stay invisible until completed (multipart / resumable uploads),
#: so a file is published without a copy. Others get a temporary name and ``mv``.
UPLOAD_PUBLISH = frozenset({"s3", "s3a", "gs", "gcs"})

#: Read-ahead of a file opened for streaming (tars): large enough to amortise a request, small per worker.
STREAM_BLOCK = 16 << 20
#: Read-ahead of a file read by random access (parquet footers, tar headers).
RANDOM_BLOCK = 1 << 20
#: Part size of an upload (S3's minimum is 5 MiB; 10,000 parts allow 80 GB): the memory a writer buffers.
WRITE_BLOCK = 8 << 20
#: Byte ranges of one file on object storage closer than this are fetched by one request (:func:`read_ranges`):
#: about the bytes a request's round trip is worth (tens of ms at tens of MB/s), as Arrow's read coalescing
#: sizes its holes
RANGE_GAP = 1 << 20
#: The same on local disk (a read there costs microseconds: only near neighbours are merged)
LOCAL_RANGE_GAP = 64 << 10
#: The largest single read :func:`read_ranges` makes of neighbouring ranges
RANGE_BLOCK = 8 << 20
#: Upload chunks of one file waiting for the background sender (memory: about this many times WRITE_BLOCK more)
PARTS_IN_FLIGHT = 2

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)(://|::)")
TMP_MARK = atomic.TMP_MARK


class StorageError(OSError):
    """A store refused or failed an operation; the message starts with the path or URL."""


# ------------------------------------------------------------------------------------------------ names

def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL that is not a plain local file (``s3://b/k``, ``gs://``, chained
    ``simplecache::s3://...``). ``file://`` URLs and ``Path`` objects are local."""
    if isinstance(path, Path) or not isinstance(path, (str, os.PathLike)):
        return False
    text = os.fspath(path)
    if not isinstance(text, str):
        return False
    m = _SCHEME_RE.match(text)
    if m is None:
        return False
    return m.group(2) == "::" or m.group(1).lower() != "file"


def location(path: PathLike) -> Location:
    """``path`` as the functions here return places: a ``Path`` for local paths (``file://`` stripped), the URL
    string (without a trailing ``/``) otherwise."""
    if is_url(path):
        text = os.fspath(path)
        return text if text.endswith("://") else text.rstrip("/")
    text = os.fspath(path)
    if isinstance(text, str) and text.lower().startswith("file://"):
        text = text[len("file://"):]
    return Path(text)


def join(base: PathLike, *names: str) -> Location:
    """``base/name/...``: a ``Path`` for a local base, a URL string otherwise."""
    loc = location(base)
    if isinstance(loc, Path):
        return loc.joinpath(*names)
    parts = [n.strip("/") for n in names if n]
    return "/".join([loc] + parts) if not loc.endswith("/") else loc + "/".join(parts)


def name(path: PathLike) -> str:
    """The last component (``00001.tar``)."""
    loc = location(path)
    return loc.name if isinstance(loc, Path) else loc.rstrip("/").rsplit("/", 1)[-1]


def parent(path: PathLike) -> Location:
    """The folder that holds ``path``."""
    loc = location(path)
    if isinstance(loc, Path):
        return loc.parent
    head, sep, _ = loc.rstrip("/").rpartition("/")
    return head if sep and not head.endswith(":/") else loc


def stem(path: PathLike) -> str:
    """The last component without its last suffix (``00001.tar`` -> ``00001``), as ``Path.stem``."""
    return Path(name(path)).stem


def sibling(path: PathLike, new_name: str) -> Location:
    """``new_name`` in the folder of ``path``."""
    return join(parent(path), new_name)


def display(path: PathLike) -> str:
    return str(location(path))


def protocol(path: PathLike) -> str:
    """``file`` for local paths, else the URL's (last) protocol (``s3``)."""
    if not is_url(path):
        return "file"
    fs, _ = _fs(path)
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


# -------------------------------------------------------------------------------------------- fsspec

#: (filesystem, path) of URLs resolved by :func:`_fs` (fsspec's resolution tokenises the options each time);
#: dropped by :func:`configure` and :func:`close_clients`, and when it grows past _FS_MEMO_SIZE entries.
_FS_MEMO: Dict[str, Tuple[Any, str]] = {}
_FS_MEMO_SIZE = 1 << 14

#: botocore options ccmb sets for S3 unless the user set them (in ``config_kwargs`` or the ``AWS_*`` variables):
#: checksums only where an operation requires one, as botocore did before 1.36. S3-compatible stores such as
#: Aliyun OSS and older MinIO/Ceph do not accept the newer default ones; ccmb's own SHA-256 of every shard it
#: writes (recorded, checked by ``ccmb verify``) is the end-to-end check, and on https TLS protects each transfer.
S3_CHECKSUM_DEFAULTS = {"request_checksum_calculation": ("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
                        "response_checksum_validation": ("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")}


def _s3_defaults() -> None:
    import fsspec.config

    conf = fsspec.config.conf.setdefault("s3", {})
    kwargs = dict(conf.get("config_kwargs") or {})
    for option, (variable, value) in S3_CHECKSUM_DEFAULTS.items():
        if option not in kwargs and not os.environ.get(variable):
            kwargs[option] = value
    if kwargs != (conf.get("config_kwargs") or {}):
        conf["config_kwargs"] = kwargs


def _fs(url: PathLike) -> Tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL; fsspec is imported here, on first use."""
    text = os.fspath(url)
    got = _FS_MEMO.get(text)
    if got is not None:
        return got
    import fsspec.core

    if text.startswith(("s3://", "s3a://")):
        _s3_defaults()
    try:
        got = fsspec.core.url_to_fs(text)
    except ImportError as exc:  # the filesystem's package (s3fs, gcsfs, ...) is not installed
        raise StorageError(f"{text}: {exc} (for s3:// URLs: pip install 'ccmb[s3]')") from exc
    except ValueError as exc:  # unknown protocol
        raise StorageError(f"{text}: {exc}") from exc
    if len(_FS_MEMO) >= _FS_MEMO_SIZE:
        _FS_MEMO.clear()
    _FS_MEMO[text] = got
    return got


def close_clients() -> None:
    """Close this process's object-storage clients (their pooled keep-alive connections) and forget the cached
    filesystems; the next use opens new ones. Call it before forking worker processes (DataLoader workers): a
    forked child must not inherit a live client, whose connections and event loop are the parent's (at exit
    the child tries to close them: an asyncio "attached to a different loop" traceback per worker, against
    any server that keeps connections alive, as S3 does)."""
    import sys

    _FS_MEMO.clear()
    if "s3fs" not in sys.modules:
        return
    import s3fs

    for fs in list(s3fs.S3FileSystem._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if creator is not None and getattr(fs, "_s3", None) is not None:
            try:
                s3fs.S3FileSystem.close_session(fs.loop, creator)
            except Exception as exc:  # noqa: BLE001 - a client that cannot close is dropped all the same
                logger.debug("closing an S3 client: %s", exc)
            fs._s3 = None  # a holder of this instance reconnects on its next request
    s3fs.S3FileSystem.clear_instance_cache()


def configure(protocol_name: str, **options: Any) -> None:
    """Default options of one fsspec protocol for this process, e.g. ``configure("s3",
    endpoint_url="http://127.0.0.1:9000")`` (the same as ``FSSPEC_S3_ENDPOINT_URL`` in the environment, which
    child processes inherit). Cached filesystem instances are dropped so the next use sees them."""
    import fsspec
    import fsspec.config

    fsspec.config.conf.setdefault(protocol_name, {}).update(options)
    _FS_MEMO.clear()
    with contextlib.suppress(ImportError, ValueError):
        fsspec.get_filesystem_class(protocol_name).clear_instance_cache()


def settings() -> Dict[str, Dict[str, Any]]:
    """The fsspec options of this process (what :func:`configure` and ``FSSPEC_*`` variables set), to hand to
    the processes that do the I/O elsewhere (Spark tasks: :func:`apply_settings` there). Empty until fsspec
    is used."""
    import copy
    import sys

    if "fsspec.config" not in sys.modules:
        return {}
    import fsspec.config

    return copy.deepcopy({k: dict(v) for k, v in fsspec.config.conf.items() if isinstance(v, dict)})


def apply_settings(conf: Optional[Dict[str, Dict[str, Any]]]) -> None:
    """Make the options of :func:`settings` (taken in another process) this process's defaults."""
    if not conf:
        return
    import fsspec.config

    for proto, opts in conf.items():
        if fsspec.config.conf.get(proto) != opts:
            configure(proto, **opts)


def _invalidate(fs: Any, path: str) -> None:
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)


@contextlib.contextmanager
def _errors(path: PathLike, what: str = "") -> Iterator[None]:
    """Turn a store's exceptions into ``FileNotFoundError`` / :class:`StorageError` naming ``path``."""
    where = display(path)
    try:
        yield
    except FileNotFoundError as exc:
        if where in str(exc):
            raise
        raise FileNotFoundError(f"{where}: not found" + (f" ({what})" if what else "")) from exc
    except StorageError:
        raise
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and where in str(exc):
            raise
        err = StorageError(f"{where}: {what + ': ' if what else ''}{type(exc).__name__}: {exc}")
        err.errno = getattr(exc, "errno", None)  # ENOSPC, EACCES ... stay recognisable
        raise err from exc
    except Exception as exc:  # botocore / aiohttp errors that fsspec passes through (no credentials ...)
        if type(exc).__module__.split(".")[0] in ("builtins", "pyarrow", "tarfile", "ccmb", "json"):
            raise
        raise StorageError(f"{where}: {what + ': ' if what else ''}{type(exc).__name__}: {exc}") from exc


def _s3(fs: Any, path: str) -> Optional[Tuple[str, str]]:
    """(bucket, key) when ``fs`` is s3fs (its direct client calls save the extra requests of the generic
    fsspec calls: one HEAD for a file check, one ranged GET for a small whole file), else None."""
    if not hasattr(fs, "call_s3"):
        return None
    bucket, _, key = path.strip("/").partition("/")
    return bucket, key


async def _s3_get_first(fs: Any, bucket: str, key: str, n: int) -> Tuple[bytes, int]:
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes=0-{n - 1}")
    try:
        data = await resp["Body"].read()
    finally:
        resp["Body"].close()
    total = str(resp.get("ContentRange") or "").rpartition("/")[2]
    return data, int(total) if total.isdigit() else len(data)


def _s3_first_bytes(fs: Any, bucket: str, key: str, n: int) -> Tuple[bytes, int]:
    """The first ``n`` bytes of an object and its total size, by one ranged GET (the size from
    ``Content-Range``)."""
    from fsspec.asyn import sync

    return sync(fs.loop, _s3_get_first, fs, bucket, key, n)


#: First bytes of files read ahead by :func:`prefetch`, by URL: each answers one :func:`first_bytes` call.
_PREFETCHED: Dict[str, Tuple[bytes, int]] = {}


@contextlib.contextmanager
def prefetch(paths: Sequence[PathLike], n: int = RANGE_BLOCK) -> Iterator[None]:
    """Within the block, the first ``n`` bytes of each of ``paths`` (on S3) are already here: read by concurrent
    ranged GETs, one round trip instead of one per file; each answers the next :func:`first_bytes` (so
    :func:`read_bytes`, :func:`read_small`, :func:`sha256`, parquet reads) of its path once. A file that could
    not be read is read again by that call, which raises its error. Elsewhere: nothing happens."""
    urls = [str(location(p)) for p in paths if is_url(p)]
    if urls:
        fs, _ = _fs(urls[0])
        wheres = [_s3(fs, _fs(u)[1]) for u in urls]
        if all(w is not None and w[1] for w in wheres):
            import asyncio

            from fsspec.asyn import sync

            async def one(bucket: str, key: str) -> Tuple[bytes, int]:
                return await _s3_get_first(fs, bucket, key, n)

            async def get_all() -> List[Any]:
                return await asyncio.gather(*(one(b, k) for b, k in wheres), return_exceptions=True)

            for url, got in zip(urls, sync(fs.loop, get_all)):
                if not isinstance(got, BaseException):
                    _PREFETCHED[url] = got
    try:
        yield
    finally:
        for url in urls:
            _PREFETCHED.pop(url, None)


#: Whole small objects kept within :func:`read_cache` blocks, by fsspec path (None: no block is active).
_CACHE: Optional[Dict[str, Tuple[bytes, int]]] = None
_CACHE_STATE = {"depth": 0, "bytes": 0, "limit": 0}
_CACHE_LOCK = threading.Lock()
#: Bytes a :func:`read_cache` block keeps at most (objects beyond it are read again when asked again)
READ_CACHE_BYTES = 64 << 20
#: Files this process writes are remembered by a :func:`read_cache` block up to this size (markers, plan parts;
#: not the shards it writes and never reads back)
WRITTEN_KEEP_BYTES = 1 << 20


@contextlib.contextmanager
def read_cache(limit: Optional[int] = None) -> Iterator[None]:
    """Within the block, a small object read whole from object storage (a marker, a decision table, a download
    folder's parquets: whatever :func:`first_bytes` fetched whole, which :func:`read_bytes`, :func:`read_small`,
    :func:`sha256` and the parquet readers use) answers later reads of its path here, without a request, and
    the small files this process writes (up to :data:`WRITTEN_KEEP_BYTES`) are remembered as written; writing
    or removing a path (or a folder above it) through this module forgets what was kept for it. At most
    ``limit`` bytes are kept (default :data:`READ_CACHE_BYTES`); :func:`warm` reads objects ahead into it.

    What other processes change meanwhile is not seen: open it around one command that treats its inputs as
    fixed for its duration (``build-shards`` fingerprints them in its plan) and owns its output folder.
    Blocks nest (the outermost one ends the cache); local paths are not affected."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE_STATE["depth"] == 0:
            _CACHE, _CACHE_STATE["bytes"] = {}, 0
            _CACHE_STATE["limit"] = int(READ_CACHE_BYTES if limit is None else limit)
        _CACHE_STATE["depth"] += 1
    try:
        yield
    finally:
        with _CACHE_LOCK:
            _CACHE_STATE["depth"] -= 1
            if _CACHE_STATE["depth"] == 0:
                _CACHE = None
                for future in list(_WARMING.values()):  # the read-ahead stops; its waiters read themselves
                    if not future.done():
                        future.set_exception(RuntimeError("read cache closed"))
                _WARMING.clear()


def _cached(p: str) -> Optional[Tuple[bytes, int]]:
    cache = _CACHE
    if cache is None:
        return None
    pending = _WARMING.get(p)
    if pending is not None:  # being read ahead by warm(): wait for it rather than reading it twice
        with contextlib.suppress(Exception):
            pending.result()
    return cache.get(p)


#: Reads started by :func:`warm` in the active :func:`read_cache` block, by fsspec path.
_WARMING: Dict[str, Any] = {}


def warm(files: Sequence[Tuple[PathLike, int]]) -> None:
    """Within a :func:`read_cache` block: read whole objects ahead in a background thread, so that a later read
    of one of them costs no request. ``files`` are ``(url, size)`` pairs in the order they will be needed;
    reading stops where the block's byte budget would be exceeded. A read of a listed object waits for its
    pending fetch (registered before this returns) instead of sending its own; a failed fetch is read again by
    the reader (which raises its error). Outside a block, or for local paths: nothing happens."""
    if _CACHE is None:
        return
    import concurrent.futures

    todo = []
    with _CACHE_LOCK:
        budget = _CACHE_STATE["limit"] - _CACHE_STATE["bytes"]
        for url, n in ((location(u), int(n)) for u, n in files if is_url(u)):
            if n > budget or _CACHE is None:
                break
            budget -= n
            p = _fs(url)[1]
            if p not in _WARMING and p not in (_CACHE or {}):
                _WARMING[p] = concurrent.futures.Future()
                todo.append((url, p, n))
    if not todo:
        return

    def run() -> None:
        for url, p, n in todo:
            future = _WARMING.get(p)
            if future is None:
                continue
            error: Optional[BaseException] = None
            try:
                if _CACHE is not None:
                    _fetch_first(url, *_fs(url), n + 1)  # one GET of the whole object, kept by the cache
            except Exception as exc:  # noqa: BLE001 - the reader reads it again and raises
                error = exc
            _WARMING.pop(p, None)
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # the block closed meanwhile
                future.set_exception(error) if error is not None else future.set_result(None)

    threading.Thread(target=run, name="ccmb-warm", daemon=True).start()


def _keep(p: str, data: bytes, total: int) -> None:
    """Keep a whole object (``len(data) == total``) while a :func:`read_cache` block is active."""
    if _CACHE is None or len(data) < total:
        return
    with _CACHE_LOCK:
        cache = _CACHE
        if cache is None or _CACHE_STATE["bytes"] + len(data) > _CACHE_STATE["limit"]:
            return
        old = cache.get(p)
        _CACHE_STATE["bytes"] += len(data) - (len(old[0]) if old else 0)
        cache[p] = (bytes(data), total)


def _forget(p: str) -> None:
    """Drop what a :func:`read_cache` block kept for ``p`` and for anything under it."""
    if not _CACHE:
        return
    with _CACHE_LOCK:
        cache = _CACHE
        if not cache:
            return
        base = p.rstrip("/")
        for key in [k for k in cache if k == base or k.startswith(base + "/")]:
            _CACHE_STATE["bytes"] -= len(cache.pop(key)[0])


def first_bytes(path: PathLike, n: int) -> Optional[Tuple[bytes, int]]:
    """On S3: (the first ``n`` bytes of the file, its size) by one request (the whole file when it was
    :func:`prefetch`-ed whole, none when a :func:`read_cache` block holds it); None on other stores."""
    if not is_url(path):
        return None
    fs, p = _fs(path)
    got = _cached(p) or (_PREFETCHED.pop(str(location(path)), None) if _PREFETCHED else None)
    if got is not None and (len(got[0]) >= got[1] or len(got[0]) >= n):
        _keep(p, *got)
        return got if len(got[0]) >= got[1] else (got[0][:n], got[1])
    return _fetch_first(path, fs, p, n)


def _fetch_first(path: PathLike, fs: Any, p: str, n: int) -> Optional[Tuple[bytes, int]]:
    """:func:`first_bytes` from the store itself (kept by an active :func:`read_cache` when whole)."""
    where = _s3(fs, p)
    if where is None or not where[1]:
        return None
    with _errors(path, "read"):
        try:
            got = _s3_first_bytes(fs, where[0], where[1], n)
        except FileNotFoundError:
            raise
        except Exception:  # noqa: BLE001 - an empty object answers a range with 416: ask plainly
            total = int(fs.size(p))
            got = (b"", 0) if total == 0 else (fs.cat_file(p, start=0, end=min(n, total)), total)
    _keep(p, *got)
    return got


def caching() -> bool:
    """Whether a :func:`read_cache` block is active (a whole small object read now answers later reads)."""
    return _CACHE is not None


def read_small(path: PathLike, limit: int) -> Tuple[Optional[bytes], int]:
    """(the whole file, its size) when it holds at most ``limit`` bytes, else (None, its size). On S3 one
    request either way (a ranged GET, no ``HEAD`` first); elsewhere the size, then the read."""
    got = first_bytes(path, limit + 1)
    if got is not None:
        return (got[0] if got[1] <= limit else None), got[1]
    n = size(path)
    return (read_bytes(path) if n <= limit else None), n


# ----------------------------------------------------------------------------------------- reading

def open_read(path: PathLike, mode: str = "rb", *, block_size: Optional[int] = None,
              encoding: Optional[str] = None, size: Optional[int] = None) -> IO[Any]:
    """Open a file for reading (``rb`` or ``r``). ``block_size`` is the read-ahead on object storage
    (:data:`STREAM_BLOCK` for whole-file streaming, :data:`RANDOM_BLOCK` by default). ``size``: the file's
    byte size when a listing just gave it; on S3 it saves the ``HEAD`` request of the open."""
    if "r" not in mode or "+" in mode:
        raise ValueError(f"open_read only reads; got mode {mode!r}")
    if not is_url(path):
        return open(location(path), mode, encoding=encoding if "b" not in mode else None)
    fs, p = _fs(path)
    extra = {"size": int(size)} if size is not None and hasattr(fs, "call_s3") else {}
    with _errors(path, "open"):
        fh = fs.open(p, "rb", block_size=block_size or RANDOM_BLOCK, **extra)
    if "b" in mode:
        return fh
    return io.TextIOWrapper(fh, encoding=encoding or "utf-8")


def read_ranges(ranges: Sequence[Tuple[PathLike, int, int]]) -> List[bytes]:
    """The bytes of each ``(path, offset, size)``, in the order given. Neighbouring ranges of one file are read
    by one request (gaps up to :data:`RANGE_GAP`, :data:`LOCAL_RANGE_GAP` on disk; reads up to
    :data:`RANGE_BLOCK`); on object storage the reads
    go out concurrently (fsspec ``cat_ranges``), so a thousand scattered members cost a few round trips, not
    a thousand, and never a whole read-ahead block each. A range past the end of its file is a
    :class:`StorageError` naming the file and offset."""
    if not ranges:
        return []
    resolved: Dict[Any, Location] = {}
    places = [resolved.get(p) or resolved.setdefault(p, location(p)) for p, _, _ in ranges]
    by_file: Dict[Location, List[int]] = {}
    for i, place in enumerate(places):
        by_file.setdefault(place, []).append(i)
    gap = LOCAL_RANGE_GAP if isinstance(places[0], Path) else RANGE_GAP
    blocks: List[Tuple[Location, int, int]] = []  # (file, start, end) of each read
    where: List[Tuple[int, int]] = [(0, 0)] * len(ranges)  # range i -> (block, offset in it)
    for items in by_file.values():
        items.sort(key=lambda i: ranges[i][1])
        for i in items:
            start, end = int(ranges[i][1]), int(ranges[i][1]) + int(ranges[i][2])
            if start < 0 or end < start:
                raise ValueError(f"{display(places[i])}: bad byte range ({start}, {ranges[i][2]})")
            if blocks and blocks[-1][0] == places[i] and start - blocks[-1][2] <= gap \
                    and start >= blocks[-1][1] and max(end, blocks[-1][2]) - blocks[-1][1] <= RANGE_BLOCK:
                f, b_start, b_end = blocks[-1]
                blocks[-1] = (f, b_start, max(b_end, end))
            else:
                blocks.append((places[i], start, end))
            where[i] = (len(blocks) - 1, start - blocks[-1][1])
    if isinstance(places[0], Path):
        data = []
        handles: Dict[Location, Any] = {}
        try:
            for f, start, end in blocks:
                if f not in handles:
                    handles[f] = open(f, "rb")
                data.append(os.pread(handles[f].fileno(), end - start, start))
        finally:
            for fh in handles.values():
                fh.close()
    else:
        fs, _ = _fs(places[0])
        data = [None] * len(blocks)
        for k, (f, start, end) in enumerate(blocks):  # objects a read_cache block holds whole: no request
            whole = _cached(_fs(f)[1])
            if whole is not None:
                data[k] = whole[0][start:end]
        todo = [k for k, got in enumerate(data) if got is None]
        if todo:
            with _errors(places[0], "read byte ranges"):
                fetched = fs.cat_ranges([_fs(blocks[k][0])[1] for k in todo], [blocks[k][1] for k in todo],
                                        [blocks[k][2] for k in todo], on_error="raise")
            for k, got in zip(todo, fetched):
                data[k] = got
    out = []
    for i, (block, offset) in enumerate(where):
        piece = data[block][offset:offset + int(ranges[i][2])]
        if len(piece) != int(ranges[i][2]):
            raise StorageError(f"{display(places[i])}: {ranges[i][2]} bytes at offset {ranges[i][1]} run past "
                               "the end of the file (truncated?)")
        out.append(piece)
    return out


def read_bytes(path: PathLike, max_bytes: Optional[int] = None) -> bytes:
    """The whole file; with ``max_bytes`` a larger file is refused (:class:`StorageError` naming it)."""
    if max_bytes is not None:
        data, n = read_small(path, max_bytes)
        if data is None:
            raise StorageError(f"{display(path)}: {n} bytes, more than the {max_bytes} allowed")
        return data
    if not is_url(path):
        return location(path).read_bytes()
    got = first_bytes(path, RANGE_BLOCK)  # S3: a small file by one GET (fsspec's cat sends a HEAD first)
    if got is not None and len(got[0]) >= got[1]:
        return got[0]
    fs, p = _fs(path)
    with _errors(path, "read"):
        return got[0] + fs.cat_file(p, start=len(got[0]), end=got[1]) if got is not None else fs.cat_file(p)


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def read_json(path: PathLike) -> Any:
    return json.loads(read_text(path))


def exists(path: PathLike) -> bool:
    if not is_url(path):
        return location(path).exists()
    fs, p = _fs(path)
    if _cached(p) is not None:
        return True
    _invalidate(fs, p)
    with _errors(path, "exists"):
        return bool(fs.exists(p))


def isfile(path: PathLike) -> bool:
    if not is_url(path):
        return location(path).is_file()
    fs, p = _fs(path)
    if _cached(p) is not None:
        return True
    _invalidate(fs, p)
    where = _s3(fs, p)
    with _errors(path, "isfile"):
        if where is not None:  # one HEAD (fsspec's isfile also lists the prefix when the key is absent)
            if not where[1] or p.endswith("/"):
                return False
            try:
                fs.call_s3("head_object", Bucket=where[0], Key=where[1])
            except FileNotFoundError:
                return False
            return True
        return bool(fs.isfile(p))


def isdir(path: PathLike) -> bool:
    """A local folder; on object storage a prefix holding at least one object (or a bucket)."""
    if not is_url(path):
        return location(path).is_dir()
    fs, p = _fs(path)
    if _cached(p) is not None:
        return False  # read whole as a file within this read_cache block
    _invalidate(fs, p)
    with _errors(path, "isdir"):
        return bool(fs.isdir(p))


def is_folder(path: PathLike, what: str = "file or folder") -> bool:
    """True for a folder, False for a file; a missing ``path`` is a :class:`FileNotFoundError` naming it as
    ``what`` (``"<path>: no such <what>"``)."""
    if isdir(path):
        return True
    if not exists(path):
        raise FileNotFoundError(f"{display(path)}: no such {what}")
    return False


def size(path: PathLike) -> int:
    if not is_url(path):
        return location(path).stat().st_size
    fs, p = _fs(path)
    with _errors(path, "size"):
        return int(fs.size(p))


def _entries(folder: PathLike) -> List[Tuple[str, bool, int]]:
    """(name, is_file, size) of the direct children of ``folder``; FileNotFoundError when it is none."""
    if not is_url(folder):
        out = []
        with os.scandir(location(folder)) as it:
            for e in it:
                is_file = e.is_file()
                out.append((e.name, is_file, e.stat().st_size if is_file else 0))
        return out
    fs, p = _fs(folder)
    _invalidate(fs, p)
    with _errors(folder, "list"):
        if _s3(fs, p) is not None and "/" in p.strip("/"):
            from fsspec.asyn import sync

            # one paginated listing of the prefix; fsspec's ls lists the parent too when it is empty
            infos = sync(fs.loop, fs._lsdir, p.rstrip("/"), refresh=True)  # cached: opens skip their HEAD
            if not infos:
                raise FileNotFoundError(f"{display(folder)}: not found (list)")
        else:
            infos = fs.ls(p, detail=True)
    out = []
    base = p.rstrip("/")
    for info in infos:
        full = str(info.get("name", "")).rstrip("/")
        if full == base:
            continue
        out.append((full.rsplit("/", 1)[-1], info.get("type") == "file", int(info.get("size") or 0)))
    return out


def listdir(folder: PathLike) -> List[str]:
    """Names of the direct children of ``folder`` (files and folders), sorted."""
    return sorted(n for n, _, _ in _entries(folder))


def list_files(folder: PathLike) -> Dict[str, int]:
    """``{name: bytes}`` of the files directly in ``folder`` (one listing request on object storage)."""
    return {n: s for n, is_file, s in sorted(_entries(folder)) if is_file}


def glob(folder: PathLike, pattern: str) -> List[Location]:
    """Files directly in ``folder`` whose name matches ``pattern`` (fnmatch), sorted by name."""
    return [join(folder, n) for n in list_files(folder) if fnmatch.fnmatchcase(n, pattern)]


def sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    first = first_bytes(path, RANDOM_BLOCK)  # S3: a marker or small part in one request, no HEAD
    if first is not None:
        h.update(first[0])
        if len(first[0]) >= first[1]:
            return h.hexdigest()
    with open_read(path, block_size=STREAM_BLOCK, size=first[1] if first else None) as fh:
        if first is not None:
            fh.seek(len(first[0]))
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- writing

#: (filesystem, bucket) pairs :func:`makedirs` found there (a HEAD per call would be one request per shard).
_BUCKETS_SEEN: set = set()


def makedirs(folder: PathLike) -> None:
    """Create ``folder`` (and its parents); on object storage there is nothing to create below a bucket."""
    if not is_url(folder):
        location(folder).mkdir(parents=True, exist_ok=True)
        return
    fs, p = _fs(folder)
    where = _s3(fs, p)
    if where is not None and (id(fs), where[0]) in _BUCKETS_SEEN:
        return  # nothing to create below a bucket, and this one was there
    with _errors(folder, "makedirs"):
        fs.makedirs(p, exist_ok=True)
    if where is not None:
        _BUCKETS_SEEN.add((id(fs), where[0]))


def remove(path: PathLike, missing_ok: bool = True) -> None:
    """Delete one file."""
    if not is_url(path):
        location(path).unlink(missing_ok=missing_ok)
        return
    fs, p = _fs(path)
    _invalidate(fs, p)
    if not missing_ok and not exists(path):  # S3 deletes a missing key without an error
        raise FileNotFoundError(f"{display(path)}: not found (remove)")
    _forget(p)
    with contextlib.suppress(FileNotFoundError), _errors(path, "remove"):
        fs.rm_file(p)
    _invalidate(fs, p)


def _publishes_uploads(fs: Any) -> bool:
    proto = fs.protocol
    protos = proto if isinstance(proto, (tuple, list)) else (proto,)
    return any(p in UPLOAD_PUBLISH for p in protos)


class AtomicFile(io.RawIOBase):
    """A binary file written under ``path`` that appears there whole, or not at all (see the module docstring).

    ``write`` / ``tell`` as a file; :meth:`publish` makes it appear (closing it), :meth:`abort` drops it.
    ``size`` and (with ``digest=True``) ``sha256`` describe the bytes written, so a writer records them
    without reading the file back. Use :func:`atomic_open` for the commit-on-success context manager.
    """

    def __init__(self, path: PathLike, *, digest: bool = False) -> None:
        super().__init__()
        self.path = location(path)
        self.size = 0
        self._hash = hashlib.sha256() if digest else None
        self._done = False
        self._tmp: Optional[Location] = None
        self._mode = "local"
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = atomic.temp_path_for(self.path)
            self._fh: Any = open(self._tmp, "wb")
            return
        self._fs, self._p = _fs(self.path)
        if _publishes_uploads(self._fs):
            # the first WRITE_BLOCK bytes stay in memory: a file smaller than that is published by one PUT
            # (atomic too: an object appears whole), a larger one as an uncommitted multipart upload
            self._mode = "upload"
            self._fh = None
            self._small = bytearray()
        else:
            self._mode = "rename"
            self._tmp = sibling(self.path, f".{name(self.path)}{TMP_MARK}{uuid.uuid4().hex[:12]}")
            _, self._tmp_p = _fs(self._tmp)
            with _errors(self.path, "open for writing"):
                self._fs.makedirs(self._fs._parent(self._p), exist_ok=True)
                self._fh = self._fs.open(self._tmp_p, "wb")

    # -- file protocol (what tarfile, pyarrow and json writers use)
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def _open_upload(self) -> None:
        with _errors(self.path, "open for writing"):
            self._fh = self._fs.open(self._p, "wb", autocommit=False, block_size=WRITE_BLOCK)
        # not part of an fsspec transaction: drop the file from the filesystem's pending list
        with contextlib.suppress(Exception):
            self._fs.transaction.files.remove(self._fh)
        self._sender = _PartSender(self._fh, self.path)
        self._send()

    def _send(self) -> None:
        """Hand the buffered bytes to the background sender (it uploads while the writer goes on)."""
        self._sender.send(bytes(self._small))
        self._small = bytearray()

    def write(self, data: Any) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError(f"{display(self.path)}: write after publish/abort")
        view = memoryview(data).cast("B")
        if self._mode == "local":  # local errors (ENOSPC ...) pass unchanged, as from a plain file
            self._fh.write(view)
        elif self._mode == "upload":
            self._small += view
            if len(self._small) >= WRITE_BLOCK:
                self._open_upload() if self._fh is None else self._send()
        else:
            with _errors(self.path, "write"):
                self._fh.write(view)
        self.size += view.nbytes
        if self._hash is not None:
            self._hash.update(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass  # the store sees the bytes at publish; local bytes are fsynced there

    @property
    def sha256(self) -> str:
        if self._hash is None:
            raise ValueError("AtomicFile(digest=True) computes the sha256")
        return self._hash.hexdigest()

    # -- publishing
    def publish(self) -> None:
        """Make the file appear at its path, replacing any older one. Idempotent after success."""
        if self._done:
            return
        self._done = True
        try:
            if self._mode == "local":
                assert self._tmp is not None
                self._fh.close()
                atomic.commit(self._tmp, self.path)
            elif self._mode == "upload":
                with _errors(self.path, "publish"):
                    if self._fh is None:  # small: one PUT, the object appears whole
                        data = bytes(self._small)
                        _forget(self._p)
                        self._fs.pipe_file(self._p, data)
                        if len(data) <= WRITTEN_KEEP_BYTES:
                            _keep(self._p, data, len(data))
                        self._small = bytearray()
                    else:
                        _forget(self._p)
                        self._send()
                        self._sender.finish()  # every part handed over is uploaded (or its error raised)
                        self._fh.close()  # uploads the last part; the object is not visible yet
                        self._fh.commit()  # completes the upload: the object appears whole
                _invalidate(self._fs, self._p)
            else:
                assert self._tmp is not None
                with _errors(self.path, "publish"):
                    self._fh.close()
                    _forget(self._p)
                    self._fs.mv(self._tmp_p, self._p)
                _invalidate(self._fs, self._p)
        except BaseException:
            self._cleanup()
            raise
        super().close()

    def abort(self) -> None:
        """Drop what was written; nothing appears at the path."""
        if self._done:
            return
        self._done = True
        self._cleanup()
        super().close()

    def _cleanup(self) -> None:
        if self._mode == "upload":
            self._small = bytearray()
            if self._fh is None:
                return  # nothing was sent
            self._sender.finish(raise_error=False)
            try:
                self._fh.discard()  # aborts the multipart upload
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the original error
                logger.warning("%s: could not abort the upload: %s", display(self.path), exc)
            self._fh.closed = True
            return
        with contextlib.suppress(Exception):
            self._fh.close()
        if self._mode == "local":
            with contextlib.suppress(FileNotFoundError):
                Path(self._tmp).unlink()  # type: ignore[arg-type]
        else:
            with contextlib.suppress(Exception):
                self._fs.rm_file(self._tmp_p)

    def close(self) -> None:
        """Closing without :meth:`publish` aborts (a writer that did not finish publishes nothing)."""
        if not self._done:
            self.abort()
        super().close()

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.abort()

    def __del__(self) -> None:  # an AtomicFile dropped unpublished publishes nothing
        with contextlib.suppress(Exception):
            if not self._done:
                self.abort()


class _PartSender:
    """Writes an upload's bytes from one background thread, so the parts travel while the writer produces the
    next ones (at most :data:`PARTS_IN_FLIGHT` chunks of :data:`WRITE_BLOCK` wait: bounded memory). Order is
    kept (one thread); the first error is raised by the next :meth:`send` or by :meth:`finish`."""

    def __init__(self, fh: Any, path: Location) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.fh, self.path = fh, path
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ccmb-upload")
        self.pending: Any = deque()

    def _write(self, data: bytes) -> None:
        with _errors(self.path, "write"):
            self.fh.write(data)

    def send(self, data: bytes) -> None:
        while len(self.pending) >= PARTS_IN_FLIGHT:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._write, data))

    def finish(self, raise_error: bool = True) -> None:
        try:
            while self.pending:
                future = self.pending.popleft()
                if raise_error:
                    future.result()
                else:
                    future.exception()
        finally:
            self.pool.shutdown(wait=True)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: Optional[str] = None, *,
                digest: bool = False) -> Iterator[Any]:
    """Write ``path`` atomically: it appears with the whole content when the block ends without an error,
    and not at all otherwise. ``mode`` ``wb`` yields the :class:`AtomicFile`; ``w`` a text wrapper over it."""
    if "w" not in mode:
        raise ValueError(f"atomic_open only writes; got mode {mode!r}")
    out = AtomicFile(path, digest=digest)
    try:
        if "b" in mode:
            yield out
        else:
            text = io.TextIOWrapper(out, encoding=encoding or "utf-8", write_through=True)
            yield text
            text.flush()
            text.detach()
        out.publish()
    except BaseException:
        out.abort()
        raise


def publish_together(files: Sequence["AtomicFile"]) -> None:
    """Publish several files whose order among themselves does not matter (each still appears whole). On
    an object store the small ones (one ``PutObject`` each) go out concurrently: one round trip, not one
    per file. The first error is raised (naming its path) after every file was tried; a file that was not
    published is dropped."""
    small = [f for f in files if f._mode == "upload" and f._fh is None and not f._done]
    if small and not (all(f._fs is small[0]._fs for f in small) and hasattr(small[0]._fs, "_pipe_file")):
        small = []  # not one async store: each published on its own below
    errors: List[BaseException] = []
    for f in files:
        if f not in small:
            try:
                f.publish()
            except BaseException as exc:  # noqa: BLE001 - raised below, after the others
                errors.append(exc)
    if small:
        import asyncio

        from fsspec.asyn import sync

        async def put_all() -> List[Any]:
            return await asyncio.gather(*(f._fs._pipe_file(f._p, bytes(f._small)) for f in small),
                                        return_exceptions=True)

        for f in small:
            _forget(f._p)
        for f, result in zip(small, sync(small[0]._fs.loop, put_all)):
            if not isinstance(result, BaseException) and len(f._small) <= WRITTEN_KEEP_BYTES:
                _keep(f._p, bytes(f._small), len(f._small))
            f._done = True
            f._small = bytearray()
            _invalidate(f._fs, f._p)
            if isinstance(result, BaseException):
                try:
                    with _errors(f.path, "publish"):
                        raise result
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
            io.RawIOBase.close(f)
    if errors:
        raise errors[0]


def write_many(contents: Dict[Location, bytes]) -> None:
    """Write several files atomically, concurrently on object storage (:func:`publish_together`)."""
    files = []
    try:
        for path, data in contents.items():
            f = AtomicFile(path)
            files.append(f)
            f.write(data)
        publish_together(files)
    finally:
        for f in files:
            f.abort()


def json_bytes(obj: Any, indent: Optional[int] = 2) -> bytes:
    """JSON as :func:`write_json` writes it (sorted keys, UTF-8, trailing newline)."""
    return (json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=True) + "\n").encode("utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, indent: Optional[int] = 2) -> None:
    """JSON as :func:`ccmb.atomic.write_json` writes it (sorted keys, UTF-8, trailing newline), atomically."""
    write_bytes(path, json_bytes(obj, indent))


def create_if_absent(path: PathLike, data: bytes) -> bool:
    """Create ``path`` with ``data`` only if nothing is there; whether this call created it (a lock).

    Local: ``O_CREAT | O_EXCL``. S3 (and S3-compatible servers): ``PutObject`` with ``If-None-Match: *``,
    which the store decides atomically (HTTP 412 when the key exists). Other fsspec filesystems: a check
    followed by a write (best effort: two writers racing within one request may both believe they won)."""
    if not is_url(path):
        loc = location(path)
        loc.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(loc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True
    fs, p = _fs(path)
    if hasattr(fs, "call_s3"):
        bucket, _, key = p.strip("/").partition("/")
        _forget(p)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as exc:  # noqa: BLE001 - s3fs maps a 412 to an OSError of its own
            text = f"{type(exc).__name__} {exc} {getattr(exc, '__cause__', '')}"
            if "PreconditionFailed" in text or "412" in text or "ConditionalRequestConflict" in text:
                return False
            raise StorageError(f"{display(path)}: create: {type(exc).__name__}: {exc}") from exc
        _invalidate(fs, p)
        return True
    if exists(path):
        return False
    write_bytes(path, data)
    return True


def remove_tree(folder: PathLike, keep: Any = ()) -> int:
    """Delete everything under ``folder`` except its direct children named in ``keep``; how many entries."""
    if not is_url(folder):
        import shutil

        n = 0
        root = location(folder)
        for entry in list(root.iterdir()) if root.is_dir() else []:
            if entry.name in keep:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            n += 1
        return n
    fs, p = _fs(folder)
    _invalidate(fs, p)
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for name_, is_file, _ in _entries(folder):
            if name_ in keep:
                continue
            child = fs_path = p.rstrip("/") + "/" + name_
            _forget(child)  # what a read cache kept for it (and under it)
            with _errors(join(folder, name_), "remove"):
                fs.rm(fs_path, recursive=not is_file)
            _invalidate(fs, child)
            n += 1
    _invalidate(fs, p)
    return n


def remove_stale_temporaries(folder: PathLike, names: Optional[Sequence[str]] = None) -> int:
    """Remove what killed writers left in ``folder``: temporary ``.NAME.tmp-*`` files and, on object stores
    that publish uploads, the unfinished multipart uploads of keys directly in it. Call it only as the one
    writer of the folder (another live writer's temporaries would go too). ``names``: the folder's listing
    when the caller just made it (saves a request on object storage). Returns how many were removed."""
    if not is_url(folder):
        path = location(folder)
        return atomic.remove_stale_temporaries(path) if path.is_dir() else 0
    removed = 0
    fs, p = _fs(folder)
    with contextlib.suppress(FileNotFoundError):
        for n in (names if names is not None else [n for n, is_file, _ in _entries(folder) if is_file]):
            if n.startswith(".") and TMP_MARK in n:
                remove(join(folder, n))
                removed += 1
    if _publishes_uploads(fs) and hasattr(fs, "call_s3"):
        bucket, _, prefix = p.strip("/").partition("/")
        prefix = prefix + "/" if prefix else ""
        with _errors(folder, "list unfinished uploads"):
            uploads = _s3_unfinished_uploads(fs, bucket, prefix)
        for key, upload_id in uploads:
            if "/" not in key[len(prefix):]:
                with _errors(folder, "abort an unfinished upload"):
                    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
                removed += 1
    return removed


def _s3_unfinished_uploads(fs: Any, bucket: str, prefix: str) -> List[Tuple[str, str]]:
    """(key, upload id) of every unfinished multipart upload under ``prefix`` (all pages)."""
    out: List[Tuple[str, str]] = []
    kw: Dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = fs.call_s3("list_multipart_uploads", **kw)
        out.extend((str(u["Key"]), str(u["UploadId"])) for u in page.get("Uploads", []) or [])
        if not page.get("IsTruncated"):
            return out
        kw.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))
