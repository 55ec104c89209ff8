"""Reading a download folder: its ``NNNNN.parquet`` files in bounded batches, its tars.

A *download folder* is a shard set as ``ccmb download`` (img2dataset's webdataset writer) leaves it:
``NNNNN.tar`` + ``NNNNN.parquet`` (one row per input row, failures included, in the order the downloads
completed). Every curation step reads it through this module (the parquet batches, the tar paths), so
where the bytes come from is decided here only.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ... import shards as fmt
from ... import storage
from ...types import PathLike
from .dataflow import ROW_ID
from .schema import CurationError

#: Rows per streamed batch unless the caller's memory plan says otherwise.
DEFAULT_BATCH_ROWS = 1 << 18
#: Types of the download columns (the shard format), plus the columns the readers add.
SHARD_COLUMN = "shard"


def column_type(name: str) -> pa.DataType:
    if name == SHARD_COLUMN:
        return pa.string()
    if name == ROW_ID:
        return pa.int64()
    return fmt.PARQUET_SCHEMA.field(name).type if name in fmt.PARQUET_SCHEMA.names else pa.string()


def batch_schema(columns: Sequence[str], with_id: bool = True) -> pa.Schema:
    """The schema of :func:`iter_file_batches`: ``columns`` (without ``shard``), ``shard``, and the row id."""
    names = [c for c in columns if c not in (SHARD_COLUMN, ROW_ID)] + [SHARD_COLUMN] + ([ROW_ID] if with_id else [])
    return pa.schema([pa.field(n, column_type(n)) for n in names])


class DownloadFolder:
    """A download folder, checked: every tar has its parquet and every parquet is readable (a missing or
    damaged one is refused naming it, never skipped: its rows would vanish from every count)."""

    def __init__(self, path: PathLike) -> None:
        self.path = storage.location(path)  # a Path, or a URL string (s3://...)
        not_folder = f"{self.path}: not a folder (expected a download folder with NNNNN.parquet files)"
        try:  # on object storage the listing itself says whether the folder is there (no request more)
            if isinstance(self.path, Path) and not storage.isdir(self.path):
                raise CurationError(not_folder)
            #: name -> bytes of every file in the folder, from its one listing (object storage only)
            self.listing: Optional[Dict[str, int]] = (storage.list_files(self.path) if storage.is_url(self.path)
                                                      else None)
            checked = fmt.checked_shard_parquets(self.path, sizes=self.listing)
        except fmt.ShardFormatError as exc:  # a missing parquet of a tar among them: named
            raise CurationError(str(exc)) from exc
        except FileNotFoundError as exc:
            raise CurationError(not_folder) from exc
        except OSError as exc:
            raise CurationError(str(exc)) from exc
        self.parquets: List[storage.Location] = [p for p, _, _ in checked]
        #: row counts (parquet footers) and byte sizes as checked when the folder was opened
        self._rows = {storage.name(p): rows for p, rows, _ in checked}
        self._bytes = {storage.name(p): size for p, _, size in checked}
        if not self.parquets:
            raise CurationError(f"{self.path}: no NNNNN.parquet files (is it a download folder?)")

    def rows(self) -> int:
        """Rows of the folder from the parquet footers (read once, when the folder was opened and checked)."""
        return sum(self._rows.values())

    def _sizes(self) -> Dict[str, int]:
        if isinstance(self.path, Path):
            return {p.name: p.stat().st_size for p in self.parquets}
        return dict(self._bytes)  # the listing the folder was opened with

    def bytes(self) -> int:
        return sum(self._sizes().values())

    def fingerprint(self) -> str:
        """SHA-1 over the names and byte sizes of the ``NNNNN.parquet`` files (cheap; equal for a copy of the
        folder, different for another download)."""
        h = hashlib.sha1()
        for name, size in sorted(self._sizes().items()):
            h.update(f"{name}\t{size}\n".encode())
        return h.hexdigest()

    def resolved(self) -> str:
        """The folder's absolute path (local) or its URL: how tables and plans name it."""
        return str(self.path.resolve()) if isinstance(self.path, Path) else self.path

    def source(self) -> Dict[str, str]:
        """What a decision table records about the folder it was made from."""
        return {"path": self.resolved(), "fingerprint": self.fingerprint()}

    def tar(self, shard: str) -> storage.Location:
        """The tar of a ``shard`` value (``00012.tar``)."""
        return self.tar_of(self.path, shard)

    @staticmethod
    def tar_of(folder: PathLike, shard: str) -> storage.Location:
        """The tar of a ``shard`` value in ``folder`` (where a worker has only the folder's path or URL)."""
        return storage.join(folder, storage.name(shard))

    def parquet_of(self, shard: str) -> storage.Location:
        return storage.join(self.path, f"{storage.stem(shard)}.parquet")

    def batches(self, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
        for i, p in enumerate(self.parquets):
            yield from iter_file_batches(p, i, columns, batch_rows)


def _normalise(raw: pa.Table, wanted: Sequence[str], path: Path) -> List[pa.ChunkedArray]:
    arrays = []
    for c in wanted:
        typ = column_type(c)
        if c in raw.column_names:
            col = raw.column(c)
            if col.type != typ:
                try:
                    col = col.cast(typ)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise CurationError(f"{path}: column {c!r} is {col.type}, expected {typ}") from exc
        else:
            col = pa.chunked_array([pa.nulls(raw.num_rows, typ)], typ)
        arrays.append(col)
    return arrays


def iter_file_batches(path: PathLike, file_index: int, columns: Sequence[str],
                      batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
    """One parquet of a download folder in tables of at most ``batch_rows`` rows (bounded memory): the
    ``columns`` typed as in the shard format (missing ones null), ``shard`` (the tar's name) and the row id
    (:data:`~ccmb.corpus.tables.dataflow.ROW_ID`). An empty parquet gives one empty table."""
    path = storage.location(path)
    wanted = [c for c in columns if c not in (SHARD_COLUMN, ROW_ID)]
    schema = batch_schema(wanted)
    tar = f"{storage.stem(path)}.tar"
    try:
        with fmt.parquet_source(path) as src:
            yield from _file_batches(pq.ParquetFile(src), path, wanted, schema, tar, file_index, batch_rows)
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc


def _file_batches(pf, path, wanted, schema, tar, file_index, batch_rows) -> Iterator[pa.Table]:
    at = 0
    present = [c for c in wanted if c in pf.schema_arrow.names]
    empty = True
    for batch in pf.iter_batches(batch_size=batch_rows, columns=present):
        empty = False
        n = batch.num_rows
        arrays = _normalise(pa.Table.from_batches([batch]), wanted, path)
        arrays.append(pa.chunked_array([pa.array([tar], pa.string()).take(pa.array(np.zeros(n, np.int32)))]))
        arrays.append(pa.chunked_array([pa.array(np.arange(at, at + n, dtype=np.int64) + (file_index << 32))]))
        at += n
        yield pa.Table.from_arrays(arrays, schema=schema)
    if empty:
        yield schema.empty_table()


def read_file_columns(path: PathLike, columns: Sequence[str]) -> pa.Table:
    """One parquet of a download folder, whole (``columns`` and ``shard``; bounded by the file)."""
    schema = batch_schema(columns, with_id=False)
    tables = [t.select(schema.names) for t in iter_file_batches(path, 0, columns)]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_columns(folder: PathLike, columns: Sequence[str]) -> pa.Table:
    """Whole columns of a (small) download folder in one table, in key order (tests, the demo's report;
    the curation steps stream instead)."""
    f = folder if isinstance(folder, DownloadFolder) else DownloadFolder(folder)
    schema = batch_schema(columns, with_id=False)
    tables = [t.select(schema.names) for t in f.batches(columns)]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table.sort_by([("key", "ascending")]) if table.num_rows else table


def parquet_schema(path: PathLike, columns: Sequence[str]) -> pa.Schema:
    """The schema of ``columns`` of a plain parquet file (a scores file, a plan), errors naming it."""
    try:
        with fmt.parquet_source(storage.location(path)) as src:
            schema = pq.read_schema(src)
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise CurationError(f"{path}: no columns {missing}")
    return pa.schema([schema.field(c).remove_metadata() for c in columns])


def iter_parquet_batches(path: PathLike, columns: Sequence[str], schema: pa.Schema,
                         batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
    """A plain parquet file in batches of ``columns`` (cast to ``schema``), errors naming the file."""
    try:
        with fmt.parquet_source(storage.location(path)) as src:
            pf = pq.ParquetFile(src)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns)):
                yield pa.Table.from_batches([batch]).select(list(columns)).cast(schema)
    except (OSError, pa.ArrowException) as exc:
        raise CurationError(f"{path}: unreadable parquet: {exc}") from exc
