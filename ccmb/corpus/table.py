"""Metadata tables of a download folder and the decision tables that filter/dedup write.

A *download folder* is a shard set as ``ccmb download`` (img2dataset's webdataset writer) leaves it:
``NNNNN.tar`` + ``NNNNN.parquet`` (one row per input row, failures included). The curation steps work on
the parquet metadata only (pHash is the one step that opens images).

A *decision table* (``TABLE.parquet``, :data:`DECISION_SCHEMA`) has one row per input row:
``key``, ``shard`` (the tar the sample lives in), ``keep``, ``reason`` (null when kept) and
``duplicate_of`` (the kept sample a dropped duplicate stands for). ``ccmb build-shards --keep`` takes one
or more of them; a sample is kept when every table keeps it.
"""
from __future__ import annotations

import binascii
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import atomic
from .. import shards as fmt
from ..types import PathLike

logger = logging.getLogger(__name__)


DECISION_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("keep", pa.bool_()),
    pa.field("reason", pa.string()),
    pa.field("duplicate_of", pa.string()),
])

#: Columns of a decision table worth dictionary-encoding in parquet (keys are unique: plain is faster).
DICTIONARY_COLUMNS = ["shard", "reason"]

#: Reason for rows that produced no sample in the download (status != success).
REASON_NOT_DOWNLOADED = "not_downloaded"

ENGINES = ("local", "spark")


class CurationError(ValueError):
    """Bad input to a curation step; the message names the file."""


def list_parquets(input_dir: PathLike) -> List[Path]:
    """The ``NNNNN.parquet`` files of a download folder, in shard order, checked: a tar without its parquet,
    an unreadable parquet, one without the shard columns or with another row count than its
    ``_stats.json`` is refused naming the file (:func:`ccmb.shards.shard_parquets`), never skipped."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise CurationError(f"{input_dir}: not a folder (expected a download folder with NNNNN.parquet files)")
    try:
        paths = fmt.shard_parquets(input_dir)
    except fmt.ShardFormatError as exc:
        raise CurationError(str(exc)) from exc
    if not paths:
        raise CurationError(f"{input_dir}: no NNNNN.parquet files (is it a download folder?)")
    return paths


def _normalise(raw: pa.Table, wanted: Sequence[str], path: Path) -> pa.Table:
    arrays, fields = [], []
    for c in wanted:
        typ = fmt.PARQUET_SCHEMA.field(c).type if c in fmt.PARQUET_SCHEMA.names else pa.string()
        if c in raw.column_names:
            col = raw.column(c)
            if col.type != typ:
                try:
                    col = col.cast(typ)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise CurationError(f"{path}: column {c!r} is {col.type}, expected {typ}") from exc
        else:
            col = pa.chunked_array([pa.nulls(raw.num_rows, typ)])
        arrays.append(col)
        fields.append(pa.field(c, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _with_shard(table: pa.Table, path: Path) -> pa.Table:
    n = table.num_rows
    shard = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([f"{path.stem}.tar"]))
    return table.append_column("shard", shard.cast(pa.string()))


def read_shard_metadata(path: PathLike, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """One shard's parquet normalised to :data:`ccmb.shards.PARQUET_SCHEMA` (missing columns null, types
    cast), plus a ``shard`` column (the tar name). Only ``columns`` are read from disk when given."""
    path = Path(path)
    if columns is None:
        try:
            table = fmt.read_parquet(path)
        except fmt.ShardFormatError as exc:
            raise CurationError(str(exc)) from exc
        except (OSError, pa.ArrowException) as exc:
            raise CurationError(f"{path}: unreadable parquet: {exc}") from exc
        return _with_shard(table, path)
    wanted = [c for c in columns if c != "shard"]
    try:
        names = set(pq.read_schema(path).names)
        raw = pq.read_table(path, columns=[c for c in wanted if c in names])
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc
    return _with_shard(_normalise(raw, wanted, path), path)


def column_has_nulls(path: PathLike, column: str) -> bool:
    """Whether a parquet column may hold nulls, from the row-group statistics (True when unknown/absent)."""
    try:
        meta = pq.ParquetFile(path).metadata
        idx = meta.schema.names.index(column)
    except ValueError:
        return True
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(idx).statistics
        if stats is None or not stats.has_null_count or stats.null_count:
            return True
    return False


def iter_shard_batches(path: PathLike, columns: Sequence[str], batch_rows: int = 1 << 18) -> Iterator[pa.Table]:
    """A shard's parquet in tables of at most ``batch_rows`` rows (bounded memory), normalised like
    :func:`read_shard_metadata`."""
    path = Path(path)
    wanted = [c for c in columns if c != "shard"]
    try:
        pf = pq.ParquetFile(path)
        present = [c for c in wanted if c in pf.schema_arrow.names]
        batches = pf.iter_batches(batch_size=batch_rows, columns=present)
        empty = True
        for batch in batches:
            empty = False
            yield _with_shard(_normalise(pa.Table.from_batches([batch]), wanted, path), path)
        if empty:
            yield _with_shard(_normalise(pf.schema_arrow.empty_table().select(present), wanted, path), path)
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc


def load_metadata(input_dir: PathLike, columns: Optional[Sequence[str]] = None,
                  transform: Optional[Callable[[pa.Table, Path], pa.Table]] = None) -> pa.Table:
    """All parquet rows of a download folder in one table, sorted by key (nulls last).

    ``columns`` limits what is read and kept in memory (``shard`` is always added); ``transform`` is
    applied to each shard's table as it is read (e.g. to pack columns).
    """
    tables = []
    for p in list_parquets(input_dir):
        parts = [read_shard_metadata(p)] if columns is None else iter_shard_batches(p, columns)
        for t in parts:  # batches: the raw columns of one batch at a time, then only the transformed ones
            tables.append(transform(t, p) if transform is not None else t)
    table = pa.concat_tables(tables) if tables else pa.table({})
    table = sort_by_key(table)
    release_memory()
    return table


def release_memory() -> None:
    """Hand memory that pyarrow's pool holds but no longer uses back to the OS (after reading batches the
    pool keeps the readers' buffers; numpy allocates from another heap and cannot reuse them)."""
    pa.default_memory_pool().release_unused()


def sha256_to_binary(column, where: str = "") -> pa.Array:
    """Hex SHA-256 strings as 32-byte binaries (half the memory; hashing is faster). Values that are
    not 64 hex digits become null (logged): they take no part in exact dedup."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    out_type = pa.binary(32)
    if n == 0:
        return pa.array([], out_type)
    lengths = pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False) & (lengths == 64)
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, n + 1, column.offset * 4)
    contiguous = bool(np.all(lengths[~valid] == 0)) if (~valid).any() else True
    if contiguous and data_buf is not None and valid.any():
        lo = int(offsets[0])
        hexes = np.frombuffer(data_buf, np.uint8, 64 * int(valid.sum()), lo).reshape(-1, 64)
    else:  # irregular values: gather row by row (rare)
        rows = [column[i].as_py().encode("ascii", "replace") if valid[i] else None for i in range(n)]
        hexes = np.frombuffer(b"".join(r for r in rows if r is not None), np.uint8).reshape(-1, 64)
    try:  # fast path: every value is valid hex (C speed)
        packed = np.frombuffer(binascii.unhexlify(hexes.tobytes()), np.uint8).reshape(-1, 32)
        good = np.ones(len(packed), bool)
    except (binascii.Error, ValueError):
        nib = _HEX_LUT[hexes]
        good = ~(nib == 255).any(axis=1)
        packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
    rows_valid = np.flatnonzero(valid)
    bad = rows_valid[~good]
    if len(bad):
        logger.warning("%s: %d sha256 values are not 64 hex digits (ignored by exact dedup)", where, len(bad))
        valid[bad] = False
    if len(packed) == n and good.all():
        full = packed
    else:
        full = np.zeros((n, 32), np.uint8)
        full[rows_valid[good]] = packed[good]
    validity = None if valid.all() else pa.array(valid).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(out_type, n, [validity, pa.py_buffer(full)],
                                                null_count=int(n - valid.sum()))


_HEX_LUT = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_LUT[_c] = 10 + _i


def sort_by_key(table: pa.Table) -> pa.Table:
    """Sort rows by ``key`` (string order, nulls last); a no-op when already sorted (the usual case)."""
    keys = table.column("key")
    if table.num_rows < 2:
        return table
    if keys.null_count == 0:
        ordered = pc.all(pc.less_equal(keys.slice(0, len(keys) - 1), keys.slice(1))).as_py()
        if ordered:
            return table
    return table.take(pc.sort_indices(table, sort_keys=[("key", "ascending", "at_end")]))


def check_unique_keys(keys: pa.ChunkedArray, where: str) -> None:
    """Raise when a key occurs twice (``keys`` sorted by :func:`sort_by_key`: an O(n) adjacent check)."""
    non_null = pc.drop_null(keys)
    if len(non_null) < 2:
        return
    same = pc.equal(non_null.slice(0, len(non_null) - 1), non_null.slice(1))
    if pc.any(same).as_py():
        idx = np.flatnonzero(as_numpy_bool(same))[:5]
        dup = sorted({non_null[int(i)].as_py() for i in idx})
        raise CurationError(f"{where}: sample keys are not unique, e.g. {dup}")


# --------------------------------------------------------------------------------- decision tables

@dataclass
class Decisions:
    """Per row of a metadata table: the reason it is dropped (None = kept) and what it duplicates."""

    keys: pa.ChunkedArray
    shards: pa.ChunkedArray
    reasons: pa.Array
    duplicate_of: pa.Array

    def table(self) -> pa.Table:
        keep = pc.is_null(self.reasons)
        return pa.Table.from_arrays(
            [self.keys, self.shards.cast(pa.string()), keep, self.reasons, self.duplicate_of],
            schema=DECISION_SCHEMA)


KEYS_FINGERPRINT = b"ccmb.keys_sha1"


class KeysFingerprint:
    """SHA-1 over a key column's bytes and lengths, fed chunk by chunk (independent of chunking).

    Stored in a decision table's parquet metadata, it lets a later step check that the table lists the
    same keys in the same order as the download without reading the key column back."""

    def __init__(self) -> None:
        self.data = hashlib.sha1()
        self.lengths = hashlib.sha1()

    def update(self, keys) -> "KeysFingerprint":
        chunks = keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]
        for ch in chunks:
            ch = ch.cast(pa.string())
            if not len(ch):
                continue
            _, ob, db = ch.buffers()
            offsets = np.frombuffer(ob, np.int32, len(ch) + 1, ch.offset * 4)
            if db is not None and offsets[-1] > offsets[0]:
                self.data.update(memoryview(db)[int(offsets[0]): int(offsets[-1])])
            lengths = np.diff(offsets).astype("<i4")
            if ch.null_count:
                lengths[~ch.is_valid().to_numpy(zero_copy_only=False)] = -1
            self.lengths.update(lengths.tobytes())
        return self

    def hexdigest(self) -> str:
        return hashlib.sha1(self.data.digest() + self.lengths.digest()).hexdigest()


def keys_fingerprint(keys) -> str:
    return KeysFingerprint().update(keys).hexdigest()


def decision_schema_with(fingerprint: str) -> pa.Schema:
    return DECISION_SCHEMA.with_metadata({KEYS_FINGERPRINT: fingerprint.encode()})


#: Parquet metadata of a decision table: which step wrote it (filter, dedup, decontaminate, ...) and, for
#: decontamination, a JSON document {"against": [...], "report": {...}} (read by build-shards' provenance).
TABLE_KIND = b"ccmb.kind"
TABLE_INFO = b"ccmb.info"


#: Parquet metadata: the download folder a table was made from (JSON {"path", "fingerprint"}).
TABLE_SOURCE = b"ccmb.source"


def write_decisions(path: PathLike, table: pa.Table, kind: Optional[str] = None,
                    info: Optional[str] = None, source: Optional[PathLike] = None, parts: int = 0) -> None:
    """Write a decision table atomically (with the fingerprint of its keys in the parquet metadata, and the
    ``kind`` of step, a JSON ``info`` document and the ``source`` download folder when given).

    ``parts`` > 0 writes the partitioned form (a folder of parts and a marker, :mod:`ccmb.corpus.parts`)."""
    from . import parts as partmod

    table = table.cast(DECISION_SCHEMA)
    fingerprint = keys_fingerprint(table.column("key"))
    src = partmod.source_of(source) if source is not None else None
    if parts:
        partmod.write_local(path, table, parts, kind=kind, info=info, source=src, fingerprint=fingerprint,
                            dictionary_columns=DICTIONARY_COLUMNS)
        return
    meta = {KEYS_FINGERPRINT: fingerprint.encode()}
    if kind:
        meta[TABLE_KIND] = kind.encode()
    if info:
        meta[TABLE_INFO] = info.encode()
    if src:
        meta[TABLE_SOURCE] = json.dumps(src).encode()
    table = table.replace_schema_metadata(meta)
    if Path(path).is_dir():
        partmod.remove_table(path)
    with atomic.atomic_open(path, "wb") as fh:
        pq.write_table(table, fh, use_dictionary=DICTIONARY_COLUMNS, write_statistics=False)


def decision_metadata(path: PathLike) -> Dict[str, Any]:
    """``kind``, ``info`` (str), ``source`` (dict) and ``keys_fingerprint`` of a decision table (file or
    complete folder; None where not recorded)."""
    from . import parts as partmod

    path = Path(path)
    if not path.exists():
        raise CurationError(f"{path}: no such decision table")
    if path.is_dir():
        try:
            doc = partmod.read_marker(path)
        except partmod.PartitionError as exc:
            raise CurationError(str(exc)) from exc
        return {k: doc.get(k) for k in ("kind", "info", "source", "keys_fingerprint")}
    try:  # the footer's key-value metadata: schema metadata and keys added by a streaming writer
        meta = dict(pq.read_metadata(path).metadata or {})
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc
    src = meta.get(TABLE_SOURCE)
    try:
        source = json.loads(src.decode()) if src else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        source = None
    return {"kind": meta.get(TABLE_KIND, b"").decode() or None,
            "info": meta[TABLE_INFO].decode() if meta.get(TABLE_INFO) else None, "source": source,
            "keys_fingerprint": meta[KEYS_FINGERPRINT].decode() if meta.get(KEYS_FINGERPRINT) else None}


def check_source(table_path: PathLike, input_dir: PathLike) -> None:
    """Refuse a decision table made from another download folder (the message names both). Tables that
    record no source (older ones) pass."""
    from . import parts as partmod

    source = decision_metadata(table_path).get("source")
    if not source or not source.get("fingerprint"):
        return
    if source["fingerprint"] != partmod.folder_fingerprint(input_dir):
        raise CurationError(f"{table_path}: decision table of the download folder {source.get('path')}, not of "
                            f"{Path(input_dir).resolve()} (its parquet files differ); rerun the step on this folder")


def _column_names(path: Path) -> List[str]:
    """Column names of a decision table file, or of the first part of a (complete) folder."""
    from . import parts as partmod

    try:
        if path.is_dir():
            first = [path / p["name"] for p in partmod.read_marker(path)["parts"]]
            return pq.read_schema(first[0]).names if first else ["key", "keep"]
        return pq.read_schema(path).names
    except partmod.PartitionError as exc:
        raise CurationError(str(exc)) from exc
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc


def _read_table_any(path: Path, columns: Optional[Sequence[str]] = None,
                    read_dictionary: Optional[Sequence[str]] = None) -> pa.Table:
    """A decision table file or complete folder as one table (errors name the path)."""
    from . import parts as partmod

    if not path.exists():
        raise CurationError(f"{path}: no such decision table")
    try:
        if path.is_dir():
            return partmod.read_parts(path, columns, read_dictionary)
        names = pq.read_schema(path).names
        cols = None if columns is None else [c for c in columns if c in names]
        return pq.read_table(path, columns=cols, read_dictionary=read_dictionary)
    except partmod.PartitionError as exc:
        raise CurationError(str(exc)) from exc
    except FileNotFoundError:
        raise CurationError(f"{path}: no such decision table") from None
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc


def read_decisions(path: PathLike, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """Read a decision table written by ``ccmb filter`` / ``ccmb dedup``; errors name the file.

    ``columns`` reads only those (the result has them in :data:`DECISION_SCHEMA` order)."""
    path = Path(path)
    table = _read_table_any(path, columns)
    missing = [n for n in ("key", "keep") if n not in table.column_names]
    if missing:
        raise CurationError(f"{path}: not a decision table (missing columns {missing})")
    cols = []
    schema = DECISION_SCHEMA if columns is None else pa.schema([f for f in DECISION_SCHEMA if f.name in columns])
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.chunked_array([pa.nulls(table.num_rows, f.type)]))
    return pa.Table.from_arrays(cols, schema=schema)


class ReasonCodes:
    """Per-row reasons as int32 codes (-1 = kept) into a list of names: no per-row strings in memory."""

    def __init__(self, n: int) -> None:
        self.codes = np.full(n, -1, np.int32)
        self.names: List[str] = []

    def code(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def fill(self, rows_or_mask: np.ndarray, name: str) -> None:
        """Set ``name`` where rows are still kept (earlier reasons win)."""
        sel = np.zeros(len(self.codes), bool)
        sel[rows_or_mask] = True
        self.codes[sel & (self.codes < 0)] = self.code(name)

    def set(self, rows: np.ndarray, name: str) -> None:
        self.codes[rows] = self.code(name)

    def merge(self, codes: np.ndarray, names: Sequence[str]) -> None:
        """Take ``codes`` (into ``names``) for rows that are still kept."""
        remap = np.asarray([self.code(nm) for nm in names] + [-1], np.int32)
        take = (self.codes < 0) & (codes >= 0)
        self.codes[take] = remap[codes[take]]

    @property
    def kept(self) -> np.ndarray:
        return self.codes < 0

    def array(self) -> pa.Array:
        """The reasons as a string array (null = kept)."""
        names = pa.array(self.names or [""], pa.string())
        dict_arr = pa.DictionaryArray.from_arrays(pa.array(self.codes, mask=self.codes < 0), names)
        return dict_arr.cast(pa.string())


def _decision_reason_codes(path: PathLike, fingerprint: Optional[str] = None) -> tuple:
    """(keys, codes int32 (-1 kept), names) of a decision table, reasons read dictionary-encoded.

    When the table's stored key fingerprint equals ``fingerprint`` the key column is not read (keys is
    then None: the rows are the caller's keys in the caller's order)."""
    path = Path(path)
    meta = decision_metadata(path)
    names_in = _column_names(path)
    if "key" not in names_in or "keep" not in names_in:
        raise CurationError(f"{path}: not a decision table (missing key/keep columns)")
    stored = meta.get("keys_fingerprint")
    same = fingerprint is not None and stored == fingerprint
    cols = ([] if same else ["key"]) + ["keep"] + (["reason"] if "reason" in names_in else [])
    table = _read_table_any(path, cols, read_dictionary=["reason"] if "reason" in cols else None)
    n = table.num_rows
    keep = as_numpy_bool(table.column("keep"))
    codes = np.full(n, -1, np.int32)
    names: List[str] = []
    if "reason" in cols:
        reason = table.column("reason").unify_dictionaries()
        if reason.num_chunks:
            names = reason.chunk(0).dictionary.cast(pa.string()).to_pylist()
            codes = np.concatenate([pc.fill_null(ch.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
                                    for ch in reason.chunks]) if n else codes
    missing = (~keep) & (codes < 0)
    if missing.any():
        names.append("dropped")
        codes[missing] = len(names) - 1
    codes[keep] = -1
    return (None if same else table.column("key")), codes, names


def prior_reason_codes(keys: pa.ChunkedArray, tables: Sequence[PathLike], into: "ReasonCodes") -> None:
    """Add to ``into`` the reason the first of ``tables`` that drops a key gives.

    A key missing from a table counts as dropped with reason ``not_in:<table file name>``.
    """
    n = len(keys)
    fingerprint = keys_fingerprint(keys)
    for path in tables:
        dec_keys, codes, names = _decision_reason_codes(path, fingerprint)
        if dec_keys is None and len(codes) == n:
            into.merge(codes, names)  # same keys in the same order (stored fingerprint): no key column read
            continue
        if dec_keys is None:
            dec_keys, codes, names = _decision_reason_codes(path)
        if len(dec_keys) == n and dec_keys.equals(keys):
            into.merge(codes, names)  # same rows in the same order (the usual case): no lookup
            continue
        idx = pc.index_in(keys, value_set=dec_keys)
        found = idx.is_valid().to_numpy(zero_copy_only=False)
        pos = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False)
        row_codes = np.where(found, codes[pos] if len(codes) else -1, -1).astype(np.int32)
        into.merge(row_codes, names)
        into.fill(~found, f"not_in:{Path(path).name}")


def prior_reasons(keys: pa.ChunkedArray, tables: Sequence[PathLike]) -> pa.Array:
    """:func:`prior_reason_codes` as a string array (null = every table keeps the key)."""
    rc = ReasonCodes(len(keys))
    prior_reason_codes(keys, tables, rc)
    return rc.array()


@dataclass
class Summary:
    """What a curation step did: rows in, rows kept, drops per reason, where the table went."""

    rows: int = 0
    kept: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)
    output: str = ""
    seconds: float = 0.0

    @staticmethod
    def of(table: pa.Table, output: PathLike = "", seconds: float = 0.0) -> "Summary":
        reasons = pc.drop_null(table.column("reason"))
        counts = pc.value_counts(reasons).to_pylist() if len(reasons) else []
        dropped = {c["values"]: int(c["counts"]) for c in counts}
        dropped = dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])))
        return Summary(rows=table.num_rows, kept=table.num_rows - len(reasons), dropped=dropped,
                       output=str(output), seconds=seconds)

    def lines(self) -> List[str]:
        out = [f"rows {self.rows}, kept {self.kept}, dropped {self.rows - self.kept}"]
        out += [f"  {reason}: {count}" for reason, count in self.dropped.items()]
        return out


def as_numpy_bool(arr: Union[pa.Array, pa.ChunkedArray]) -> np.ndarray:
    """A boolean arrow array as numpy (nulls are False)."""
    arr = pc.fill_null(arr, False)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)
