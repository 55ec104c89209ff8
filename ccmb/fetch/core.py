"""Fetching a registry entry: try its sources in order, verify, keep, unpack.

An :class:`Artifact` (a model's weights, a dataset's archives) is a list of :class:`FileSpec` plus a manual
alternative. :func:`fetch_file` returns the cached file when it is there and verified, otherwise tries every
source in order (user mirrors first): each download is resumable, lands atomically, and is verified (size, sha256
when known, expected checkpoint keys and shapes); a file that fails verification is removed and the next source is
tried. When every source fails, :class:`FetchError` lists what was tried and how to do it by hand.

Verified files are recorded in ``<folder>/.ccmb-fetch.json`` (size, mtime, sha256), so a later call trusts an
unchanged file without hashing it again. With ``$CCMB_OFFLINE=1`` no source is tried.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import atomic
from . import http, unpack, verify
from .home import offline as _offline_env
from .sources import Source, SourceError, mirror_sources

logger = logging.getLogger(__name__)

RECORD = ".ccmb-fetch.json"


#: ``report(line)``: what a fetch tries as it goes (the CLI prints these lines; the library logs them)
Reporter = Callable[[str], None]


def _size_text(n: Optional[int]) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


class FetchError(RuntimeError):
    """Nothing usable could be fetched; the message names every source tried and the manual alternative."""


@dataclass(frozen=True)
class FileSpec:
    """One file of an artifact: its local name, sources in order, and what it must look like."""

    name: str
    sources: Tuple[Source, ...] = ()
    size: Optional[int] = None
    sha256: Optional[str] = None
    expected_keys: Optional[Mapping[str, Sequence[int]]] = field(default=None, repr=False, compare=False)
    optional_keys: Tuple[str, ...] = ()  # regexes of expected keys that may be absent
    unpack: bool = False
    expect: Tuple[str, ...] = ()  # paths that must exist under the unpack folder afterwards
    state_dict: bool = False  # must read as a checkpoint (keys and shapes), even without a key list

    def describe_checks(self) -> str:
        checks = [f"size {self.size}" if self.size is not None else "size unknown",
                  f"sha256 {self.sha256[:12]}…" if self.sha256 else "sha256 unknown"]
        if self.expected_keys:
            checks.append(f"{len(self.expected_keys)} checkpoint keys and shapes")
        elif self.state_dict:
            checks.append("a readable checkpoint")
        if self.expect:
            checks.append("unpacked layout: " + ", ".join(self.expect))
        return "; ".join(checks)


@dataclass(frozen=True)
class Artifact:
    """A named registry entry (``kind`` ``models`` or ``datasets``)."""

    kind: str
    name: str
    files: Tuple[FileSpec, ...] = ()
    manual: str = ""
    description: str = ""

    @property
    def fetchable(self) -> bool:
        return any(f.sources for f in self.files)


@dataclass
class FetchResult:
    artifact: str
    files: List[Path] = field(default_factory=list)
    downloaded: List[str] = field(default_factory=list)
    cached: List[str] = field(default_factory=list)
    unpacked: List[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- records
def _load_records(folder: Path) -> Dict[str, Any]:
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_record(folder: Path, name: str, path: Path, sha256: Optional[str], source: str) -> None:
    records = _load_records(folder)
    st = path.stat()
    records[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256, "source": source,
                     "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic.write_json(folder / RECORD, records)


def _trusted(folder: Path, spec: FileSpec, path: Path) -> bool:
    rec = _load_records(folder).get(spec.name)
    if not rec or not path.is_file():
        return False
    st = path.stat()
    if rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return False
    if spec.size is not None and st.st_size != spec.size:
        return False
    return not spec.sha256 or (rec.get("sha256") or "").lower() == spec.sha256.lower()


def verify_file(spec: FileSpec, path: Path) -> Optional[str]:
    """All checks of ``spec`` on ``path``; returns the sha256 when computed. Raises ``VerificationError``."""
    digest = verify.check_size_and_hash(path, spec.size, spec.sha256)
    if spec.expected_keys:
        n = verify.check_checkpoint_keys(path, spec.expected_keys, spec.optional_keys)
        logger.info("%s: %d checkpoint keys and shapes as expected", path.name, n)
    elif spec.state_dict and not verify.read_checkpoint_shapes(path):
        raise verify.VerificationError(f"{path}: a checkpoint without tensors")
    if spec.unpack:
        unpack.list_safe_members(path)
    return digest


# ---------------------------------------------------------------------------------------------- fetching
def all_sources(artifact: Artifact, spec: FileSpec) -> List[Source]:
    """User mirrors first, then the registry's sources."""
    return mirror_sources(artifact.kind, artifact.name, spec.name) + list(spec.sources)


def fetch_file(artifact: Artifact, spec: FileSpec, folder: Path, *, allow_file: bool = False,
               offline: Optional[bool] = None, retries: int = 1, report: Optional[Reporter] = None) -> Tuple[Path, bool]:
    """``(path, downloaded)`` of ``spec`` in ``folder``: the verified cached file, or a fresh download.
    ``report`` receives a line for each thing tried (source, size, outcome).

    Two processes fetching the same file wait for each other (a lock file beside it)."""
    from filelock import FileLock

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f".{spec.name}.lock")):
        return _fetch_file_locked(artifact, spec, folder, allow_file=allow_file, offline=offline, retries=retries,
                                  report=report)


def _fetch_file_locked(artifact: Artifact, spec: FileSpec, folder: Path, *, allow_file: bool,
                       offline: Optional[bool], retries: int, report: Optional[Reporter] = None) -> Tuple[Path, bool]:
    def say(line: str) -> None:
        logger.info("%s/%s: %s", artifact.kind, artifact.name, line)
        if report is not None:
            report(line)

    path = folder / spec.name
    if path.is_file():
        if _trusted(folder, spec, path):
            say(f"{spec.name}: cached in {folder}, verified earlier")
            return path, False
        try:
            digest = verify_file(spec, path)
        except verify.VerificationError as exc:
            rejected = path.with_name(path.name + ".rejected")  # a manual download is kept for inspection
            logger.warning("%s; moved to %s, fetching again", exc, rejected.name)
            os.replace(path, rejected)
        else:
            _save_record(folder, spec.name, path, digest, "present")
            say(f"{spec.name}: present in {folder}, verified ({spec.describe_checks()})")
            return path, False
    offline = _offline_env() if offline is None else offline
    sources = all_sources(artifact, spec)
    if offline:
        raise FetchError(_failure(artifact, spec, path, [], sources,
                                  "offline (--offline, --no-fetch or $CCMB_OFFLINE=1): no source tried"))
    if not sources:
        raise FetchError(_failure(artifact, spec, path, [], [], "no download source is known"))
    folder.mkdir(parents=True, exist_ok=True)
    attempts: List[str] = []
    for i, source in enumerate(sources, 1):
        for attempt in range(1 + max(0, retries)):
            t0 = time.perf_counter()
            try:
                say(f"{spec.name} ({_size_text(spec.size)}): trying source {i}/{len(sources)}, "
                    f"{source.describe()}" + (" (resuming)" if attempt else ""))
                got = source.fetch(path, allow_file=allow_file)
            except SourceError as exc:
                took = time.perf_counter() - t0
                attempts.append(f"{exc} [{took:.1f}s]")
                say(f"  failed after {took:.1f}s: {str(exc).removeprefix(source.describe() + ': ')}")
                part = http.part_path(path)
                resumable = part.is_file() and part.stat().st_size > 0
                if resumable and attempt < retries:
                    continue
                break
            try:
                digest = verify_file(spec, got)
            except verify.VerificationError as exc:
                attempts.append(f"{source.describe()}: downloaded but failed verification: {exc}")
                say(f"  downloaded but failed verification: {exc}; removed")
                got.unlink(missing_ok=True)
                http.discard_partial(path)
                break
            if got != path:
                got.replace(path)
            _save_record(folder, spec.name, path, digest, source.describe())
            say(f"  got {_size_text(path.stat().st_size)} in {time.perf_counter() - t0:.1f}s; verified "
                f"({spec.describe_checks()}) -> {path}")
            return path, True
    raise FetchError(_failure(artifact, spec, path, attempts, sources, "every source failed"))


def _failure(artifact: Artifact, spec: FileSpec, path: Path, attempts: List[str], sources: List[Source],
             why: str) -> str:
    lines = [f"cannot fetch {artifact.kind[:-1]} {artifact.name!r} file {spec.name}: {why}"]
    if attempts:
        lines.append("tried:")
        lines += [f"  - {a}" for a in attempts]
    elif sources:
        lines.append("sources: " + "; ".join(s.describe() for s in sources))
    lines.append(f"manual alternative: put {spec.name} at {path} ({spec.describe_checks()})"
                 + (f"; {artifact.manual}" if artifact.manual else ""))
    lines.append("or add a mirror: CCMB_MIRRORS=https://host/base (looked up at "
                 f"<base>/{artifact.kind}/{artifact.name}/{spec.name})")
    return "\n".join(lines)


def fetch_artifact(artifact: Artifact, folder: Path, *, unpack_to: Optional[Path] = None,
                   allow_file: bool = False, offline: Optional[bool] = None, keep_archives: bool = True,
                   retries: int = 1, report: Optional[Reporter] = None) -> FetchResult:
    """Fetch every file of ``artifact`` into ``folder``; archives (``unpack``) are unpacked into ``unpack_to``
    (default ``folder``) unless their expected layout is already there."""
    result = FetchResult(artifact.name)
    if not artifact.fetchable and artifact.manual:
        raise FetchError(f"{artifact.kind[:-1]} {artifact.name!r} cannot be fetched automatically: "
                         f"{artifact.manual}")
    target = Path(unpack_to) if unpack_to is not None else Path(folder)
    for spec in artifact.files:
        if spec.unpack and spec.expect and unpack.first_missing(target, list(spec.expect)) is None:
            logger.info("%s: %s already unpacked in %s", artifact.name, spec.name, target)
            result.cached.append(spec.name)
            continue
        path, downloaded = fetch_file(artifact, spec, folder, allow_file=allow_file, offline=offline,
                                      retries=retries, report=report)
        (result.downloaded if downloaded else result.cached).append(spec.name)
        result.files.append(path)
        if spec.unpack:
            if report is not None:
                report(f"{spec.name}: unpacking into {target}")
            result.unpacked += unpack.unzip(path, target)
            missing = unpack.first_missing(target, list(spec.expect))
            if missing:
                raise FetchError(f"{path}: unpacked into {target} but {missing} is not there; the archive does "
                                 f"not have the expected layout ({', '.join(spec.expect)}). {artifact.manual}")
            if not keep_archives:
                path.unlink()
    return result


# ---------------------------------------------------------------------------------------------- registry data
def file_spec_from_dict(obj: Mapping[str, Any], where: str, *,
                        expected_keys: Optional[Mapping[str, Sequence[int]]] = None,
                        optional_keys: Sequence[str] = ()) -> FileSpec:
    """A :class:`FileSpec` from registry JSON: ``name``, ``sources`` (list), ``size``, ``sha256``, ``unpack``,
    ``expect``, ``check`` (``"state_dict"``: must read as a checkpoint)."""
    from .sources import parse_source

    if "name" not in obj:
        raise ValueError(f"{where}: a file entry needs 'name'")
    name = str(obj["name"])
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"{where}: file name {name!r} must be a plain file name")
    sha = obj.get("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha)):
        raise ValueError(f"{where}: sha256 of {obj['name']} is not 64 hex digits")
    return FileSpec(name=str(obj["name"]),
                    sources=tuple(parse_source(s, f"{where}/{obj['name']}") for s in obj.get("sources", [])),
                    size=obj.get("size"), sha256=sha, expected_keys=expected_keys,
                    optional_keys=tuple(optional_keys), unpack=bool(obj.get("unpack", False)),
                    expect=tuple(obj.get("expect", ())), state_dict=obj.get("check") == "state_dict")
