"""Bounded, checked reading of result JSONs and their per-query files (they are untrusted input).

A results folder may hold anything: a FIFO named ``x.json`` (``open`` would wait for a writer forever), a link
to ``/dev/zero`` (``read`` never ends), a 2 GB JSON, 100,000 nested brackets, a 400-digit integer where a
metric should be, a ``per_query_file`` that points outside the folder, an ``.npz`` whose array header
declares a terabyte. Every read here:

- accepts only a regular file whose real path lies inside ``root`` (the results folder, or the folder of a
  result file given by name); a symlink to a file inside stays fine;
- opens it non-blocking and checks the opened descriptor (``fstat``), so a FIFO or device swapped in after
  the check is refused too, then reads at most the size limit;
- parses JSON with :func:`ccmb.safejson.loads_bounded` (size and nesting depth) and refuses integers that
  do not fit in 64 bits;
- reads per-query ``.npz`` members one by one, checking each array header (dtype, shape, bytes) before any
  memory is allocated, never unpickling.

Every problem is an :class:`UnsafeFileError` (a ``ValueError``) with a short reason; callers name the file.
"""
from __future__ import annotations

import io
import math
import os
import stat
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ccmb.safejson import loads_bounded

MAX_RESULT_BYTES = 16 << 20  # a result JSON is a few KB
MAX_JSON_DEPTH = 64
MAX_INT = 2 ** 63
MAX_PER_QUERY_FILE_BYTES = 1 << 30  # the compressed .npz
MAX_PER_QUERY_ARRAY_BYTES = 2 << 30  # all arrays of one per-query file, uncompressed
MAX_PER_QUERY_MEMBERS = 256
SKIP_DIRS = ("cache",)


class UnsafeFileError(ValueError):
    """A file that is not read: not a regular file, outside its folder, too large, too deep or malformed."""


def real_root(root: os.PathLike) -> Path:
    return Path(os.path.realpath(root))


def inside(path: os.PathLike, root: Path) -> bool:
    """Does the real path of ``path`` lie inside ``root`` (a real path)?"""
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root).rstrip(os.sep) + os.sep)


def read_bytes(path: os.PathLike, root: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (real path inside ``root``), at most ``limit`` of them."""
    if not inside(path, root):
        raise UnsafeFileError(f"points outside {root} (to {os.path.realpath(path)})")
    try:
        fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise UnsafeFileError(f"cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise UnsafeFileError(f"{st.st_size} bytes, more than the {limit} allowed")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise UnsafeFileError(f"grew beyond the {limit} bytes allowed while being read")
        return data
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a plain file"


def check_ints(obj: Any, limit: int = MAX_INT) -> None:
    """Refuse integers outside ``[-limit, limit]`` anywhere in a parsed JSON value (no recursion)."""
    stack: List[Tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not -limit <= value <= limit:
                raise UnsafeFileError(f"integer with {len(str(abs(value)))} digits at {where or 'top level'}")
        elif isinstance(value, dict):
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(value)]


def read_json(path: os.PathLike, root: Path, limit: int = MAX_RESULT_BYTES) -> Any:
    """A JSON file read and parsed within bounds (size, nesting depth, integer size)."""
    raw = read_bytes(path, root, limit)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnsafeFileError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = loads_bounded(text, max_depth=MAX_JSON_DEPTH, max_bytes=limit)
    except ValueError as exc:  # too deep, too big, not JSON, an integer beyond Python's digit limit
        raise UnsafeFileError(f"not readable JSON ({str(exc)[:200]})") from None
    check_ints(data)
    return data


def json_files(directory: os.PathLike) -> Iterator[Path]:
    """Every ``*.json`` under ``directory`` (sorted; ``cache`` folders and symlinked folders not entered)."""
    for top, dirs, files in os.walk(directory, followlinks=False):
        rel = Path(top).relative_to(directory)
        if any(part in SKIP_DIRS for part in rel.parts):
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(".json"):
                yield Path(top) / name


# ------------------------------------------------------------------------------------------ per-query files

REQUIRED_ARRAYS = {"i2t": ("rank", "query"), "t2i": ("rank", "query"), "pairs": ("score", "label", "query"),
                   "images": ("rank", "rank_top1", "label", "query")}


def per_query_path(result: Dict[str, Any], root: Path) -> Path:
    """Where a result's ``per_query_file`` is (relative to the result's folder), checked to stay in ``root``."""
    where = Path(result.get("_path", "."))
    rel = result.get("per_query_file")
    if not isinstance(rel, str) or not rel:
        raise UnsafeFileError(f"{where}: the result has no per_query_file (run it again with --bootstrap > 0)")
    if os.path.isabs(rel) or "\0" in rel:
        raise UnsafeFileError(f"{where}: per_query_file {rel!r} must be relative to the result's folder")
    path = where.parent / rel
    if not inside(path, root):
        raise UnsafeFileError(f"{where}: per_query_file {rel!r} points outside {root}")
    return path


def read_npz(path: os.PathLike, root: Path) -> Dict[str, Any]:
    """The arrays of an ``.npz`` per-query file, each header checked before its array is read."""
    import numpy as np
    from numpy.lib import format as npformat

    raw = read_bytes(path, root, MAX_PER_QUERY_FILE_BYTES)
    arrays: Dict[str, Any] = {}
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_PER_QUERY_MEMBERS:
                raise UnsafeFileError(f"{len(infos)} arrays, more than {MAX_PER_QUERY_MEMBERS}")
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise UnsafeFileError(f"member {info.filename!r} is not an .npy array")
                with zf.open(info) as fh:
                    version = npformat.read_magic(fh)
                    readers = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
                    if version not in readers:
                        raise UnsafeFileError(f"array {info.filename!r}: .npy format version {version} not read")
                    shape, fortran, dtype = readers[version](fh, max_header_size=10000)
                    if dtype.hasobject:
                        raise UnsafeFileError(f"array {info.filename!r} holds Python objects (pickles are not read)")
                    count = math.prod(int(n) for n in shape)
                    total += count * dtype.itemsize
                    if total > MAX_PER_QUERY_ARRAY_BYTES:
                        raise UnsafeFileError(f"arrays of more than {MAX_PER_QUERY_ARRAY_BYTES} bytes")
                    data = fh.read(count * dtype.itemsize + 1)
                    if len(data) != count * dtype.itemsize:
                        raise UnsafeFileError(f"array {info.filename!r} is truncated or longer than its header says")
                    arr = np.frombuffer(data, dtype=dtype)
                    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
                    arrays[info.filename[:-len(".npy")]] = arr.copy()
    except UnsafeFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, TypeError, OverflowError) as exc:
        raise UnsafeFileError(f"not a readable .npz ({str(exc)[:200]})") from None
    return arrays


def check_per_query(pq: Dict[str, Dict[str, Any]]) -> None:
    """Each group holds the arrays its statistic needs, one-dimensional and of one length."""
    if not pq:
        raise UnsafeFileError("no query groups")
    for group, arrays in pq.items():
        need = REQUIRED_ARRAYS.get(group)
        if need is None:
            raise UnsafeFileError(f"unknown query group {group!r}")
        missing = [k for k in need if k not in arrays]
        if missing:
            raise UnsafeFileError(f"group {group!r} lacks {', '.join(missing)}")
        lengths = {k: getattr(v, "shape", ()) for k, v in arrays.items()}
        if any(len(s) != 1 for s in lengths.values()) or len({s[0] for s in lengths.values()}) != 1:
            raise UnsafeFileError(f"group {group!r}: arrays of different shapes {lengths}")
        for k in need:
            if k != "query" and arrays[k].dtype.kind not in "biuf":
                raise UnsafeFileError(f"{group}/{k} is not numeric ({arrays[k].dtype})")


def optional_root(result_path: os.PathLike, root: Optional[os.PathLike]) -> Path:
    """The folder a result's files must stay in: ``root`` when given, else the result's own folder."""
    return real_root(root if root is not None else Path(result_path).parent)
