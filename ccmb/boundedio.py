"""Reading files a user handed over, bounded and checked (light: the standard library only).

A path may name anything: a link to ``/dev/zero`` (endless), a FIFO (blocks until a writer comes), a folder, a
file of gigabytes, a file with one endless line. :func:`open_regular` opens only regular files within a size
bound (and, when asked, only inside given folders), :func:`read_regular` reads one whole, and
:func:`bounded_lines` reads lines of at most a given length, skipping longer ones without holding them.
Errors are ``error`` (default :class:`UnsafeFileError`, a ``ValueError``) with a message naming the file, so each
caller raises its own type (a dataset error, a shard-format error, a config error).
"""
from __future__ import annotations

import os
import stat
from typing import BinaryIO, Iterator, Optional, Sequence, Tuple, Type


class UnsafeFileError(ValueError):
    """A file that must not be read as asked: not a regular file, outside its folder, or over the bound."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, *, max_bytes: int, what: str = "file", within: Sequence[str] = (),
                 error: Type[Exception] = UnsafeFileError) -> Tuple[int, int]:
    """Open ``path`` for reading after checking it: a regular file (a link to ``/dev/zero`` or a FIFO is refused
    without a blocking open), of at most ``max_bytes``, and, when ``within`` names folders (real paths), whose real
    path lies inside one of them. Returns ``(file descriptor, size)``; a missing file raises
    ``FileNotFoundError``; anything else ``error`` naming the file."""
    path = os.fspath(path)
    st = os.stat(path)  # follows links: what would be read
    if not stat.S_ISREG(st.st_mode):
        link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise error(f"{path}: {what} is {_kind(st.st_mode)}{link}, not a regular file; refusing to read it")
    if within:
        real = os.path.realpath(path)
        if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in within):
            raise error(f"{path}: {what} is a link to {real}, outside {within[0]}; refusing to read it "
                        "(-p image_root=DIR allows links into DIR)")
    if st.st_size > max_bytes:
        raise error(f"{path}: {what} of {st.st_size:,} bytes, more than the bound of {max_bytes:,}")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)  # the file opened is the file checked
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {what} is {_kind(st.st_mode)}, not a regular file; refusing to read it")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_regular(path, *, max_bytes: int, what: str = "file", within: Sequence[str] = (),
                 error: Type[Exception] = UnsafeFileError) -> bytes:
    """The bytes of a checked file (:func:`open_regular`), never more than ``max_bytes`` read (a file that grew
    past the bound while being read is refused too)."""
    fd, _ = open_regular(path, max_bytes=max_bytes, what=what, within=within, error=error)
    try:
        chunks, got = [], 0
        while got <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got > max_bytes:
        raise error(f"{path}: {what} grew past the bound of {max_bytes:,} bytes while being read")
    return b"".join(chunks)


def bounded_lines(fh: BinaryIO, max_line: int) -> Iterator[Tuple[int, Optional[bytes], int]]:
    """``(line number, line, bytes consumed)`` of a binary file; a line longer than ``max_line`` is read past in
    pieces and given as ``None`` (its bytes still counted, so byte offsets stay right)."""
    number = 0
    while True:
        line = fh.readline(max_line + 1)
        if not line:
            return
        number += 1
        if len(line) > max_line and not line.endswith(b"\n"):
            consumed = len(line)
            while line and not line.endswith(b"\n"):
                line = fh.readline(max_line + 1)
                consumed += len(line)
            yield number, None, consumed
            continue
        yield number, line, len(line)
