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
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Union

OWNER_FILE = ".ccmb-owner.json"
LOCK_FILE = ".ccmb-lock"
_OWN_FILES = {OWNER_FILE, LOCK_FILE}

PathLike = Union[str, "os.PathLike[str]"]


class OutputFolderError(ValueError):
    """An output folder that ccmb must not write (a :class:`ValueError`; the message names the folder)."""


def owner(folder: PathLike) -> Optional[Dict[str, object]]:
    """The owner marker of ``folder`` (``{"kind": ..., ...}``), or None when it has none or it is unreadable."""
    path = Path(folder) / OWNER_FILE
    try:
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
          hint: str = "choose another folder") -> Path:
    """Make ``folder`` an output folder of ``kind`` or refuse it; returns it as a :class:`Path`.

    Accepted: a missing folder (created), an empty folder, or one whose owner marker says ``kind``.
    ``legacy(folder)`` may accept a non-empty folder without a marker that an earlier ccmb version wrote
    (recognised by its own files); it is then marked. Anything else raises :class:`OutputFolderError`.
    """
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


def _write_owner(folder: Path, kind: str) -> None:
    from . import __version__

    doc = {"kind": kind, "ccmb": __version__, "created": _now()}
    tmp = folder / f".{OWNER_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / OWNER_FILE)


def clear(folder: PathLike, kind: str) -> None:
    """Remove the contents of an output folder of ``kind`` (its marker and lock stay); refuses any other."""
    folder = Path(folder)
    mark = owner(folder)
    if mark is None or mark["kind"] != kind:
        raise OutputFolderError(f"{folder}: not a ccmb {kind} output folder; refusing to empty it")
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class FolderLock:
    """Exclusive, crash-safe lock on an output folder for the duration of a run.

    ``with FolderLock(folder, "ccmb build-shards"):`` holds an ``fcntl.flock`` on ``folder/.ccmb-lock``
    and writes the holder (pid, host, command, start) into it. A second :class:`FolderLock` on the same
    folder, in this or another process, raises :class:`OutputFolderError` naming the holder. The lock is
    released on exit and by the kernel when the process dies.
    """

    def __init__(self, folder: PathLike, command: Optional[str] = None, *, lock_name: str = LOCK_FILE) -> None:
        self.folder = Path(folder)
        self.command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.lock_name = lock_name  # another name locks one output file of a shared folder (a decision table)
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.lock_name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            what = "folder" if self.lock_name == LOCK_FILE else f"output {self.lock_name[1:-len(LOCK_FILE)]!r} in it"
            other = "folder" if self.lock_name == LOCK_FILE else "output"
            raise OutputFolderError(f"{self.folder}: another run is writing this {what} ({holder}); "
                                    f"wait for it to finish or stop it, or choose another {other}") from None
        except OSError:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
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
        info = json.loads(raw.decode("utf-8"))
        return (f"pid {info['pid']} on {info['host']}, {info['command']!r}, since {info['started']}")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "holder unknown"
