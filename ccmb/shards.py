"""The ccmb shard format, defined once.

A shard set is a folder of webdataset tars, compatible with img2dataset's ``webdataset`` output, so
open_clip and webdataset read it unchanged::

    00000.tar            {key}.jpg  {key}.txt (primary text)  {key}.json (all metadata)
    00000.parquet        one row per *input* row, failures included (status, error_message)
    00000_stats.json     counts for the shard; written last: its presence marks the shard finished
    sizes.json           {"00000.tar": n_samples, ...}       (finished shard sets; read by open_clip)
    manifest.json        per shard: samples, bytes, sha256; plus command and ccmb version

Keys are digits only (webdataset splits a member name at its first dot). Every file is written
atomically (temporary name, fsync, rename): a killed writer never leaves a truncated ``NNNNN.tar``.
See ``docs/formats.md``.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, atomic

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

SHARD_DIGITS = 5
SHARD_NAME_RE = re.compile(r"^(\d{5,})\.tar$")
KEY_RE = re.compile(r"^\d+$")

SIZES_FILE = "sizes.json"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

#: Metadata fields of a sample (the ``{key}.json`` member and the parquet columns), in order.
#: Producers may add further fields (img2dataset adds ``caption``, ``exif`` ...); readers keep them.
METADATA_FIELDS: Dict[str, pa.DataType] = {
    "key": pa.string(),
    "url": pa.string(),
    "title": pa.string(),
    "content": pa.string(),
    "query": pa.string(),
    "keywords": pa.string(),
    "image_key": pa.string(),
    "page_url": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "original_width": pa.int32(),
    "original_height": pa.int32(),
    "sha256": pa.string(),
    "source": pa.string(),
}

#: Columns of ``NNNNN.parquet``: the metadata, the primary text, and the outcome of the row.
PARQUET_SCHEMA = pa.schema(
    [pa.field(name, typ) for name, typ in METADATA_FIELDS.items()]
    + [
        pa.field("caption", pa.string()),
        pa.field("status", pa.string()),  # "success" or "failed_to_download" / "failed_to_resize" / ...
        pa.field("error_message", pa.string()),
    ]
)

STATUS_SUCCESS = "success"
STATUS_FAILED_INPUT = "failed_input"  # refused before download (bad record, non-http URL, duplicate id ...)


class ShardFormatError(ValueError):
    """A shard set or one of its files does not follow the format; the message names the file."""


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_DIGITS}d}"


def make_key(shard_index: int, sample_index: int, samples_per_shard: int) -> str:
    """img2dataset's key layout: zero-padded shard index followed by the zero-padded row index."""
    if sample_index >= samples_per_shard:
        raise ValueError(f"sample index {sample_index} >= samples_per_shard {samples_per_shard}")
    width = max(1, math.ceil(math.log10(samples_per_shard))) if samples_per_shard > 1 else 1
    return f"{shard_index:0{SHARD_DIGITS}d}{sample_index:0{width}d}"


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise ValueError(f"sample key must be digits only (webdataset splits at the first dot): {key!r}")
    return key


@dataclass
class Sample:
    """One image-text sample of a shard set."""

    key: str
    image: bytes
    text: str
    meta: Dict[str, Any] = field(default_factory=dict)
    image_ext: str = "jpg"
    shard: str = ""  # tar path it was read from (set by readers)

    def texts(self) -> Dict[str, str]:
        """The non-empty Zero texts of the sample: title, content, query."""
        return {k: self.meta[k] for k in ("title", "content", "query") if self.meta.get(k)}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def normalize_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A parquet row with every schema column (missing optional fields become None)."""
    out = {name: row.get(name) for name in PARQUET_SCHEMA.names}
    return out


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o444
    info.uname = info.gname = "ccmb"
    return info


class ShardWriter:
    """Writes one shard (``NNNNN.tar`` + ``.parquet`` + ``_stats.json``) atomically.

    Use as a context manager. Samples go to a temporary tar; failures are rows of the parquet only.
    On a clean exit the parquet, then the tar, then the stats file are renamed into place; on an
    exception (or a kill) nothing named ``NNNNN.*`` appears and the temporaries are removed or left
    as ``.NNNNN.tar.tmp-*`` (cleaned by :func:`atomic.remove_stale_temporaries`).
    """

    def __init__(self, output_dir: PathLike, shard_index: int, *, source: str = "",
                 mtime: Optional[float] = None, extra_columns: Sequence[str] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.shard_index = shard_index
        self.name = shard_name(shard_index)
        self.source = source
        #: further (string) parquet columns kept after the schema's, e.g. an input list's own columns
        self.extra_columns = [c for c in extra_columns if c not in PARQUET_SCHEMA.names]
        self.rows: List[Dict[str, Any]] = []
        self.keys: set = set()
        self.successes = 0
        self._tmp_tar: Optional[Path] = None
        self._tar: Optional[tarfile.TarFile] = None
        self._fh = None
        self._start = time.time()
        # tar member mtimes; a fixed value (e.g. 0) makes the same samples give byte-identical tars
        self._mtime = time.time() if mtime is None else mtime

    @property
    def tar_path(self) -> Path:
        return self.output_dir / f"{self.name}.tar"

    def __enter__(self) -> "ShardWriter":
        self._tmp_tar = atomic.temp_path_for(self.tar_path)
        self._fh = open(self._tmp_tar, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)
        return self

    def _add(self, name: str, data: bytes) -> None:
        assert self._tar is not None, "use ShardWriter as a context manager"
        self._tar.addfile(_tarinfo(name, len(data), self._mtime), io.BytesIO(data))

    def write(self, key: str, image: bytes, text: str, meta: Optional[Dict[str, Any]] = None,
              image_ext: str = "jpg") -> None:
        """Add a successful sample. ``meta`` holds the metadata fields (key, sha256, source are filled in)."""
        check_key(key)
        if key in self.keys:
            raise ValueError(f"duplicate key {key} in shard {self.name}")
        meta = dict(meta or {})
        meta["key"] = key
        meta.setdefault("sha256", sha256_bytes(image))
        if self.source and not meta.get("source"):
            meta["source"] = self.source
        meta.setdefault("caption", text)
        self._add(f"{key}.{image_ext}", image)
        self._add(f"{key}.txt", (text or "").encode("utf-8"))
        self._add(f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        self.keys.add(key)
        self.successes += 1
        row = dict(meta)
        row.update(status=STATUS_SUCCESS, error_message=None)
        self.rows.append(row)

    def write_failure(self, meta: Dict[str, Any], status: str, error_message: str) -> None:
        """Record an input row that produced no sample, with the reason."""
        row = dict(meta)
        if self.source and not row.get("source"):
            row["source"] = self.source
        row.update(status=status, error_message=str(error_message))
        self.rows.append(row)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tar is not None and self._fh is not None and self._tmp_tar is not None
        try:
            self._tar.close()
            self._fh.close()
        finally:
            if exc_type is not None:
                self._tmp_tar.unlink(missing_ok=True)
        if exc_type is not None:
            return
        stats_path = self.output_dir / f"{self.name}_stats.json"
        stats_path.unlink(missing_ok=True)  # a rewritten shard counts as unfinished until its new stats exist
        write_parquet(self.output_dir / f"{self.name}.parquet", self.rows, extra_columns=self.extra_columns)
        entry = {"samples": self.successes, "bytes": self._tmp_tar.stat().st_size,
                 "sha256": sha256_file(self._tmp_tar)}
        atomic.commit(self._tmp_tar, self.tar_path)
        atomic.write_json(stats_path, self.stats(entry))

    def stats(self, tar_entry: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The ``_stats.json`` content; ``tar_entry`` (samples, bytes, sha256) is recorded under ``ccmb.tar``."""
        failures: Dict[str, int] = {}
        for r in self.rows:
            if r.get("status") != STATUS_SUCCESS:
                reason = str(r.get("error_message") or r.get("status"))
                failures[reason] = failures.get(reason, 0) + 1
        return {
            "count": len(self.rows),
            "successes": self.successes,
            "failed_to_download": sum(1 for r in self.rows if r.get("status") == "failed_to_download"),
            "failed_to_resize": sum(1 for r in self.rows if r.get("status") == "failed_to_resize"),
            "failed_input": sum(1 for r in self.rows if r.get("status") == STATUS_FAILED_INPUT),
            "status_dict": failures,
            "start_time": self._start,
            "end_time": time.time(),
            "ccmb_version": __version__,
            **({"ccmb": {"tar": tar_entry, "format_version": FORMAT_VERSION}} if tar_entry else {}),
        }


def write_parquet(path: PathLike, rows: Sequence[Dict[str, Any]], extra_columns: Sequence[str] = ()) -> None:
    """Write rows under :data:`PARQUET_SCHEMA` plus ``extra_columns`` (strings) atomically; other keys are
    dropped, missing ones null."""
    schema = pa.schema(list(PARQUET_SCHEMA) + [pa.field(c, pa.string()) for c in extra_columns
                                               if c not in PARQUET_SCHEMA.names])
    table = pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)
    with atomic.atomic_open(path, "wb") as fh:
        pq.write_table(table, fh)


def read_parquet(path: PathLike, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """Read a shard's parquet; columns of the schema that are missing are added as nulls, types cast.

    ``columns`` limits the read to those columns (schema columns absent from the file come back null).
    """
    schema = PARQUET_SCHEMA if columns is None else pa.schema([f for f in PARQUET_SCHEMA if f.name in columns])
    try:
        if columns is not None:
            present = set(pq.read_schema(path).names)
            table = pq.read_table(path, columns=[c for c in columns if c in present])
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ShardFormatError(f"{path}: unreadable parquet: {exc}") from exc
    columns_out = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ShardFormatError(f"{path}: column {f.name!r} is {col.type}, expected {f.type}") from exc
            columns_out.append(col)
        else:
            columns_out.append(pa.nulls(table.num_rows, f.type))
    extra = [n for n in table.column_names if n not in schema.names]
    out = pa.Table.from_arrays(columns_out, schema=schema)
    for n in extra:
        out = out.append_column(n, table.column(n))
    return out


# --------------------------------------------------------------------------------------------- reading

def list_shards(path: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """Tars of a shard set: a folder (``NNNNN.tar`` inside), a single tar, a list, or a brace pattern."""
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    text = str(path)
    if "{" in text and ".." in text:
        return [Path(p) for p in expand_braces(text)]
    p = Path(text)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if SHARD_NAME_RE.match(q.name))
    if p.is_file():
        return [p]
    raise FileNotFoundError(f"no shard set at {p}")


def expand_braces(pattern: str) -> List[str]:
    """Expand webdataset/brace patterns like ``dir/{00000..00012}.tar``."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    out: List[str] = []
    for i in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[: m.start()] + f"{i:0{width}d}" + pattern[m.end():]))
    return out


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def iter_tar_samples(tar_path: PathLike) -> Iterator[Sample]:
    """Stream the samples of one tar (members grouped by key, never extracted to disk)."""
    tar_path = Path(tar_path)
    current: Optional[str] = None
    parts: Dict[str, bytes] = {}

    def flush() -> Optional[Sample]:
        if current is None:
            return None
        ext = next((e for e in IMAGE_EXTS if e in parts), None)
        if ext is None:
            raise ShardFormatError(f"{tar_path}: sample {current} has no image member")
        meta: Dict[str, Any] = {}
        if "json" in parts:
            try:
                meta = json.loads(parts["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ShardFormatError(f"{tar_path}: {current}.json is not valid JSON: {exc}") from exc
        text = parts["txt"].decode("utf-8") if "txt" in parts else meta.get("caption") or ""
        return Sample(key=current, image=parts[ext], text=text, meta=meta, image_ext=ext, shard=str(tar_path))

    try:
        with tarfile.open(tar_path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if key != current:
                    sample = flush()
                    if sample is not None:
                        yield sample
                    current, parts = key, {}
                fh = tar.extractfile(member)
                parts[ext.lower()] = fh.read() if fh is not None else b""
    except tarfile.TarError as exc:
        raise ShardFormatError(f"{tar_path}: unreadable tar: {exc}") from exc
    sample = flush()
    if sample is not None:
        yield sample


def iter_samples(path: Union[PathLike, Sequence[PathLike]]) -> Iterator[Sample]:
    """Iterate every sample of a shard set, shard by shard, in order."""
    for tar_path in list_shards(path):
        yield from iter_tar_samples(tar_path)


def count_tar_samples(tar_path: PathLike) -> int:
    """Number of samples (distinct keys with an image) in a tar, reading headers only."""
    keys = set()
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if member.isfile() and ext.lower() in IMAGE_EXTS:
                    keys.add(key)
    except tarfile.TarError as exc:
        raise ShardFormatError(f"{tar_path}: unreadable tar: {exc}") from exc
    return len(keys)


# ------------------------------------------------------------------------------------ finished sets

def finished_shards(output_dir: PathLike) -> List[str]:
    """Names (``NNNNN``) of shards whose writer finished (tar and ``_stats.json`` both present)."""
    out = []
    for p in sorted(Path(output_dir).glob("*_stats.json")):
        name = p.name[: -len("_stats.json")]
        if (p.parent / f"{name}.tar").exists():
            out.append(name)
    return out


def shard_entry(tar_path: PathLike) -> Dict[str, Any]:
    tar_path = Path(tar_path)
    return {
        "samples": count_tar_samples(tar_path),
        "bytes": tar_path.stat().st_size,
        "sha256": sha256_file(tar_path),
    }


def finalize_shard_set(output_dir: PathLike, command: Optional[str] = None,
                       extra: Optional[Dict[str, Any]] = None,
                       known: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Write ``sizes.json`` and ``manifest.json`` for every ``NNNNN.tar`` in ``output_dir``.

    ``known`` maps tar names to entries already computed (skips re-hashing); they are trusted.
    Returns the manifest.
    """
    output_dir = Path(output_dir)
    shards: Dict[str, Dict[str, Any]] = {}
    for tar_path in list_shards(output_dir):
        entry = (known or {}).get(tar_path.name) or shard_entry(tar_path)
        shards[tar_path.name] = entry
    manifest = {
        "format": "ccmb-shards",
        "format_version": FORMAT_VERSION,
        "ccmb_version": __version__,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "total_samples": sum(e["samples"] for e in shards.values()),
        "total_bytes": sum(e["bytes"] for e in shards.values()),
        "shards": shards,
    }
    if extra:
        manifest.update(extra)
    atomic.write_json(output_dir / SIZES_FILE, {name: e["samples"] for name, e in shards.items()})
    atomic.write_json(output_dir / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(shard_dir: PathLike) -> Dict[str, Any]:
    path = Path(shard_dir) / MANIFEST_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: missing (not a finished shard set; run `ccmb build-shards`)") from None
    except json.JSONDecodeError as exc:
        raise ShardFormatError(f"{path}: invalid JSON: {exc}") from exc


def read_sizes(shard_dir: PathLike) -> Dict[str, int]:
    path = Path(shard_dir) / SIZES_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            return {str(k): int(v) for k, v in json.load(fh).items()}
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: missing") from None
    except (json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise ShardFormatError(f"{path}: invalid: {exc}") from exc


@dataclass
class VerifyReport:
    shards_checked: int = 0
    samples: int = 0
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shard_set(shard_dir: PathLike, *, decode_images: bool = True,
                     progress: bool = False) -> VerifyReport:
    """Check a finished shard set against its manifest and sizes: checksums, counts, every image.

    Every problem is reported (not just the first), each naming the shard.
    """
    from .images import ImageDecodeError, decode_image

    shard_dir = Path(shard_dir)
    report = VerifyReport()
    try:
        manifest = read_manifest(shard_dir)
    except ShardFormatError as exc:
        report.problems.append(str(exc))
        return report
    try:
        sizes = read_sizes(shard_dir)
    except ShardFormatError as exc:
        report.problems.append(str(exc))
        sizes = {}
    entries: Dict[str, Dict[str, Any]] = manifest.get("shards", {})
    on_disk = {p.name for p in list_shards(shard_dir)}
    for name in sorted(on_disk - set(entries)):
        report.problems.append(f"{shard_dir / name}: not listed in {MANIFEST_FILE}")
    for name in sorted(set(sizes) ^ set(entries)):
        report.problems.append(f"{shard_dir / SIZES_FILE}: {name} listed in only one of sizes.json/manifest.json")

    names = sorted(entries)
    iterator: Iterable[str] = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="verify", unit="shard")
    for name in iterator:
        entry = entries[name]
        path = shard_dir / name
        report.shards_checked += 1
        if not path.exists():
            report.problems.append(f"{path}: missing")
            continue
        if sha256_file(path) != entry.get("sha256"):
            report.problems.append(f"{path}: sha256 differs from {MANIFEST_FILE}")
        keys = set()
        try:
            for s in iter_tar_samples(path):
                if s.key in keys:
                    report.problems.append(f"{path}: duplicate key {s.key}")
                keys.add(s.key)
                if decode_images:
                    try:
                        decode_image(s.image, mode=None, source=f"{path}:{s.key}.{s.image_ext}")
                    except ImageDecodeError as exc:
                        report.problems.append(str(exc))
        except ShardFormatError as exc:
            report.problems.append(str(exc))
        report.samples += len(keys)
        if len(keys) != entry.get("samples"):
            report.problems.append(f"{path}: {len(keys)} samples, {MANIFEST_FILE} says {entry.get('samples')}")
        if name in sizes and sizes[name] != len(keys):
            report.problems.append(f"{path}: {len(keys)} samples, {SIZES_FILE} says {sizes[name]}")
    return report
