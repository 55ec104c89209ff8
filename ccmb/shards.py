"""The ccmb shard format, defined once.

A shard set is a folder of webdataset tars, compatible with img2dataset's ``webdataset`` output, so
open_clip and webdataset read it unchanged::

    00000.tar            {key}.jpg  {key}.txt (primary text)  {key}.json (all metadata)
    00000.parquet        one row per *input* row, failures included (status, error_message)
    00000_stats.json     counts for the shard; written last: its presence marks the shard finished
    sizes.json           {"00000.tar": n_samples, ...}       (finished shard sets; read by open_clip)
    manifest.json        per shard: samples, bytes, sha256; plus command and ccmb version

Keys are digits only (webdataset splits a member name at its first dot). Every file is written
atomically (temporary name, fsync, rename; on object storage an upload published whole): a killed writer
never leaves a truncated ``NNNNN.tar``. A shard set may live in a local folder or at any fsspec URL
(``s3://bucket/shards``): every file operation goes through :mod:`ccmb.storage`.
:func:`sample_from_members` is the one place that turns tar members into a sample (every reader calls
it); :func:`check_parquet` / :func:`shard_parquets` the one check every reader of the parquets goes
through. Verification: :mod:`ccmb.shardverify`. See ``docs/formats.md``.
"""
from __future__ import annotations

import contextlib
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
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, storage
from .safejson import loads_bounded
from .types import PathLike

logger = logging.getLogger(__name__)


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
    "md5": pa.string(),
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

#: Columns every shard parquet must have (the others are optional: missing ones read as nulls).
PARQUET_REQUIRED = ("key", "status")

#: The Zero texts of a sample (``{key}.json`` fields), in the order a reader falls back to them.
TEXT_FIELDS = ("title", "content", "query")
TEXT_MEMBER = "txt"
META_MEMBER = "json"
#: Image member extensions, in the order a reader prefers them when a sample has several.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
#: Largest ``{key}.json`` member a reader parses (bounded depth too: :func:`ccmb.safejson.loads_bounded`).
MAX_META_BYTES = 16 << 20


class ShardFormatError(ValueError):
    """A shard set or one of its files does not follow the format; the message names the file."""


class MissingShardFileError(ShardFormatError, FileNotFoundError):
    """A file the shard set needs (a tar's parquet, a manifest) is not there; the message names it."""


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
        return {k: self.meta[k] for k in TEXT_FIELDS if self.meta.get(k)}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_bytes(data: bytes) -> str:
    """MD5 of the stored bytes: not for integrity (sha256 is), for matching the MD5 hash lists used to audit
    web datasets (``--blocklist``)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (local path or URL), streamed."""
    return storage.sha256(path, chunk)


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

    Use as a context manager. Samples go to a temporary tar (an unpublished upload on object storage,
    :class:`ccmb.storage.AtomicFile`); failures are rows of the parquet only. On a clean exit the shard's old
    ``_stats.json`` is removed (unless the caller knows there is none: ``replaces=False``), then the parquet and
    the tar are published (together: one round trip on object storage), then the new stats file (with the
    caller's ``record``, e.g. ``build-shards``' resume record, in the same round trip); on an
    exception (or a kill) nothing named ``NNNNN.*`` appears and the temporaries are removed or left as
    ``.NNNNN.tar.tmp-*`` / an unfinished upload (cleaned by :func:`ccmb.storage.remove_stale_temporaries`).
    ``output_dir`` is a local folder or an fsspec URL.
    """

    def __init__(self, output_dir: PathLike, shard_index: int, *, source: str = "",
                 mtime: Optional[float] = None, extra_columns: Sequence[str] = (), replaces: bool = True,
                 record: Optional[Tuple[PathLike, Dict[str, Any]]] = None, publisher: Any = None) -> None:
        self.output_dir = storage.location(output_dir)
        #: False when the caller knows no ``_stats.json`` of this shard is there (its listing): no delete first
        self.replaces = replaces
        #: (path, fields): a JSON record published with the stats file, the tar's entry merged into the fields
        self.record = record
        #: an executor (one thread) that publishes the finished shard while the caller goes on; the caller
        #: waits for ``published`` (a future) before it counts the shard as written
        self.publisher = publisher
        self.published: Any = None
        storage.makedirs(self.output_dir)
        self.shard_index = shard_index
        self.name = shard_name(shard_index)
        self.source = source
        #: further (string) parquet columns kept after the schema's, e.g. an input list's own columns
        self.extra_columns = [c for c in extra_columns if c not in PARQUET_SCHEMA.names]
        self.rows: List[Dict[str, Any]] = []
        self.keys: set = set()
        self.successes = 0
        self._out: Optional[storage.AtomicFile] = None
        self.entry: Optional[Dict[str, Any]] = None
        self._tar: Optional[tarfile.TarFile] = None
        self._start = time.time()
        # tar member mtimes; a fixed value (e.g. 0) makes the same samples give byte-identical tars
        self._mtime = time.time() if mtime is None else mtime

    @property
    def tar_path(self) -> storage.Location:
        return storage.join(self.output_dir, f"{self.name}.tar")

    def __enter__(self) -> "ShardWriter":
        self._out = storage.AtomicFile(self.tar_path, digest=True)
        self._tar = tarfile.open(fileobj=self._out, mode="w", format=tarfile.USTAR_FORMAT)
        return self

    def _add(self, name: str, data: bytes) -> None:
        assert self._tar is not None, "use ShardWriter as a context manager"
        self._tar.addfile(_tarinfo(name, len(data), self._mtime), io.BytesIO(data))

    def write(self, key: str, image: bytes, text: str, meta: Optional[Dict[str, Any]] = None,
              image_ext: str = "jpg") -> None:
        """Add a successful sample. ``meta`` holds the metadata fields (key, sha256, md5, source are filled in)."""
        check_key(key)
        if key in self.keys:
            raise ValueError(f"duplicate key {key} in shard {self.name}")
        meta = dict(meta or {})
        meta["key"] = key
        meta.setdefault("sha256", sha256_bytes(image))
        meta.setdefault("md5", md5_bytes(image))
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
        assert self._tar is not None and self._out is not None
        try:
            self._tar.close()  # the end-of-archive blocks; the tar itself is not published yet
            if exc_type is not None:
                self._out.abort()
                return
            parquet_path = storage.join(self.output_dir, f"{self.name}.parquet")
            parquet, written = _parquet_file(parquet_path, self.rows, self.extra_columns)
        except BaseException:
            self._out.abort()
            raise
        entry = {"samples": self.successes, "bytes": self._out.size, "sha256": self._out.sha256}
        files = {storage.join(self.output_dir, f"{self.name}_stats.json"):
                 storage.json_bytes(self.stats(entry, {"rows": len(self.rows), **written}))}
        if self.record is not None:
            files[storage.location(self.record[0])] = storage.json_bytes({**entry, **self.record[1]})
        if self.publisher is None:
            self._publish(parquet, files)
        else:  # the caller goes on with its next shard while this one's files travel
            self.published = self.publisher.submit(self._publish, parquet, files)
        self.entry = entry  # the tar's manifest entry, as shard_entry() would read it back

    def _publish(self, parquet: storage.AtomicFile, files: Dict[storage.Location, bytes]) -> None:
        """The old stats file goes, the parquet and the tar appear, then the new stats file (the marker)."""
        assert self._out is not None
        try:
            stats_path = next(iter(files))
            if self.replaces:
                storage.remove(stats_path)  # a rewritten shard counts as unfinished until its new stats exist
            storage.publish_together([parquet, self._out])  # the two in one round trip on object storage
        finally:
            parquet.abort()  # nothing after a publish; else the temporaries go
            self._out.abort()
        storage.write_many(files)  # the stats file last of the shard's own files (its completeness marker)

    def stats(self, tar_entry: Optional[Dict[str, Any]] = None,
              parquet: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The ``_stats.json`` content; ``tar_entry`` (samples, bytes, sha256) is recorded under ``ccmb.tar``,
        ``parquet`` (rows, bytes, sha256: :func:`parquet_entry`) under ``ccmb.parquet``."""
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
            **({"ccmb": {"tar": tar_entry, "format_version": FORMAT_VERSION,
                         **({"parquet": parquet} if parquet else {})}} if tar_entry else {}),
        }


def write_parquet(path: PathLike, rows: Sequence[Dict[str, Any]], extra_columns: Sequence[str] = ()
                  ) -> Dict[str, Any]:
    """Write rows under :data:`PARQUET_SCHEMA` plus ``extra_columns`` (strings) atomically; other keys are
    dropped, missing ones null. Returns ``{"bytes", "sha256"}`` of the file written."""
    fh, written = _parquet_file(path, rows, extra_columns)
    try:
        fh.publish()
    finally:
        fh.abort()
    return written


def _parquet_file(path: PathLike, rows: Sequence[Dict[str, Any]], extra_columns: Sequence[str] = ()
                  ) -> Tuple[storage.AtomicFile, Dict[str, Any]]:
    """The shard parquet of ``rows`` written, not yet published, and its ``{"bytes", "sha256"}``."""
    schema = pa.schema(list(PARQUET_SCHEMA) + [pa.field(c, pa.string()) for c in extra_columns
                                               if c not in PARQUET_SCHEMA.names])
    table = pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)
    fh = storage.AtomicFile(path, digest=True)
    try:
        pq.write_table(table, fh)
    except BaseException:
        fh.abort()
        raise
    return fh, {"bytes": fh.size, "sha256": fh.sha256}


def parquet_entry(path: PathLike, rows: int) -> Dict[str, Any]:
    """What ``_stats.json`` records of a shard's parquet (``ccmb.parquet``): rows, bytes, sha256."""
    return {"rows": int(rows), "bytes": storage.size(path), "sha256": sha256_file(path)}


def stats_path_of(path: PathLike) -> storage.Location:
    """``NNNNN_stats.json`` of the shard a ``NNNNN.tar`` / ``NNNNN.parquet`` belongs to."""
    return storage.sibling(path, f"{storage.stem(path)}_stats.json")


def read_shard_stats(path: PathLike) -> Optional[Dict[str, Any]]:
    """A shard's ``_stats.json`` (given any file of the shard); None when the shard has none."""
    stats_path = stats_path_of(path)
    try:
        stats = json.loads(storage.read_bytes(stats_path).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ShardFormatError(f"{stats_path}: unreadable: {exc}") from exc
    if not isinstance(stats, dict):
        raise ShardFormatError(f"{stats_path}: not a JSON object")
    return stats


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_null(actual):
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    return actual == expected


def parquet_schema_problems(schema: pa.Schema) -> List[str]:
    """Why a parquet schema is not a shard's: a required column missing, a schema column of another type."""
    problems = [f"no {c!r} column" for c in PARQUET_REQUIRED if c not in schema.names]
    for f in PARQUET_SCHEMA:
        if f.name in schema.names and not _type_ok(schema.field(f.name).type, f.type):
            problems.append(f"column {f.name!r} is {schema.field(f.name).type}, expected {f.type}")
    return problems


#: A parquet on object storage up to this size is fetched whole by one request when opened.
SMALL_PARQUET = 16 << 20


@contextlib.contextmanager
def parquet_source(path: PathLike) -> Iterator[Any]:
    """What pyarrow reads a parquet from: the local path itself, or an open file of a URL (closed after)."""
    if storage.is_url(path):
        first = storage.first_bytes(path, storage.RANDOM_BLOCK)  # S3: a small file whole by one request
        if first is not None and len(first[0]) >= first[1]:
            yield pa.BufferReader(first[0])
            return
        with storage.open_read(path, size=first[1] if first else None) as fh:
            if fh.size <= SMALL_PARQUET:  # one GET instead of one per footer / column chunk
                if first is not None:
                    fh.seek(len(first[0]))
                yield pa.BufferReader((first[0] if first else b"") + fh.read())
            else:
                yield fh
    else:
        yield path


def parquet_footer_check(path: PathLike) -> Tuple[Optional[int], List[str]]:
    """(row count, or None when the file is missing/unreadable/not a shard's; the problems found)."""
    path = storage.location(path)
    missing = f"{path}: missing (the shard's rows, failures included, live there)"
    if isinstance(path, Path) and not path.is_file():
        return None, [missing]
    try:
        with parquet_source(path) as src:
            meta = pq.ParquetFile(src)
            schema, rows = meta.schema_arrow, meta.metadata.num_rows
    except FileNotFoundError:
        return None, [missing]
    except (pa.ArrowException, OSError) as exc:
        return None, [f"{path}: unreadable parquet: {exc}"]
    problems = parquet_schema_problems(schema)
    if problems:
        return None, [f"{path}: not a shard parquet: {'; '.join(problems)}"]
    try:
        stats = read_shard_stats(path)
    except ShardFormatError as exc:
        return rows, [str(exc)]
    if stats is not None and isinstance(stats.get("count"), int) and stats["count"] != rows:
        return rows, [f"{path}: {rows} rows, {storage.name(stats_path_of(path))} says {stats['count']}"]
    return rows, []


def check_parquet(path: PathLike) -> int:
    """Check what is cheap to check of a shard's parquet; returns its row count.

    The file is there, its footer reads, its schema is a shard's (:func:`parquet_schema_problems`) and its
    row count is the ``count`` of the shard's ``_stats.json`` (when the shard has one). Raises
    :class:`ShardFormatError` (:class:`MissingShardFileError` when absent) naming the file.
    """
    path = storage.location(path)
    rows, problems = parquet_footer_check(path)
    if problems:
        raise (MissingShardFileError if not storage.isfile(path) else ShardFormatError)(problems[0])
    assert rows is not None
    return rows


def read_parquet(path: PathLike, columns: Optional[Sequence[str]] = None, *, check: bool = True) -> pa.Table:
    """Read a shard's parquet, checked (:func:`check_parquet`; ``check=False`` skips that); columns of the
    schema that are missing are added as nulls, types cast.

    ``columns`` limits the read to those columns (schema columns absent from the file come back null).
    """
    if check:
        check_parquet(path)
    schema = PARQUET_SCHEMA if columns is None else pa.schema([f for f in PARQUET_SCHEMA if f.name in columns])
    try:
        with parquet_source(path) as src:
            if columns is not None:
                present = set(pq.read_schema(src).names)
                table = pq.read_table(src, columns=[c for c in columns if c in present])
            else:
                table = pq.read_table(src)
    except FileNotFoundError as exc:
        raise MissingShardFileError(f"{path}: missing") from exc
    except (pa.ArrowException, OSError) as exc:
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


def expects_parquets(folder: PathLike) -> bool:
    """Whether a folder's tars come with parquets: any ``NNNNN.parquet`` or ``NNNNN_stats.json`` there
    (every ccmb and img2dataset writer leaves both). A folder of bare tars (a foreign webdataset set) does not."""
    for n in storage.listdir(folder):
        if _is_shard_parquet(n) or (n.endswith("_stats.json") and SHARD_NAME_RE.match(n[: -len("_stats.json")] + ".tar")):
            return True
    return False


def _is_shard_parquet(file_name: str) -> bool:
    return file_name.endswith(".parquet") and bool(SHARD_NAME_RE.match(file_name[: -len(".parquet")] + ".tar"))


#: Shards whose parquet and stats file :func:`checked_shard_parquets` reads at once on object storage
PREFETCH_SHARDS = 16


def shard_parquets(folder: PathLike) -> List[storage.Location]:
    """The ``NNNNN.parquet`` files of a shard folder (download folder or shard set), each checked with
    :func:`check_parquet`, in shard order. A tar without its parquet is refused (naming the missing files),
    never skipped: its rows would silently disappear from every count."""
    return [p for p, _, _ in checked_shard_parquets(folder)]


def checked_shard_parquets(folder: PathLike, sizes: Optional[Dict[str, int]] = None
                           ) -> List[Tuple[storage.Location, int, int]]:
    """(path, row count, bytes) of each ``NNNNN.parquet`` of a shard folder, checked as :func:`shard_parquets`
    does (one listing and the checks' reads; the counts and sizes spare a caller more requests). ``sizes``: the
    folder's :func:`ccmb.storage.list_files` when the caller has just listed it (object storage)."""
    folder = storage.location(folder)
    if sizes is None:
        sizes = storage.list_files(folder) if storage.is_url(folder) else None
    names = sorted(sizes) if sizes is not None else storage.listdir(folder)
    parquets = [storage.join(folder, n) for n in names if _is_shard_parquet(n)]
    have = {storage.stem(p) for p in parquets}
    missing = [storage.join(folder, f"{n[:-len('.tar')]}.parquet") for n in names
               if SHARD_NAME_RE.match(n) and n[:-len(".tar")] not in have]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MissingShardFileError(f"{', '.join(str(p) for p in missing[:5])}{more}: missing (the tar is there; "
                                    f"the shard's rows, failures included, live in its parquet)")
    out = []
    for at in range(0, len(parquets), PREFETCH_SHARDS):
        batch = parquets[at:at + PREFETCH_SHARDS]
        # on object storage the batch's parquets and stats files are read concurrently (one round trip)
        ahead = [] if sizes is None else [f for p in batch for f in (p, stats_path_of(p))
                                          if storage.name(f) in sizes]
        with storage.prefetch(ahead):
            for p in batch:
                try:
                    rows = check_parquet(p)
                except ShardFormatError as exc:
                    if not storage.exists(stats_path_of(p)):  # the usual cause: a download killed mid-shard
                        raise ShardFormatError(f"{exc} ({storage.name(stats_path_of(p))} is missing too: an unfinished "
                                               f"shard; rerun the same `ccmb download` to finish it)") from exc
                    raise
                out.append((p, rows, sizes[storage.name(p)] if sizes is not None else storage.size(p)))
    return out


# --------------------------------------------------------------------------------------------- reading

def list_shards(path: Union[PathLike, Sequence[PathLike]]) -> List[storage.Location]:
    """Tars of a shard set: a folder (``NNNNN.tar`` inside), a single tar, a list, or a brace pattern; local
    (``Path`` results) or at an fsspec URL (``str`` results, e.g. ``s3://bucket/shards/00000.tar``)."""
    if isinstance(path, (list, tuple)):
        return [storage.location(p) for p in path]
    text = str(path)
    if "{" in text and ".." in text:
        return [storage.location(p) for p in expand_braces(text)]
    p = storage.location(text)
    if storage.is_url(p):  # one listing answers "is it a folder" on object storage
        with contextlib.suppress(FileNotFoundError):
            names = storage.listdir(p)
            if names:
                return [storage.join(p, n) for n in names if SHARD_NAME_RE.match(n)]
    elif storage.isdir(p):
        return [storage.join(p, n) for n in storage.listdir(p) if SHARD_NAME_RE.match(n)]
    if storage.isfile(p):
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


_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def split_member_name(name: str) -> Tuple[Optional[str], str]:
    """``(key, extension)`` of a tar member, grouped the way webdataset groups them: the key is the name up
    to the first dot of its last path component, the extension the rest, lower-cased (``00001.JPG`` ->
    ``("00001", "jpg")``). ``(None, "")`` for a name without an extension (not part of any sample)."""
    m = _MEMBER_RE.match(name)
    if not m:
        return None, ""
    return m.group(1), m.group(2).lower()


def unsafe_member_reason(member: tarfile.TarInfo) -> Optional[str]:
    """Why a tar member would be dangerous to extract by name (readers never do; ``verify`` reports it):
    an absolute name, a ``..`` component, a link, a device or FIFO. None for a plain, relative member."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' in the path"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "not a regular file"
    return None


def sample_text(meta: Mapping[str, Any]) -> str:
    """The primary text of a sample without a ``.txt`` member: its ``caption``, else the first non-empty
    of :data:`TEXT_FIELDS`, else ``""``."""
    for f in ("caption",) + TEXT_FIELDS:
        value = meta.get(f)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def member_exts_used(exts: Iterable[str]) -> List[str]:
    """Of a sample's member extensions, those :func:`sample_from_members` reads (the image, txt, json);
    lets a reader by offset skip the others."""
    exts = set(exts)
    image = next((e for e in IMAGE_EXTS if e in exts), None)
    return [e for e in (image, TEXT_MEMBER, META_MEMBER) if e is not None and e in exts]


def sample_from_members(key: str, members: Mapping[str, bytes], source: str = "") -> Sample:
    """THE sample of the format, from its tar members (``extension -> bytes``, extensions lower-case).

    * image: the first of :data:`IMAGE_EXTS` present (none: :class:`ShardFormatError`);
    * meta: ``{key}.json`` parsed with bounded size and depth, a JSON object (absent: ``{}``);
    * text: ``{key}.txt`` (UTF-8) when present, else :func:`sample_text` of the meta.

    Other members are ignored. Every reader (``iter_tar_samples``, ``build-shards``' reader by offset, the
    trainer's webdataset pipeline) calls this, so they agree on every odd tar. Errors name ``source:key``.
    """
    where = f"{source}: sample {key}" if source else f"sample {key}"
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        raise ShardFormatError(f"{where} has no image member (.{', .'.join(IMAGE_EXTS)})")
    meta: Dict[str, Any] = {}
    if META_MEMBER in members:
        try:
            meta = loads_bounded(members[META_MEMBER].decode("utf-8"), max_bytes=MAX_META_BYTES)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ShardFormatError(f"{where}: {key}.json is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise ShardFormatError(f"{where}: {key}.json is not a JSON object")
    if TEXT_MEMBER in members:
        try:
            text = members[TEXT_MEMBER].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ShardFormatError(f"{where}: {key}.txt is not UTF-8: {exc}") from exc
    else:
        text = sample_text(meta)
    return Sample(key=key, image=members[ext], text=text, meta=meta, image_ext=ext, shard=source)


def iter_tar_members(tar_path: PathLike, on_member: Optional[Callable[[tarfile.TarInfo], None]] = None, *,
                     fileobj: Optional[IO[bytes]] = None) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """``(key, {extension: bytes})`` of each run of members with one key (never extracted to disk).

    Regular files only; ``on_member`` sees every member first (``verify`` checks the names there). A key
    with the same extension twice raises :class:`ShardFormatError`, as webdataset does. ``fileobj``: read the
    tar from this open stream instead (``tar_path`` then only names it in errors).
    """
    tar_path = storage.location(tar_path)
    current: Optional[str] = None
    parts: Dict[str, bytes] = {}
    try:
        with (tarfile.open(fileobj=fileobj, mode="r|*") if fileobj is not None else open_tar(tar_path, "r|*")) as tar:
            for member in tar:
                if on_member is not None:
                    on_member(member)
                if not member.isfile():
                    continue
                key, ext = split_member_name(member.name)
                if key is None:
                    continue
                if key != current:
                    if current is not None:
                        yield current, parts
                    current, parts = key, {}
                if ext in parts:
                    raise ShardFormatError(f"{tar_path}: sample {key} has two .{ext} members ({member.name})")
                fh = tar.extractfile(member)
                parts[ext] = fh.read() if fh is not None else b""
    except tarfile.TarError as exc:
        raise ShardFormatError(f"{tar_path}: unreadable tar: {exc}") from exc
    if current is not None:
        yield current, parts


def iter_tar_samples(tar_path: PathLike) -> Iterator[Sample]:
    """Stream the samples of one tar (:func:`sample_from_members` of each key's members)."""
    for key, parts in iter_tar_members(tar_path):
        yield sample_from_members(key, parts, source=str(tar_path))


def iter_samples(path: Union[PathLike, Sequence[PathLike]]) -> Iterator[Sample]:
    """Iterate every sample of a shard set, shard by shard, in order."""
    for tar_path in list_shards(path):
        yield from iter_tar_samples(tar_path)


@contextlib.contextmanager
def open_tar(tar_path: PathLike, mode: str = "r|*", size: Optional[int] = None) -> Iterator[tarfile.TarFile]:
    """A tar of a local path or URL opened for reading (``r|*`` streams it, ``r:`` seeks over headers);
    ``size``: its byte size when a listing just gave it (saves a request on object storage)."""
    if storage.is_url(tar_path):
        with storage.open_read(tar_path, block_size=storage.STREAM_BLOCK, size=size) as fh, \
                tarfile.open(fileobj=fh, mode=mode) as tar:
            yield tar
    else:
        with tarfile.open(tar_path, mode=mode) as tar:
            yield tar


def _count_members(members: Iterable[tarfile.TarInfo]) -> int:
    keys = set()
    for member in members:
        key, ext = split_member_name(member.name)
        if member.isfile() and key is not None and ext in IMAGE_EXTS:
            keys.add(key)
    return len(keys)


def count_tar_samples(tar_path: PathLike) -> int:
    """Number of samples (distinct keys with an image) in a tar, reading headers only."""
    try:
        with open_tar(tar_path, "r:") as tar:
            return _count_members(tar.getmembers())
    except tarfile.TarError as exc:
        raise ShardFormatError(f"{tar_path}: unreadable tar: {exc}") from exc


class HashingReader(io.RawIOBase):
    """Reads a file through, hashing every byte (one pass for a tar's samples and its checksum); ``drain()``
    reads what is left, then ``hash`` / ``size`` cover the whole file."""

    def __init__(self, fh: Any) -> None:
        super().__init__()
        self.fh, self.hash, self.size = fh, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.fh.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.hash.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


# ------------------------------------------------------------------------------------ finished sets

def finished_shards(output_dir: PathLike) -> List[str]:
    """Names (``NNNNN``) of shards whose writer finished (tar and ``_stats.json`` both present)."""
    names = set(storage.listdir(output_dir))
    return [n[: -len("_stats.json")] for n in sorted(names)
            if n.endswith("_stats.json") and f"{n[: -len('_stats.json')]}.tar" in names]


def shard_entry(tar_path: PathLike) -> Dict[str, Any]:
    """``{samples, bytes, sha256}`` of a tar (``manifest.json``'s entry); one streamed read on object storage."""
    if not storage.is_url(tar_path):
        tar_path = Path(tar_path)
        return {
            "samples": count_tar_samples(tar_path),
            "bytes": tar_path.stat().st_size,
            "sha256": sha256_file(tar_path),
        }
    with storage.open_read(tar_path, block_size=storage.STREAM_BLOCK) as fh:
        reader = HashingReader(fh)
        try:
            with tarfile.open(fileobj=io.BufferedReader(reader, 1 << 20), mode="r|") as tar:
                samples = _count_members(tar)
        except tarfile.TarError as exc:
            raise ShardFormatError(f"{tar_path}: unreadable tar: {exc}") from exc
        reader.drain()
    return {"samples": samples, "bytes": reader.size, "sha256": reader.hash.hexdigest()}


def finalize_shard_set(output_dir: PathLike, command: Optional[str] = None,
                       extra: Optional[Dict[str, Any]] = None,
                       known: Optional[Dict[str, Dict[str, Any]]] = None,
                       tars: Optional[Sequence[storage.Location]] = None) -> Dict[str, Any]:
    """Write ``sizes.json`` and ``manifest.json`` for every ``NNNNN.tar`` in ``output_dir``.

    ``known`` maps tar names to entries already computed (skips re-hashing); they are trusted. ``tars``: the
    folder's :func:`list_shards` when the caller has just listed it. Returns the manifest.
    """
    output_dir = storage.location(output_dir)
    shards: Dict[str, Dict[str, Any]] = {}
    for tar_path in (list_shards(output_dir) if tars is None else tars):
        entry = (known or {}).get(storage.name(tar_path)) or shard_entry(tar_path)
        shards[storage.name(tar_path)] = entry
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
    storage.write_json(storage.join(output_dir, SIZES_FILE), {name: e["samples"] for name, e in shards.items()})
    storage.write_json(storage.join(output_dir, MANIFEST_FILE), manifest)
    return manifest


#: ``manifest.json`` / ``sizes.json`` are read bounded: a larger or deeper file is not ours
MAX_MANIFEST_BYTES = 256 << 20
MAX_MANIFEST_DEPTH = 32


def _read_small_json(path: PathLike, missing: str) -> Any:
    """A bounded JSON file (size, depth, UTF-8), a local path or a URL; every problem is a
    :class:`ShardFormatError` naming it."""
    from .boundedio import read_regular

    try:
        if storage.is_url(path):
            raw = storage.read_bytes(path, max_bytes=MAX_MANIFEST_BYTES)
        else:
            raw = read_regular(Path(path), max_bytes=MAX_MANIFEST_BYTES, what="shard-set file",
                               error=ShardFormatError)
        return loads_bounded(raw.decode("utf-8"), max_depth=MAX_MANIFEST_DEPTH, max_bytes=MAX_MANIFEST_BYTES)
    except ShardFormatError:
        raise
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: {missing}") from None
    except OSError as exc:
        raise ShardFormatError(f"{path}: unreadable: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ShardFormatError(f"{path}: not JSON (binary data: not UTF-8 at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ShardFormatError(f"{path}: invalid JSON: {exc}") from None
    except ValueError as exc:
        raise ShardFormatError(f"{path}: invalid JSON: {exc}") from None


def read_manifest(shard_dir: PathLike) -> Dict[str, Any]:
    """``manifest.json`` of a finished shard set, checked to be a JSON object whose ``shards`` is an object of
    entries (a :class:`ShardFormatError` naming the file otherwise)."""
    path = storage.join(shard_dir, MANIFEST_FILE)
    doc = _read_small_json(path, "missing (not a finished shard set: finish it with `ccmb build-shards`, a rerun "
                                 "of `ccmb download`, or `ccmb shards finalize`)")
    if not isinstance(doc, dict):
        raise ShardFormatError(f"{path}: not a manifest (a JSON {type(doc).__name__}, not an object)")
    shards = doc.get("shards", {})
    if not isinstance(shards, dict) or not all(isinstance(v, dict) for v in shards.values()):
        raise ShardFormatError(f"{path}: 'shards' must map tar names to entries")
    return doc


def read_sizes(shard_dir: PathLike) -> Dict[str, int]:
    path = storage.join(shard_dir, SIZES_FILE)
    doc = _read_small_json(path, "missing")
    try:
        return {str(k): int(v) for k, v in doc.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ShardFormatError(f"{path}: invalid: {exc}") from exc


_VERIFY_NAMES = ("VerifyReport", "verify_shard_set", "parquet_problems", "CROSS_CHECKED_FIELDS")


def __getattr__(name: str) -> Any:
    """Verification lives in :mod:`ccmb.shardverify` (it imports this module); re-exported here lazily."""
    if name in _VERIFY_NAMES:
        from . import shardverify

        return getattr(shardverify, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
