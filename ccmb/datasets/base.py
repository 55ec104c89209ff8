"""Errors, line reading and the parse log shared by every downstream-dataset parser.

Annotation files come with quirks (UTF-8 BOM, CRLF line ends, blank lines, malformed lines, duplicate
ids). Parsers read them through :func:`iter_lines` and report problems through a :class:`ParseLog`:
strict by default (the first malformed line raises :class:`DatasetFormatError` naming ``file:line``),
or lenient (the line is skipped and recorded, so ``verify`` can list every problem).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .. import boundedio
from ..safejson import loads_bounded
from ..types import PathLike

logger = logging.getLogger(__name__)


BOM = b"\xef\xbb\xbf"


class DatasetError(ValueError):
    """Base class of the errors raised by ``ccmb.datasets``."""


class DatasetFormatError(DatasetError):
    """A malformed annotation line/item; the message starts with ``file:line``."""

    def __init__(self, path: PathLike, line: Optional[int], message: str) -> None:
        self.path, self.line, self.reason = str(path), line, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class UnknownDatasetError(DatasetError):
    """A dataset name that is not registered; the message lists the known names."""


class UnknownSplitError(DatasetError):
    """A split the dataset does not have; the message names the splits it has."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data root (or a file of its layout) is missing; the message prints the expected layout."""


class MissingImageError(DatasetError, FileNotFoundError):
    """An image referenced by the annotations is missing; the message names its path (and, when known, the
    ``file:line`` of the annotation that references it)."""

    def __init__(self, path: str, detail: str = "", ref: Optional[str] = None) -> None:
        self.path, self.detail, self.ref = path, detail, ref
        msg = f"missing image: {path}" + (f" ({detail})" if detail else "")
        super().__init__(f"{ref}: {msg}" if ref else msg)

    def at(self, ref: Optional[str]) -> "MissingImageError":
        """The same error located at the annotation ``ref`` (``file:line``)."""
        return MissingImageError(self.path, self.detail, ref) if ref and not self.ref else self


class UnsafeImagePathError(DatasetError):
    """An image id that would name a file outside its image folder (absolute, ``..``)."""


class UnsafeFileError(DatasetError):
    """A file the dataset names that must not be read: not a regular file (a FIFO, a device such as a link to
    ``/dev/zero``, a folder), a link leading outside its folder, or larger than the bound. The message names it."""


#: Bounds of what a dataset file may hold: an image file, one annotation line, a whole annotation file read at
#: once (AIC-ICC's largest JSON is about 100 MB). ``-p max_image_bytes=N`` raises the first.
MAX_IMAGE_BYTES = 64 << 20
MAX_LINE_BYTES = 16 << 20
MAX_TEXT_FILE_BYTES = 2 << 30


def open_regular(path: PathLike, *, max_bytes: int, what: str = "file",
                 within: Sequence[str] = ()) -> Tuple[int, int]:
    """:func:`ccmb.boundedio.open_regular` raising :class:`UnsafeFileError` (a dataset error naming the file)."""
    return boundedio.open_regular(path, max_bytes=max_bytes, what=what, within=within, error=UnsafeFileError)


def read_regular(path: PathLike, *, max_bytes: int, what: str = "file", within: Sequence[str] = ()) -> bytes:
    """:func:`ccmb.boundedio.read_regular` raising :class:`UnsafeFileError`."""
    return boundedio.read_regular(path, max_bytes=max_bytes, what=what, within=within, error=UnsafeFileError)


def unsafe_image_id(image_id: str) -> Optional[str]:
    """Why an annotation's image id may not name a file inside the image folder, or None when it does: an
    absolute path, a ``..`` component (after normalising ``\\`` to ``/``), a NUL byte. Checked lexically,
    so a symlinked image folder keeps working."""
    if "\0" in image_id:
        return "NUL in the image id"
    name = image_id.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return "absolute path outside the image folder"
    if ".." in name.split("/") or posixpath.normpath(name).startswith(".."):
        return "'..' leads outside the image folder"
    return None


def image_refs(path: PathLike, pairs: Iterable[Tuple[str, object]]) -> Dict[str, str]:
    """``image id -> "file:line"`` of the first annotation line (or item) that references each image."""
    out: Dict[str, str] = {}
    for image_id, where in pairs:
        if image_id not in out:
            out[image_id] = f"{path}:{where}" if where is not None else str(path)
    return out


@dataclass
class ParseLog:
    """What a parser met besides good lines.

    ``skipped``: malformed lines (``file:line: reason``), only filled when ``lenient``; ``duplicates``:
    repeated ids that were dropped (the first occurrence wins); ``empty``: lines/captions with empty text.
    """

    lenient: bool = False
    skipped: List[str] = field(default_factory=list)
    duplicates: List[str] = field(default_factory=list)
    empty: List[str] = field(default_factory=list)

    def bad(self, path: PathLike, line: Optional[int], message: str) -> None:
        """A malformed line: raise (strict) or record it (lenient)."""
        err = DatasetFormatError(path, line, message)
        if not self.lenient:
            raise err
        self.skipped.append(str(err))

    def duplicate(self, path: PathLike, line: Optional[int], what: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        self.duplicates.append(f"{where}: duplicate {what} (first occurrence kept)")

    def empty_text(self, path: PathLike, line: Optional[int], what: str = "empty text") -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        self.empty.append(f"{where}: {what} (skipped)")

    def counts(self) -> dict:
        return {"skipped_lines": len(self.skipped), "duplicates": len(self.duplicates),
                "empty_texts": len(self.empty)}


def iter_lines(path: PathLike, log: Optional[ParseLog] = None) -> Iterator[Tuple[int, str]]:
    """Yield ``(line_number, text)`` for the non-blank lines of a UTF-8 file.

    A leading BOM and CR/LF line ends are removed; a line that is not UTF-8 is reported through ``log``
    (strict: raised) and skipped. Line numbers are 1-based and count blank lines.
    """
    log = log or ParseLog()
    fd, _ = open_regular(path, max_bytes=MAX_TEXT_FILE_BYTES, what="annotation file")
    with os.fdopen(fd, "rb") as fh:
        for number, raw, _ in boundedio.bounded_lines(fh, MAX_LINE_BYTES):
            if raw is None:
                log.bad(path, number, f"line longer than {MAX_LINE_BYTES:,} bytes")
                continue
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                log.bad(path, number, f"not UTF-8: {exc}")
                continue
            yield number, text


def iter_json_objects(path: PathLike, log: ParseLog) -> Iterator[Tuple[int, dict]]:
    """``(line number, object)`` of a JSON-lines file; a line that is not a JSON object goes to ``log``."""
    for number, line in iter_lines(path, log):
        try:  # bounded: a line nested 1,000 levels deep is a located, counted problem, not a RecursionError
            obj = loads_bounded(line)
        except ValueError as exc:
            log.bad(path, number, f"invalid JSON: {getattr(exc, 'msg', None) or exc}")
            continue
        if not isinstance(obj, dict):
            log.bad(path, number, "expected a JSON object")
            continue
        yield number, obj


def read_text(path: PathLike) -> str:
    """A whole UTF-8 file (BOM removed, universal newlines), read bounded (:data:`MAX_TEXT_FILE_BYTES`, a regular
    file)."""
    import io

    data = read_regular(path, max_bytes=MAX_TEXT_FILE_BYTES, what="annotation file")
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline=None).read()


def first_existing(candidates: Sequence[Path], *, kind: str = "file") -> Optional[Path]:
    """The first candidate that exists as a ``kind`` ("file" or "dir")."""
    for c in candidates:
        if (kind == "dir" and c.is_dir()) or (kind == "file" and c.is_file()):
            return c
    return None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while parsing: building ~1M small objects otherwise triggers
    it again and again (it halves the parse time of a 250k-line file). Nothing we build has cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
