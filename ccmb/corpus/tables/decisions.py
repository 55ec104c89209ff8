"""Reading decision tables, checked: one ``TABLE.parquet`` file or a folder of parts with its marker.

A folder ``TABLE.parquet/`` holds parts (``part-NNNNN.parquet``, in key order) and the marker
:data:`MARKER`, written last, listing every part with its byte size, row count, SHA-256 and reason counts,
plus the table's kind, info and source (the download folder it was made from). A folder without marker, with
a missing, extra or resized part is a partially written table (a killed job): refused naming the folder. A
part whose bytes no longer hash to the recorded SHA-256 is refused when it is read.

Every reader matches rows by key (never by position); a table whose columns have the wrong types is refused
naming the file and the column (duplicate keys are refused where tables are joined,
:mod:`ccmb.corpus.steps.keep`).
"""
from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from ... import shards as fmt
from ... import storage
from ...types import PathLike
from .folder import DownloadFolder
from .schema import (DECISION_SCHEMA, LEGACY_KEYS_FINGERPRINT, TABLE_COUNTS, TABLE_INFO, TABLE_KIND, TABLE_SOURCE,
                     CurationError)

MARKER = "_ccmb_table.json"
MARKER_VERSION = 2
PART_FORMAT = "part-{:05d}.parquet"
BATCH_ROWS = 1 << 18


class PartitionError(CurationError):
    """A partitioned table is incomplete or damaged (the message names the folder or part)."""


def part_files(folder: PathLike) -> List[storage.Location]:
    """The parquet files of a partitioned table folder, by name (``_``/``.`` files are not parts)."""
    return [storage.join(folder, n) for n in _part_sizes(folder)]


def _part_sizes(folder: PathLike) -> Dict[str, int]:
    return {n: size for n, size in storage.list_files(folder).items()
            if n.endswith(".parquet") and not n.startswith(("_", "."))}


def read_marker(folder: PathLike, check_parts: bool = True) -> Dict[str, Any]:
    """The marker of a complete partitioned table; :class:`PartitionError` when the folder is partial."""
    return read_marker_and_fingerprint(folder, check_parts)[0]


def read_marker_and_fingerprint(folder: PathLike, check_parts: bool = True) -> Tuple[Dict[str, Any], str]:
    """:func:`read_marker` and the folder's :func:`table_fingerprint`, from one read of the marker."""
    folder = storage.location(folder)
    marker = storage.join(folder, MARKER)
    hint = "the job that wrote it did not finish; rerun the step (it replaces the folder)"
    try:
        raw = storage.read_bytes(marker)
        doc = json.loads(raw.decode("utf-8"))
        parts = doc["parts"]
    except FileNotFoundError:
        raise PartitionError(f"{folder}: partially written decision table (no {MARKER}: {hint})") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PartitionError(f"{marker}: unreadable marker ({exc}): {hint}") from exc
    if check_parts:
        listed = {p["name"] for p in parts}
        sizes = _part_sizes(folder)
        found = set(sizes)
        if listed != found:
            missing, extra = sorted(listed - found), sorted(found - listed)
            raise PartitionError(f"{folder}: parts differ from {MARKER} (missing {missing[:3]}, not listed "
                                 f"{extra[:3]}): {hint}")
        for p in parts:
            size = sizes[p["name"]]
            if size != p["bytes"]:
                raise PartitionError(f"{storage.join(folder, p['name'])}: {size} bytes, {MARKER} says {p['bytes']}: {hint}")
    return doc, "sha256:" + fmt.sha256_bytes(raw)


@dataclass
class DecisionTable:
    """A decision table opened for reading: its metadata and its parts (a file is one part without a
    recorded checksum)."""

    path: Any  # a Path, or a URL string
    kind: Optional[str] = None
    info: Optional[str] = None
    source: Optional[Dict[str, Any]] = None
    counts: Optional[Dict[str, int]] = None
    rows: Optional[int] = None
    parts: List[Tuple[Path, Optional[str], Optional[int]]] = field(default_factory=list)  # (path, sha256, rows)
    columns: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return storage.name(self.path)

    @property
    def resolved(self) -> str:
        """The absolute path (local) or the URL of the table: how provenance names it."""
        return str(self.path.resolve()) if isinstance(self.path, Path) else str(self.path)

    def metadata(self) -> Dict[str, Any]:
        return {"kind": self.kind, "info": self.info, "source": self.source, "counts": self.counts}


def _is_table_folder(path: PathLike) -> bool:
    """Whether a decision table is a folder (else a file). Within a read cache on object storage its first bytes
    (as :func:`ccmb.shards.parquet_source` asks for them) are asked for first: a small table file answers in
    that one request, kept for the reads that follow; a folder's missing key costs one request before the
    listing. Elsewhere a listing and a check, which read no bytes twice."""
    if storage.is_url(path) and storage.caching():
        try:
            if storage.first_bytes(path, storage.RANDOM_BLOCK) is not None:
                return False
        except FileNotFoundError:
            pass
    return storage.is_folder(path, "decision table")


def open_table(path: PathLike) -> DecisionTable:
    """Open a decision table (file or complete folder), checking that it is one: key and keep columns of the
    right types; errors name the file."""
    path = storage.location(path)
    try:
        is_dir = _is_table_folder(path)
    except OSError as exc:
        raise CurationError(str(exc)) from exc
    if is_dir:
        doc = read_marker(path)
        parts = [(storage.join(path, p["name"]), p.get("sha256"), p.get("rows")) for p in doc["parts"]]
        counts: Optional[Dict[str, int]] = None
        if all("reasons" in p for p in doc["parts"]):
            counts = {}
            for p in doc["parts"]:
                for r, n in p["reasons"].items():
                    counts[r] = counts.get(r, 0) + int(n)
        table = DecisionTable(path, doc.get("kind"), doc.get("info"), doc.get("source"), counts, doc.get("rows"),
                              parts)
        schema = _schema(parts[0][0]) if parts else DECISION_SCHEMA
    else:
        try:
            with fmt.parquet_source(path) as src:
                meta = pq.read_metadata(src)
            kv = dict(meta.metadata or {})
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as exc:
            raise CurationError(f"{path}: unreadable parquet: {exc}") from exc
        table = DecisionTable(path, kind=kv.get(TABLE_KIND, b"").decode() or None,
                              info=kv[TABLE_INFO].decode() if kv.get(TABLE_INFO) else None,
                              source=_json(kv.get(TABLE_SOURCE)), counts=_json(kv.get(TABLE_COUNTS)),
                              rows=meta.num_rows, parts=[(path, None, meta.num_rows)])
    table.columns = list(schema.names)
    check_schema(schema, path)
    return table


def _json(raw: Optional[bytes]):
    if not raw:
        return None
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _schema(path: PathLike) -> pa.Schema:
    try:
        with fmt.parquet_source(path) as src:
            return pq.read_schema(src)
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc


def _type_ok(have: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_dictionary(have):
        have = have.value_type
    if pa.types.is_string(want):
        return pa.types.is_string(have) or pa.types.is_large_string(have) or pa.types.is_null(have)
    return have.equals(want) or pa.types.is_null(have)


def check_schema(schema: pa.Schema, path: PathLike) -> None:
    """Refuse a table without key/keep columns or with a decision column of the wrong type, naming it."""
    missing = [n for n in ("key", "keep") if n not in schema.names]
    if missing:
        raise CurationError(f"{path}: not a decision table (missing columns {missing})")
    for f in DECISION_SCHEMA:
        if f.name in schema.names and not _type_ok(schema.field(f.name).type, f.type):
            raise CurationError(f"{path}: column {f.name!r} is {schema.field(f.name).type}, expected {f.type} "
                                "(not a decision table written by ccmb)")


def _check_part(path: PathLike, sha256: Optional[str], data: Optional[bytes] = None) -> None:
    if sha256 is None:
        return
    got = fmt.sha256_bytes(data) if data is not None else fmt.sha256_file(path)
    if got != sha256:
        raise PartitionError(f"{path}: SHA-256 {got[:16]}... differs from {MARKER} ({sha256[:16]}...): the part "
                             "changed after the table was written; rerun the step that wrote it")


#: Small parts read from object storage in this process, by (URL, recorded SHA-256), checked against it when
#: read: a shard job of ``build-shards`` reads the plan part its rows are in, and the next job of the same
#: process the same part (bounded: :data:`CHECKED_PARTS_BYTES`).
_CHECKED_PARTS: "OrderedDict[Tuple[str, str], bytes]" = OrderedDict()
CHECKED_PARTS_BYTES = 64 << 20


def _remember_part(path: str, sha256: str, data: Optional[bytes]) -> None:
    if data is None or len(data) > CHECKED_PARTS_BYTES // 4:
        return
    _CHECKED_PARTS[(path, sha256)] = data
    while sum(len(v) for v in _CHECKED_PARTS.values()) > CHECKED_PARTS_BYTES:
        _CHECKED_PARTS.popitem(last=False)


def iter_part_batches(path: PathLike, sha256: Optional[str], columns: Sequence[str],
                      batch_rows: int = BATCH_ROWS, rows: Optional[int] = None,
                      schema: pa.Schema = DECISION_SCHEMA, size: Optional[int] = None) -> Iterator[pa.Table]:
    """One part of a decision table (or of another table of parts: ``schema``) in batches of ``columns``
    typed as in ``schema`` (absent optional columns null), checked against its recorded SHA-256 first.
    ``size``: its byte size when the caller knows it (saves a request on object storage)."""
    path = storage.location(path)
    data = None
    if storage.is_url(path) and sha256 is not None:  # a small part on object storage: one read, hashed and parsed
        data = _CHECKED_PARTS.get((path, sha256))
        if data is None and size is not None and size <= fmt.SMALL_PARQUET:
            data = storage.read_small(path, fmt.SMALL_PARQUET)[0]  # one GET (none in a read_cache block)
        elif data is None:
            with storage.open_read(path, size=size) as fh:
                data = fh.read() if fh.size <= fmt.SMALL_PARQUET else None
        if (path, sha256) not in _CHECKED_PARTS:
            _check_part(path, sha256, data)
            _remember_part(path, sha256, data)
    else:
        _check_part(path, sha256, data)
    want = [schema.field(c) for c in columns]
    seen = 0
    try:
        with (contextlib.nullcontext(pa.BufferReader(data)) if data is not None else fmt.parquet_source(path)) as src:
            for t in _part_tables(pq.ParquetFile(src), path, want, schema, batch_rows):
                seen += t.num_rows
                yield t
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc
    if rows is not None and seen != rows:
        raise PartitionError(f"{path}: {seen} rows, {MARKER} says {rows}")


def _part_tables(pf, path, want, schema, batch_rows) -> Iterator[pa.Table]:
    if schema is DECISION_SCHEMA:
        check_schema(pf.schema_arrow, path)
    present = [f.name for f in want if f.name in pf.schema_arrow.names]
    for batch in pf.iter_batches(batch_size=batch_rows, columns=present):
        cols = []
        for f in want:
            if f.name in present:
                col = batch.column(f.name)
                if pa.types.is_dictionary(col.type):
                    col = col.dictionary_decode()
                cols.append(col.cast(f.type) if not col.type.equals(f.type) else col)
            else:
                cols.append(pa.nulls(batch.num_rows, f.type))
        yield pa.Table.from_arrays(cols, schema=pa.schema(want))


def iter_batches(table: DecisionTable, columns: Sequence[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    for path, sha, rows in table.parts:
        yield from iter_part_batches(path, sha, columns, batch_rows, rows)


def read_decisions(path: PathLike, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """A whole decision table (file or complete folder) in memory, columns typed as :data:`DECISION_SCHEMA`
    (tests and small tables; the steps stream it)."""
    table = open_table(path)
    columns = list(columns) if columns is not None else DECISION_SCHEMA.names
    columns = [c for c in DECISION_SCHEMA.names if c in columns]
    schema = pa.schema([DECISION_SCHEMA.field(c) for c in columns])
    parts = list(iter_batches(table, columns))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def decision_metadata(path: PathLike) -> Dict[str, Any]:
    """``kind``, ``info`` (str), ``source`` (dict) and ``counts`` of a decision table (None where not recorded)."""
    return open_table(path).metadata()


def is_decision_table_file(path: PathLike) -> bool:
    """Whether ``path`` is a parquet file a ccmb step wrote (it carries the table metadata)."""
    try:
        with fmt.parquet_source(storage.location(path)) as src:
            kv = dict(pq.read_metadata(src).metadata or {})
    except (OSError, pa.ArrowException):
        return False
    return TABLE_KIND in kv or LEGACY_KEYS_FINGERPRINT in kv


def is_table_entry(name: str) -> bool:
    """Whether ``name`` is something a table folder's writers put there (parts, marker, Spark's files)."""
    return (name == MARKER or name.endswith(".parquet") or name.startswith(("_SUCCESS", "._SUCCESS", ".ccmb-"))
            or (name.startswith(".") and name.endswith(".crc")))


def is_decision_table_folder(path: PathLike) -> bool:
    return storage.isdir(path) and all(is_table_entry(n) for n in storage.listdir(path))


def table_fingerprint(path: PathLike) -> str:
    """A content fingerprint of a decision table: SHA-256 of the file, or of the marker (which lists the
    SHA-256 of every part) for a folder."""
    return "sha256:" + fmt.sha256_file(storage.join(path, MARKER) if storage.isdir(path) else path)


def check_source(table: DecisionTable, folder: DownloadFolder) -> None:
    """Refuse a decision table made from another download folder (the message names both). Tables that
    record no source (older ones) pass."""
    source = table.source
    if not source or not source.get("fingerprint"):
        return
    if source["fingerprint"] != folder.fingerprint():
        raise CurationError(f"{table.path}: decision table of the download folder {source.get('path')}, not of "
                            f"{folder.resolved()} (its parquet files differ); rerun the step on this folder")
