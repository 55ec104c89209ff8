"""Safe unpacking of fetched zip archives.

Every member name is checked before anything is written: absolute paths, ``..`` components, drive letters,
backslashes, NUL bytes and symbolic links are refused (the whole archive is rejected, nothing is extracted).
Members are streamed into a hidden staging folder inside the destination, then each top-level entry is renamed
into place, so a reader never sees a half-unpacked tree.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import List, Optional

from .verify import VerificationError

logger = logging.getLogger(__name__)

MAX_MEMBERS = 5_000_000


class UnsafeArchiveError(VerificationError):
    """An archive with a member that would land outside the destination (or is a link), or no zip at all."""


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path of a zip member, or :class:`UnsafeArchiveError`."""
    if "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"member {name!r}: backslash or NUL in the name")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/"):
        raise UnsafeArchiveError(f"member {name!r}: absolute path")
    if any(part == ".." for part in p.parts):
        raise UnsafeArchiveError(f"member {name!r}: '..' escapes the destination")
    if p.parts and len(p.parts[0]) == 2 and p.parts[0][1] == ":":
        raise UnsafeArchiveError(f"member {name!r}: drive letter")
    return p


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def list_safe_members(archive: Path) -> List[zipfile.ZipInfo]:
    """All members of ``archive`` after the safety checks (raises on the first unsafe one)."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise UnsafeArchiveError(f"{archive}: not a zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeArchiveError(f"{archive}: {len(infos)} members (more than {MAX_MEMBERS})")
    for info in infos:
        try:
            safe_member_path(info.filename)
        except UnsafeArchiveError as exc:
            raise UnsafeArchiveError(f"{archive}: {exc}; nothing extracted") from None
        if _is_symlink(info):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; nothing extracted")
    return infos


def unzip(archive: Path, dest: Path, overwrite: bool = False) -> List[Path]:
    """Extract ``archive`` into ``dest``; returns the top-level paths created.

    An existing top-level entry of the same name is kept (and logged) unless ``overwrite``.
    """
    archive, dest = Path(archive), Path(dest)
    infos = list_safe_members(archive)
    dest.mkdir(parents=True, exist_ok=True)
    need = sum(i.file_size for i in infos)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise OSError(f"{archive}: unpacking needs {need / 2**30:.1f} GiB, {dest} has {free / 2**30:.1f} GiB free")
    staging = Path(tempfile.mkdtemp(prefix=f".ccmb-unpack-{archive.stem}-", dir=dest))
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in infos:
                rel = safe_member_path(info.filename)
                if not rel.parts:
                    continue
                target = staging.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        created: List[Path] = []
        for entry in sorted(staging.iterdir()):
            final = dest / entry.name
            if final.exists():
                if not overwrite:
                    logger.info("%s exists; kept (unpacked copy discarded)", final)
                    continue
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(entry, final)
            created.append(final)
        return created
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def top_level_names(archive: Path) -> List[str]:
    """The distinct first path components of the archive's members."""
    names: List[str] = []
    for info in list_safe_members(archive):
        parts = safe_member_path(info.filename).parts
        if parts and parts[0] not in names:
            names.append(parts[0])
    return names


def first_missing(root: Path, expected: List[str]) -> Optional[str]:
    for rel in expected:
        if not (Path(root) / rel).exists():
            return rel
    return None
