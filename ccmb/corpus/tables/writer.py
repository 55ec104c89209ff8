"""The one decision-table writer (and the output rules every table follows).

Both engines write through it: a key-sorted stream of Arrow tables becomes one parquet file (footer
metadata: kind, info, source, reason counts) or a folder of parts plus the marker (written last; each part
with its bytes, rows, SHA-256 and reason counts). Parts may be written where the data is (a Spark task calls
:func:`write_part`) and published by :func:`publish_parts`; the in-process engine uses :class:`TableWriter`,
which calls the same two. Publication is atomic: a file through a temporary and a rename, a folder by
renaming a complete sibling folder over the old table.

Outputs follow :mod:`ccmb.outdir`: never inside the download folder (or another input), never over a file or
folder that is not a ccmb decision table, one writer at a time (:func:`table_lock`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ... import atomic, outdir
from ... import shards as fmt
from ...types import PathLike
from .decisions import (MARKER, MARKER_VERSION, PART_FORMAT, is_decision_table_file, is_decision_table_folder)
from .folder import DownloadFolder
from .schema import (DECISION_SCHEMA, DICTIONARY_COLUMNS, TABLE_COUNTS, TABLE_INFO, TABLE_KIND, TABLE_SOURCE,
                     CurationError)

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a curation step did: rows in, rows kept, drops per reason, where the table went."""

    rows: int = 0
    kept: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)
    output: str = ""
    seconds: float = 0.0

    @staticmethod
    def of_counts(rows: int, counts: Dict[str, int], output: PathLike = "", seconds: float = 0.0) -> "Summary":
        dropped = dict(sorted(((k, int(v)) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0])))
        return Summary(rows=rows, kept=rows - sum(dropped.values()), dropped=dropped, output=str(output),
                       seconds=seconds)

    @staticmethod
    def of(table: pa.Table, output: PathLike = "", seconds: float = 0.0) -> "Summary":
        return Summary.of_counts(table.num_rows, reason_counts(table), output, seconds)

    def lines(self) -> List[str]:
        out = [f"rows {self.rows}, kept {self.kept}, dropped {self.rows - self.kept}"]
        out += [f"  {reason}: {count}" for reason, count in self.dropped.items()]
        return out


def reason_counts(table: pa.Table) -> Dict[str, int]:
    """Rows per non-null ``reason`` of a table (none when it has no reason column)."""
    if "reason" not in table.column_names or not table.num_rows:
        return {}
    reasons = pc.drop_null(table.column("reason"))
    if not len(reasons):
        return {}
    return {str(c["values"]): int(c["counts"]) for c in pc.value_counts(reasons).to_pylist()}


def _add(into: Dict[str, int], counts: Dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


# ------------------------------------------------------------------------------------------------- output rules

def check_output(path: PathLike, inputs: Sequence[Optional[PathLike]] = ()) -> Path:
    """Refuse an output table inside an input folder, or one that would replace something ccmb did not write
    (a folder or file that is not a decision table); returns the path."""
    path = Path(path)
    outdir.refuse_inside(path, inputs)
    if path.is_dir() and not is_decision_table_folder(path):
        foreign = sorted(p.name for p in path.iterdir())
        raise CurationError(f"{path}: is a folder but not a decision table (it holds {foreign[0]!r}); refusing to "
                            "replace it: choose another --output")
    if path.is_file() and not is_decision_table_file(path):
        raise CurationError(f"{path}: exists and is not a decision table written by ccmb; refusing to replace it: "
                            "choose another --output")
    return path


def table_lock(path: PathLike, command: Optional[str] = None) -> outdir.FolderLock:
    """The lock a run holds on an output table while it writes it (a second run is refused naming the holder)."""
    path = Path(path)
    return outdir.FolderLock(path.parent, command, lock_name=f".{path.name}{outdir.LOCK_FILE}")


def remove_table(path: PathLike) -> None:
    """Remove an old decision table (file or folder, complete or partial) before publishing a new one."""
    path = Path(path)
    if path.is_dir():
        if not is_decision_table_folder(path):
            raise CurationError(f"{path}: is a folder but not a decision table; refusing to replace it")
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ------------------------------------------------------------------------------------------------- parts

class PartWriter:
    """One parquet file of a table from a stream of tables: rows and reason counts as it goes; its manifest
    entry (name, bytes, rows, SHA-256, reasons) on close."""

    def __init__(self, path: PathLike, schema: pa.Schema = DECISION_SCHEMA,
                 dictionary_columns: Sequence[str] = DICTIONARY_COLUMNS, sink=None) -> None:
        self.path = Path(path)
        self.schema = schema
        self.rows = 0
        self.counts: Dict[str, int] = {}
        dictionary = [c for c in dictionary_columns if c in schema.names]
        self.writer = pq.ParquetWriter(sink if sink is not None else str(self.path), schema,
                                       use_dictionary=dictionary, write_statistics=["key"] if "key" in schema.names
                                       else False)

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.select(self.schema.names).cast(self.schema)
        self.rows += table.num_rows
        _add(self.counts, reason_counts(table))
        self.writer.write_table(table)

    def close(self, metadata: Optional[Dict[bytes, bytes]] = None) -> Dict[str, Any]:
        if metadata:
            self.writer.add_key_value_metadata({k.decode(): v.decode() for k, v in metadata.items()})
        self.writer.close()
        return {"name": self.path.name, "rows": self.rows, "reasons": self.counts}


def part_entry(path: PathLike, rows: int, reasons: Dict[str, int]) -> Dict[str, Any]:
    path = Path(path)
    return {"name": path.name, "bytes": path.stat().st_size, "rows": int(rows), "sha256": fmt.sha256_file(path),
            "reasons": dict(reasons)}


def write_part(folder: PathLike, index: int, tables: Iterable[pa.Table],
               schema: pa.Schema = DECISION_SCHEMA) -> Optional[Dict[str, Any]]:
    """Write part ``index`` of a table folder from a sorted stream (where the data is: a worker or a Spark
    task); returns its marker entry, or None when the stream was empty (no file)."""
    path = Path(folder) / PART_FORMAT.format(index)
    writer = None
    try:
        for t in tables:
            if not t.num_rows:
                continue
            if writer is None:
                writer = PartWriter(path, schema)
            writer.write(t)
    except BaseException:
        if writer is not None:
            writer.writer.close()
            path.unlink(missing_ok=True)
        raise
    if writer is None:
        return None
    info = writer.close()
    return part_entry(path, info["rows"], info["reasons"])


def temp_folder(final: PathLike) -> Path:
    """A fresh sibling folder to write parts into (a leftover of a killed job is removed first)."""
    final = Path(final)
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        logger.warning("%s: removing a partially written table of an earlier run", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_parts(tmp: PathLike, final: PathLike, entries: Sequence[Optional[Dict[str, Any]]], *,
                  kind: Optional[str], info: Optional[str], source: Optional[Dict[str, Any]]) -> Summary:
    """Write the marker (last) into ``tmp`` and move it over ``final``; the summary from the entries' counts."""
    tmp, final = Path(tmp), Path(final)
    entries = sorted((e for e in entries if e), key=lambda e: e["name"])
    for junk in tmp.iterdir():  # Spark's own _SUCCESS and .crc files, anything that is not a listed part
        if junk.name not in {e["name"] for e in entries}:
            shutil.rmtree(junk) if junk.is_dir() else junk.unlink()
    rows = int(sum(e["rows"] for e in entries))
    doc = {"version": MARKER_VERSION, "kind": kind, "info": info, "source": source, "rows": rows,
           "parts": list(entries)}
    atomic.write_json(tmp / MARKER, doc)
    remove_table(final)
    os.replace(tmp, final)
    counts: Dict[str, int] = {}
    for e in entries:
        _add(counts, e.get("reasons", {}))
    return Summary.of_counts(rows, counts, final)


class TableWriter:
    """The in-process writer: feed key-sorted tables, get the summary on :meth:`close` (one file when
    ``parts`` is 0, else a folder of ``parts`` parts cut by row counts of ``total_rows``)."""

    def __init__(self, path: PathLike, *, kind: Optional[str], info: Optional[str] = None,
                 source: Optional[Dict[str, Any]] = None, parts: int = 0, total_rows: Optional[int] = None,
                 schema: pa.Schema = DECISION_SCHEMA) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.kind, self.info, self.source, self.schema = kind, info, source, schema
        self.parts = max(0, int(parts))
        self.total = total_rows
        self.rows = 0
        self.counts: Dict[str, int] = {}
        self.entries: List[Dict[str, Any]] = []
        if self.parts:
            self.tmp = temp_folder(self.path)
            self.index, self.current = 0, None
        else:
            self.tmp_file = atomic.temp_path_for(self.path)
            self.file = PartWriter(self.tmp_file, schema)

    def _limit(self) -> float:
        if self.total is None:
            return float("inf")
        return self.total * (self.index + 1) / self.parts

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        if not self.parts:
            self.file.write(table)
            self.rows += table.num_rows
            return
        at = 0
        while at < table.num_rows:
            if self.current is None:
                self.current = PartWriter(self.tmp / PART_FORMAT.format(self.index), self.schema)
            room = self._limit() - self.rows if self.index < self.parts - 1 else float("inf")
            take = int(min(table.num_rows - at, max(room, 1)))
            self.current.write(table.slice(at, take))
            self.rows += take
            at += take
            if self.index < self.parts - 1 and self.rows >= self._limit():
                self._roll()

    def _roll(self) -> None:
        info = self.current.close()
        self.entries.append(part_entry(self.current.path, info["rows"], info["reasons"]))
        self.current = None
        self.index += 1

    def close(self) -> Summary:
        if not self.parts:
            meta = {TABLE_COUNTS: json.dumps(self.file.counts).encode()}
            if self.kind:
                meta[TABLE_KIND] = self.kind.encode()
            if self.info:
                meta[TABLE_INFO] = self.info.encode()
            if self.source:
                meta[TABLE_SOURCE] = json.dumps(self.source).encode()
            self.file.close(meta)
            remove_table(self.path) if self.path.is_dir() else None
            atomic.commit(self.tmp_file, self.path)
            return Summary.of_counts(self.rows, self.file.counts, self.path)
        if self.current is not None:
            self._roll()
        return publish_parts(self.tmp, self.path, self.entries, kind=self.kind, info=self.info, source=self.source)

    def abort(self) -> None:
        if not self.parts:
            try:
                self.file.writer.close()
            except Exception:  # noqa: BLE001  (closing a half-written file; the error that got us here wins)
                pass
            Path(self.tmp_file).unlink(missing_ok=True)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def write_table(path: PathLike, table: pa.Table, *, kind: Optional[str] = None, info: Optional[str] = None,
                source=None, parts: int = 0) -> Summary:
    """Write an in-memory decision table (sorted by key here) through :class:`TableWriter`; ``source`` is the
    download folder it was made from (its path, or what :meth:`DownloadFolder.source` returns)."""
    if source is not None and not isinstance(source, dict):
        source = DownloadFolder(source).source()
    table = table.select(DECISION_SCHEMA.names).cast(DECISION_SCHEMA)
    if table.num_rows:
        table = table.sort_by([("key", "ascending")])
    writer = TableWriter(path, kind=kind, info=info, source=source, parts=parts, total_rows=table.num_rows)
    try:
        writer.write(table)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
