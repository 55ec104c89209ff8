"""Checks of a fetched file: size, sha256, and for checkpoints every expected key with its shape.

Checkpoint keys are read without loading the tensors: ``.safetensors`` by its JSON header, torch ``.pth``/``.pt``
(zip format) with ``torch.load(..., weights_only=True, mmap=True)`` (tensors stay memory-mapped, nothing is
read but the pickle), older torch files with a plain ``weights_only=True`` load.

A torch zip checkpoint is inspected before torch opens it (:func:`check_checkpoint_archive`): torch writes its
members uncompressed, so members that would inflate far beyond the file's size (a 3 MB file claiming 3 GiB) are
refused before anything is inflated.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import os
import struct
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

_SHOW = 10


class VerificationError(ValueError):
    """A file that is not what the registry expects (the message names the file and the difference)."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_size_and_hash(path: Path, size: Optional[int] = None, sha256: Optional[str] = None) -> Optional[str]:
    """Raise :class:`VerificationError` on a size or hash mismatch; returns the sha256 when it was computed."""
    path = Path(path)
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise VerificationError(f"{path}: size {actual} bytes, expected {size}")
    if sha256:
        digest = sha256_file(path)
        if digest.lower() != sha256.lower():
            raise VerificationError(f"{path}: sha256 {digest}, expected {sha256}")
        return digest
    return None


#: a torch zip checkpoint may inflate to at most this many times its size on disk (plus the slack below):
#: torch stores its members uncompressed, so a legitimate file inflates by a factor of 1.0
MAX_INFLATION = 2.0
INFLATION_SLACK = 64 << 20
MAX_ARCHIVE_MEMBERS = 1_000_000


def check_checkpoint_archive(path: Path, max_bytes: Optional[int] = None) -> int:
    """The bytes a checkpoint file holds once inflated, checked before anything is read: for a zip (torch's
    format since 1.6) the sum of its members' uncompressed sizes from the central directory, which must not
    exceed ``max_bytes`` (default: :data:`MAX_INFLATION` x the size on disk + :data:`INFLATION_SLACK`); other
    files (safetensors, legacy torch) cannot inflate: their size. Raises :class:`VerificationError` naming the
    file (a zip bomb, an unreadable archive)."""
    path = Path(path)
    size = os.stat(path).st_size
    if not zipfile.is_zipfile(path):
        return size
    limit = max_bytes if max_bytes is not None else int(size * MAX_INFLATION) + INFLATION_SLACK
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise VerificationError(f"{path}: unreadable zip archive ({type(exc).__name__}: {exc})") from exc
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise VerificationError(f"{path}: {len(infos)} archive members (at most {MAX_ARCHIVE_MEMBERS}); "
                                "not a checkpoint")
    total = sum(max(0, i.file_size) for i in infos)
    if total > limit:
        big = max(infos, key=lambda i: i.file_size)
        raise VerificationError(
            f"{path}: its archive members would inflate to {total:,} bytes from {size:,} on disk (member "
            f"{big.filename!r}: {big.file_size:,} bytes); refusing to load it (more than {limit:,} bytes; a "
            "zip bomb or not a torch checkpoint)")
    return total


def read_checkpoint_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of a checkpoint file without materialising its tensors.

    Accepts ``.safetensors``, and torch files holding ``{"model": state_dict}``, ``{"state_dict": ...}`` or a
    bare state dict (a ``module.`` prefix on every key is removed, as ``models.loading`` does).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _safetensors_shapes(path)
    check_checkpoint_archive(path)
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # legacy (non-zip) torch files cannot be memory-mapped
        if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
            raise VerificationError(f"{path}: cannot read with torch.load(weights_only=True): {exc}") from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc2:
            raise VerificationError(f"{path}: cannot read with torch.load(weights_only=True): {exc2}") from exc2
    except Exception as exc:  # truncated zip, pickle errors, disallowed globals
        raise VerificationError(f"{path}: cannot read with torch.load(weights_only=True): {exc}") from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise VerificationError(f"{path}: not a state dict (got {type(obj).__name__})")
    shapes = {str(k): tuple(int(d) for d in v.shape) for k, v in obj.items() if hasattr(v, "shape")}
    if shapes and all(k.startswith("module.") for k in shapes):
        shapes = {k[len("module."):]: v for k, v in shapes.items()}
    return shapes


def _safetensors_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise VerificationError(f"{path}: truncated safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise VerificationError(f"{path}: safetensors header of {n} bytes is implausible")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise VerificationError(f"{path}: unreadable safetensors header: {exc}") from exc
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def check_checkpoint_keys(path: Path, expected: Mapping[str, Sequence[int]],
                          optional_patterns: Iterable[str] = ()) -> int:
    """Every key of ``expected`` must be in the checkpoint with that shape (keys matching one of
    ``optional_patterns`` may be absent). Returns the number of keys checked; raises
    :class:`VerificationError` listing missing keys and shape mismatches."""
    shapes = read_checkpoint_shapes(path)
    optional = re.compile("|".join(optional_patterns)) if optional_patterns else None
    missing: List[str] = []
    wrong: List[str] = []
    for key, shape in expected.items():
        if key not in shapes:
            if optional is None or not optional.search(key):
                missing.append(key)
        elif tuple(shapes[key]) != tuple(shape):
            wrong.append(f"{key}: {tuple(shapes[key])} (expected {tuple(shape)})")
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(expected)} expected keys missing: " + ", ".join(missing[:_SHOW])
                         + (f" ... and {len(missing) - _SHOW} more" if len(missing) > _SHOW else ""))
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches: " + "; ".join(wrong[:_SHOW])
                         + (f" ... and {len(wrong) - _SHOW} more" if len(wrong) > _SHOW else ""))
        raise VerificationError(f"{path}: not the expected checkpoint: " + "; ".join(parts))
    return len(expected)
