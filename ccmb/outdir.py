"""Output folders: ccmb writes only into folders it made, one writer at a time, never inside an input.

Three rules every command that creates or replaces an output folder follows (light: standard library only,
so a CLI can check them before any heavy import):

* **Ownership** (:func:`claim`): a command writes into a new folder, an empty one, or one that carries
  ccmb's owner marker (:data:`OWNER_FILE`) of the same kind from an earlier run. Any other non-empty folder
  (a user's work, another command's output) is refused, naming it and one thing it holds. Only folders
  claimed this way may have their contents replaced (:func:`clear`).
* **One writer** (:class:`FolderLock`): the running command holds an ``flock`` on :data:`LOCK_FILE` inside
  the folder; a second run on the same folder is refused, naming the holder (pid, host, command, start).
  The kernel drops the lock when the holder dies, so a killed run never leaves a stale lock.
* **No output inside an input** (:func:`refuse_inside`): an output at or below an input folder (a table or
  shard set written into the download folder) is refused before anything is written.

The same rules hold for folders on object storage (an fsspec URL such as ``s3://bucket/shards``; through
:mod:`ccmb.storage`, imported only then): a "folder" is a key prefix; the owner marker is an object written
whole; the lock is an object created only if absent (S3's conditional ``PutObject`` with ``If-None-Match: *``,
atomic on AWS S3, MinIO and moto; on stores without a conditional create, a best-effort check-then-write
that reads the holder back) holding the same holder line, and deleted on release. A killed run cannot delete
it: the next run is refused naming the holder, and takes the lock over only when that holder ran on the same
host and its pid is gone; otherwise the user removes ``.ccmb-lock`` after checking the run is dead.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

logger = logging.getLogger(__name__)

OWNER_FILE = ".ccmb-owner.json"
LOCK_FILE = ".ccmb-lock"
_OWN_FILES = {OWNER_FILE, LOCK_FILE}

PathLike = Union[str, "os.PathLike[str]"]


class OutputFolderError(ValueError):
    """An output folder that ccmb must not write (a :class:`ValueError`; the message names the folder)."""


def _is_url(path: object) -> bool:
    """An fsspec URL (not a local path); decided without importing fsspec."""
    if isinstance(path, Path) or not isinstance(path, (str, os.PathLike)):
        return False
    text = os.fspath(path)  # type: ignore[arg-type]
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)(://|::)", text) if isinstance(text, str) else None
    return bool(m) and (m.group(2) == "::" or m.group(1).lower() != "file")


def owner(folder: PathLike) -> Optional[Dict[str, object]]:
    """The owner marker of ``folder`` (``{"kind": ..., ...}``), or None when it has none or it is unreadable."""
    try:
        if _is_url(folder):
            from . import storage

            try:  # one read (a missing marker is its answer)
                data = storage.read_bytes(storage.join(folder, OWNER_FILE), max_bytes=64 * 1024)
            except FileNotFoundError:
                return None
            doc = json.loads(data.decode("utf-8"))
        else:
            path = Path(folder) / OWNER_FILE
            if not path.is_file() or path.stat().st_size > 64 * 1024:
                return None
            doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("kind"), str) else None


def _first_entry(folder: Path) -> Optional[str]:
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name not in _OWN_FILES:
                return entry.name
    return None


def claim(folder: PathLike, kind: str, *, legacy: Optional[Callable[[Path], bool]] = None,
          hint: str = "choose another folder"):
    """Make ``folder`` an output folder of ``kind`` or refuse it; returns it as a :class:`Path` (a URL string
    for object storage).

    Accepted: a missing folder (created), an empty folder, or one whose owner marker says ``kind``.
    ``legacy(folder)`` may accept a non-empty folder without a marker that an earlier ccmb version wrote
    (recognised by its own files); it is then marked. Anything else raises :class:`OutputFolderError`.
    """
    if _is_url(folder):
        return _claim_url(folder, kind, hint)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder}: exists and is not a folder; {hint}")
    if folder.is_dir():
        mark = owner(folder)
        if mark is not None:
            if mark["kind"] != kind:
                raise OutputFolderError(f"{folder}: holds a ccmb {mark['kind']} output, not a {kind}; "
                                        f"refusing to write into it: {hint}")
            return folder
        first = _first_entry(folder)
        if first is not None and not (legacy is not None and legacy(folder)):
            raise OutputFolderError(f"{folder}: is not empty and was not made by ccmb {kind} (it holds "
                                    f"{first!r}); refusing to write into it: {hint}")
    folder.mkdir(parents=True, exist_ok=True)
    _write_owner(folder, kind)
    return folder


#: Object-storage output folders this process claimed new (it wrote their owner marker): no earlier run wrote
#: there, so no unfinished upload of one can be left under them.
_CREATED_HERE: set = set()


def created_here(folder: PathLike) -> bool:
    """Whether this process claimed ``folder`` (a URL) as a new, empty output folder."""
    return str(folder) in _CREATED_HERE


def _claim_url(folder: PathLike, kind: str, hint: str) -> str:
    from . import storage

    url = str(storage.location(folder))

    def listing() -> List[str]:
        try:
            return [n for n in storage.listdir(url) if n not in _OWN_FILES]
        except FileNotFoundError:
            return []

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3, thread_name_prefix="ccmb-claim") as pool:  # three independent requests, one wait
        is_file, marked, listed = (pool.submit(storage.isfile, url), pool.submit(owner, url),
                                   pool.submit(listing))
        if is_file.result():
            raise OutputFolderError(f"{url}: exists and is not a folder; {hint}")
        mark = marked.result()
    if mark is not None:
        if mark["kind"] != kind:
            raise OutputFolderError(f"{url}: holds a ccmb {mark['kind']} output, not a {kind}; "
                                    f"refusing to write into it: {hint}")
        return url
    names = listed.result()
    if names:
        raise OutputFolderError(f"{url}: is not empty and was not made by ccmb {kind} (it holds {names[0]!r}); "
                                f"refusing to write into it: {hint}")
    from . import __version__

    _CREATED_HERE.add(url)
    storage.write_json(storage.join(url, OWNER_FILE), {"kind": kind, "ccmb": __version__, "created": _now()},
                       indent=None)
    return url


def _write_owner(folder: Path, kind: str) -> None:
    from . import __version__

    doc = {"kind": kind, "ccmb": __version__, "created": _now()}
    tmp = folder / f".{OWNER_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / OWNER_FILE)


def clear(folder: PathLike, kind: str) -> None:
    """Remove the contents of an output folder of ``kind`` (its marker and lock stay); refuses any other."""
    mark = owner(folder)
    if mark is None or mark["kind"] != kind:
        raise OutputFolderError(f"{folder}: not a ccmb {kind} output folder; refusing to empty it")
    if _is_url(folder):
        from . import storage

        storage.remove_tree(folder, keep=_OWN_FILES)
        return
    folder = Path(folder)
    with os.scandir(folder) as it:
        entries = [e for e in it if e.name not in _OWN_FILES]
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def refuse_inside(output: PathLike, inputs: Iterable[Optional[PathLike]], what: str = "input") -> None:
    """Refuse an ``output`` that is one of ``inputs`` or lies inside one of them (writing would overwrite
    or mix with the input's own files)."""
    if _is_url(output) or any(_is_url(i) for i in inputs if i is not None):
        _refuse_inside_urls(output, inputs, what)
        return
    out = Path(os.path.abspath(output))
    try:
        out = out.resolve()
    except OSError:
        pass
    for inp in inputs:
        if inp is None:
            continue
        src = Path(os.path.abspath(inp)).resolve()
        if out == src or src in out.parents:
            raise OutputFolderError(f"{output}: is inside the {what} folder {inp}; writing there would "
                                    "overwrite or mix with its files: choose an output outside it")


def _refuse_inside_urls(output: PathLike, inputs: Iterable[Optional[PathLike]], what: str) -> None:
    """:func:`refuse_inside` where a URL is involved: prefixes compared as text (a local path and a URL are
    never inside each other)."""
    from . import storage

    out = str(storage.location(output))
    for inp in inputs:
        if inp is None or _is_url(inp) != _is_url(output):
            continue
        src = str(storage.location(inp))
        if out == src or out.startswith(src.rstrip("/") + "/"):
            raise OutputFolderError(f"{output}: is inside the {what} folder {inp}; writing there would "
                                    "overwrite or mix with its files: choose an output outside it")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


#: descriptors of the flocks this process holds; a forked child (a DataLoader worker, a pool process) closes its
#: copies at once, so that a lock is released when its holder dies even while orphaned children live on
_HELD_FDS: set = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class FolderLock:
    """Exclusive, crash-safe lock on an output folder for the duration of a run.

    ``with FolderLock(folder, "ccmb build-shards"):`` holds an ``fcntl.flock`` on ``folder/.ccmb-lock``
    and writes the holder (pid, host, command, start) into it. A second :class:`FolderLock` on the same
    folder, in this or another process, raises :class:`OutputFolderError` naming the holder. The lock is
    released on exit and by the kernel when the process dies.
    """

    def __init__(self, folder: PathLike, command: Optional[str] = None, *, lock_name: str = LOCK_FILE) -> None:
        self.url = _is_url(folder)
        self.folder = folder if self.url else Path(folder)
        self.command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.lock_name = lock_name  # another name locks one output file of a shared folder (a decision table)
        self._fd: Optional[int] = None

    def _refusal(self, holder: str) -> OutputFolderError:
        what = "folder" if self.lock_name == LOCK_FILE else f"output {self.lock_name[1:-len(LOCK_FILE)]!r} in it"
        other = "folder" if self.lock_name == LOCK_FILE else "output"
        return OutputFolderError(f"{self.folder}: another run is writing this {what} ({holder}); "
                                 f"wait for it to finish or stop it, or choose another {other}")

    def _info(self) -> Dict[str, object]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": _now(),
                "token": f"{os.getpid()}-{id(self)}-{_now()}"}

    def _acquire_url(self) -> "FolderLock":
        from . import storage

        path = storage.join(self.folder, self.lock_name)
        info = self._info()
        body = (json.dumps(info, sort_keys=True) + "\n").encode()
        for _ in range(2):
            if storage.create_if_absent(path, body):
                self._url_lock = (path, info["token"])
                return self
            try:
                held = json.loads(storage.read_bytes(path, max_bytes=64 * 1024).decode("utf-8"))
            except FileNotFoundError:
                continue  # released between our create and our read: try once more
            except (OSError, ValueError, UnicodeDecodeError):
                held = {}
            if _stale(held):
                logger.warning("%s: taking over the lock of a dead run (%s)", self.folder, _holder_line(held))
                storage.remove(path)
                continue
            raise self._refusal(_holder_line(held))
        raise self._refusal("holder unknown")

    def acquire(self) -> "FolderLock":
        if self.url:
            return self._acquire_url()
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.lock_name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise self._refusal(holder) from None
        except OSError:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode(), 0)
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def release(self) -> None:
        if self.url:
            held, self._url_lock = getattr(self, "_url_lock", None), None
            if held is not None:
                from . import storage

                try:  # delete only our own lock (a takeover by another run is left alone)
                    doc = json.loads(storage.read_bytes(held[0], max_bytes=64 * 1024).decode("utf-8"))
                except (OSError, ValueError, UnicodeDecodeError):
                    doc = {}
                if doc.get("token") == held[1]:
                    storage.remove(held[0])
            return
        if self._fd is None:
            return
        if self._fd not in _HELD_FDS:  # a forked child: its copy was closed at the fork, the parent holds the lock
            self._fd = None
            return
        _HELD_FDS.discard(self._fd)
        import fcntl

        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        return _holder_line(json.loads(raw.decode("utf-8")))
    except (OSError, ValueError, UnicodeDecodeError):
        return "holder unknown"


def _holder_line(info: object) -> str:
    try:
        return f"pid {info['pid']} on {info['host']}, {info['command']!r}, since {info['started']}"  # type: ignore[index]
    except (KeyError, TypeError):
        return "holder unknown"


def _stale(info: object) -> bool:
    """A lock object whose holder ran on this host and whose process is gone (a killed run)."""
    if not isinstance(info, dict) or info.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (KeyError, TypeError, ValueError, PermissionError, OSError):
        return False
    return False
