"""Where the images of a downstream set live: a folder (by file name) or a base64 TSV (by id).

A TSV (``<image_id>\\t<base64>`` per line, the Chinese-CLIP layout) is never decoded as a whole: a byte
offset index (id -> start, end) is built once by scanning the file and cached beside it as
``.<name>.ccmb-index.json`` (written atomically). The cache records the TSV's size and mtime and is
rebuilt when either changes. If the data folder is read-only the cache goes to ``$CCMB_HOME/cache`` (or
``~/.cache/ccmb``). A lookup is then one ``pread`` of one line.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

from .. import atomic
from ..boundedio import bounded_lines
from ..images import decode_image
from .base import (BOM, MAX_IMAGE_BYTES, MissingImageError, ParseLog, PathLike, UnsafeImagePathError,
                   open_regular, read_regular, unsafe_image_id)

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
#: bounds of a base64 TSV: the file, and one line (an image of MAX_IMAGE_BYTES in base64, plus its id)
MAX_TSV_BYTES = 1 << 40
MAX_TSV_LINE_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 4096
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageSource:
    """Interface: bytes and decoded RGB images by image id."""

    def path_of(self, image_id: str) -> str:
        raise NotImplementedError

    def exists(self, image_id: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, image_id: str) -> bytes:
        raise NotImplementedError

    def load(self, image_id: str) -> Image.Image:
        """The decoded image in RGB (``MissingImageError`` / ``ImageDecodeError`` name the path)."""
        return decode_image(self.read_bytes(image_id), mode="RGB", source=self.path_of(image_id))


class FolderImages(ImageSource):
    """Images as files of one folder; an id without an image extension gets ``default_ext``.

    Every image is read checked (:func:`~ccmb.datasets.base.read_regular`): a regular file whose real path lies
    in the folder (or in one of ``roots``, e.g. a shared image store the folder links into), of at most
    ``max_bytes``; a link to ``/dev/zero``, a FIFO or an oversized file is an :class:`UnsafeFileError` naming it."""

    def __init__(self, folder: PathLike, default_ext: str = ".jpg", *, roots: Sequence[PathLike] = (),
                 max_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.folder = Path(folder)
        self.default_ext = default_ext
        self.roots = tuple(os.path.realpath(r) for r in (self.folder, *roots))
        self.max_bytes = int(max_bytes)

    def file_name(self, image_id: str) -> str:
        return image_id if image_id.lower().endswith(IMAGE_EXTS) else image_id + self.default_ext

    def path_of(self, image_id: str) -> str:
        """The image's file; an id leading outside the folder (absolute, ``..``) raises
        :class:`UnsafeImagePathError` (the parsers already refuse such lines, naming file:line)."""
        name = self.file_name(image_id)
        reason = unsafe_image_id(name)
        if reason is not None:
            raise UnsafeImagePathError(f"image id {image_id!r}: {reason} ({self.folder})")
        return str(self.folder / name)

    def exists(self, image_id: str) -> bool:
        """Something is there (reading it says whether it may be read)."""
        return os.path.exists(self.path_of(image_id))

    def read_bytes(self, image_id: str) -> bytes:
        path = self.path_of(image_id)
        try:
            return read_regular(path, max_bytes=self.max_bytes, what="image", within=self.roots)
        except FileNotFoundError:
            raise MissingImageError(path) from None

    def __repr__(self) -> str:
        return f"FolderImages({str(self.folder)!r})"


class MultiFolderImages(FolderImages):
    """Images whose ids are paths relative to a root (e.g. ``test/003/x.jpg`` in ELEVATER)."""

    def file_name(self, image_id: str) -> str:
        return image_id


# ------------------------------------------------------------------------------------------ TSV index

def cache_dir() -> Path:
    """``$CCMB_HOME/cache`` if set, else ``$XDG_CACHE_HOME/ccmb`` or ``~/.cache/ccmb``."""
    home = os.environ.get("CCMB_HOME")
    if home:
        return Path(home) / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ccmb"


def index_paths(tsv: Path) -> List[Path]:
    """Candidate cache files of a TSV's index: beside it first, then in the user cache folder."""
    tsv = tsv.resolve()
    digest = hashlib.sha1(str(tsv).encode("utf-8")).hexdigest()[:16]
    return [tsv.parent / f".{tsv.name}.ccmb-index.json",
            cache_dir() / "tsv-index" / f"{digest}-{tsv.name}.json"]


def build_tsv_index(tsv: PathLike) -> Dict[str, object]:
    """Scan a TSV once: the byte range of every line, its id, duplicates and malformed lines."""
    tsv = Path(tsv)
    fd, _ = open_regular(tsv, max_bytes=MAX_TSV_BYTES, what="image TSV")
    os.close(fd)
    st = tsv.stat()
    ids: List[str] = []
    starts: List[int] = []
    ends: List[int] = []
    seen: Dict[str, int] = {}
    duplicates: List[Tuple[int, str]] = []
    malformed: List[Tuple[int, str]] = []
    offset = 0
    with open(tsv, "rb") as fh:
        for number, line, consumed in bounded_lines(fh, MAX_TSV_LINE_BYTES):
            start = offset
            offset += consumed
            if line is None:
                malformed.append((number, f"line longer than {MAX_TSV_LINE_BYTES:,} bytes"))
                continue
            if number == 1 and line.startswith(BOM):
                start += len(BOM)
                line = line[len(BOM):]
            if not line.strip():
                continue
            tab = line.find(b"\t")
            if tab <= 0:
                malformed.append((number, "expected '<image_id>\\t<base64>'"))
                continue
            try:
                image_id = line[:tab].decode("utf-8").strip()
            except UnicodeDecodeError:
                malformed.append((number, "image id is not UTF-8"))
                continue
            if not image_id or len(line) - tab <= 2:
                malformed.append((number, "empty image id or empty image data"))
                continue
            if image_id in seen:
                duplicates.append((number, image_id))
                continue
            seen[image_id] = len(ids)
            ids.append(image_id)
            starts.append(start)
            ends.append(offset)
    return {"version": INDEX_VERSION, "tsv": str(tsv.resolve()), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ids": ids, "starts": starts, "ends": ends,
            "duplicates": duplicates, "malformed": malformed}


def _valid(index: object, tsv: Path) -> bool:
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        return False
    st = tsv.stat()
    return index.get("size") == st.st_size and index.get("mtime_ns") == st.st_mtime_ns


def load_tsv_index(tsv: PathLike, *, rebuild: bool = False) -> Dict[str, object]:
    """The cached index of ``tsv`` (built and cached if missing or stale)."""
    tsv = Path(tsv)
    candidates = index_paths(tsv)
    if not rebuild:
        for path in candidates:
            try:
                with open(path, encoding="utf-8") as fh:
                    index = json.load(fh)
            except (OSError, ValueError):
                continue
            if _valid(index, tsv):
                logger.debug("TSV index of %s from %s", tsv, path)
                return index
    logger.info("indexing %s (once; cached)", tsv)
    index = build_tsv_index(tsv)
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(path, index, indent=None)
            logger.debug("TSV index of %s written to %s", tsv, path)
            break
        except OSError as exc:  # read-only data folder: try the next place
            logger.debug("cannot write TSV index %s: %s", path, exc)
    else:
        logger.warning("could not cache the index of %s anywhere; it will be rebuilt next time", tsv)
    return index


def decode_base64(data: bytes) -> bytes:
    """Standard or URL-safe base64 (Chinese-CLIP writes URL-safe), padding optional."""
    data = data.strip()
    data += b"=" * (-len(data) % 4)
    if b"-" in data or b"_" in data:
        return base64.urlsafe_b64decode(data)
    return base64.b64decode(data)


class TsvImages(ImageSource):
    """Images of a ``<image_id>\\t<base64>`` TSV, read by byte offset (``pread``; safe across forks)."""

    def __init__(self, tsv: PathLike, *, rebuild_index: bool = False) -> None:
        self.tsv = Path(tsv)
        index = load_tsv_index(self.tsv, rebuild=rebuild_index)
        self.ids: List[str] = list(index["ids"])  # type: ignore[arg-type]
        self._starts: List[int] = index["starts"]  # type: ignore[assignment]
        self._ends: List[int] = index["ends"]  # type: ignore[assignment]
        self.duplicates = [tuple(d) for d in index["duplicates"]]  # type: ignore[union-attr]
        self.malformed = [tuple(m) for m in index["malformed"]]  # type: ignore[union-attr]
        self._pos = {image_id: i for i, image_id in enumerate(self.ids)}
        self._fd: Optional[int] = None
        self._pid = -1
        self._lock = threading.Lock()

    def report(self, log: ParseLog) -> None:
        """Send the TSV's malformed lines and duplicate ids to a parse log."""
        for number, what in self.duplicates:
            log.duplicate(self.tsv, number, f"image id {what!r}")
        for number, reason in self.malformed:
            log.bad(self.tsv, number, reason)

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            with self._lock:
                if self._fd is None or self._pid != pid:  # after fork: a fresh descriptor, of a checked file
                    self._fd, _ = open_regular(self.tsv, max_bytes=MAX_TSV_BYTES, what="image TSV")
                    self._pid = pid
        return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)  # type: ignore[arg-type]
            except OSError:
                pass

    def path_of(self, image_id: str) -> str:
        return f"{self.tsv}#{image_id}"

    def exists(self, image_id: str) -> bool:
        return image_id in self._pos

    def read_bytes(self, image_id: str) -> bytes:
        i = self._pos.get(image_id)
        if i is None:
            raise MissingImageError(self.path_of(image_id), f"id {image_id!r} is not in {self.tsv}")
        start, end = self._starts[i], self._ends[i]
        line = os.pread(self._descriptor(), end - start, start)
        _, _, payload = line.partition(b"\t")
        try:
            return decode_base64(payload)
        except (binascii.Error, ValueError) as exc:
            from ..images import ImageDecodeError

            raise ImageDecodeError(f"bad base64 ({self.path_of(image_id)}): {exc}") from exc

    def __repr__(self) -> str:
        return f"TsvImages({str(self.tsv)!r}, {len(self.ids)} images)"
