"""The one decision-table writer (and the output rules every table follows).

Both engines write through it: a key-sorted stream of Arrow tables becomes one parquet file (footer
metadata: kind, info, source, reason counts) or a folder of parts plus the marker (written last; each part
with its bytes, rows, SHA-256 and reason counts). Parts may be written where the data is (a Spark task calls
:func:`write_part`) and published by :func:`publish_parts`; the in-process engine uses :class:`TableWriter`,
which calls the same two. Publication is atomic: a file through a temporary and a rename, a folder by
renaming a complete sibling folder over the old table.

Outputs follow :mod:`ccmb.outdir`: never inside the download folder (or another input), never over a file or
folder that is not a ccmb decision table, one writer at a time (:func:`table_lock`).

On object storage (an fsspec URL) a folder cannot be renamed: a table folder is replaced in place. Its old
marker goes first (so the old table stops being complete), then its old parts; each new part is published
whole (an uploaded object appears only when complete, :class:`ccmb.storage.AtomicFile`); the marker, listing
every part with its SHA-256, is written last. A reader trusts the marker alone, so a killed job leaves a
folder without marker (refused as partial, replaced by the rerun). A one-file table is published the same way.
"""
from __future__ import annotations

import contextlib
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
from ... import storage
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
    path = storage.location(path)
    outdir.refuse_inside(path, inputs)
    try:
        is_dir = storage.isdir(path)
        is_file = not is_dir and storage.isfile(path)
    except OSError as exc:
        raise CurationError(str(exc)) from exc
    if is_dir and not is_decision_table_folder(path):
        foreign = storage.listdir(path)
        raise CurationError(f"{path}: is a folder but not a decision table (it holds {foreign[0]!r}); refusing to "
                            "replace it: choose another --output")
    if is_file and not is_decision_table_file(path):
        raise CurationError(f"{path}: exists and is not a decision table written by ccmb; refusing to replace it: "
                            "choose another --output")
    return path


def table_lock(path: PathLike, command: Optional[str] = None) -> outdir.FolderLock:
    """The lock a run holds on an output table while it writes it (a second run is refused naming the holder)."""
    return outdir.FolderLock(storage.parent(path), command, lock_name=f".{storage.name(path)}{outdir.LOCK_FILE}")


def remove_table(path: PathLike) -> None:
    """Remove an old decision table (file or folder, complete or partial) before publishing a new one."""
    path = storage.location(path)
    if storage.isdir(path):
        if not is_decision_table_folder(path):
            raise CurationError(f"{path}: is a folder but not a decision table; refusing to replace it")
        if isinstance(path, Path):
            shutil.rmtree(path)
        else:  # the marker first: from then on the folder reads as partial, never as the old table
            storage.remove(storage.join(path, MARKER))
            storage.remove_tree(path)
    elif storage.isfile(path):
        storage.remove(path)


# ------------------------------------------------------------------------------------------------- parts

class PartWriter:
    """One parquet file of a table from a stream of tables: rows and reason counts as it goes; its manifest
    entry (name, bytes, rows, SHA-256, reasons) on close."""

    def __init__(self, path: PathLike, schema: pa.Schema = DECISION_SCHEMA,
                 dictionary_columns: Sequence[str] = DICTIONARY_COLUMNS, sink=None) -> None:
        self.path = storage.location(path)
        self.schema = schema
        self.rows = 0
        self.counts: Dict[str, int] = {}
        dictionary = [c for c in dictionary_columns if c in schema.names]
        # on object storage the part is uploaded as it is written and appears whole at close
        self.sink = storage.AtomicFile(self.path, digest=True) if sink is None and storage.is_url(self.path) \
            else None
        self.writer_sink = sink
        self.writer = pq.ParquetWriter(sink if sink is not None else self.sink or str(self.path), schema,
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
        info: Dict[str, Any] = {"name": storage.name(self.path), "rows": self.rows, "reasons": self.counts}
        if self.sink is not None:
            self.sink.publish()
            info.update(bytes=self.sink.size, sha256=self.sink.sha256)
        return info

    def abort(self) -> None:
        """Drop a half-written part (closing it first; the error that got us here wins)."""
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001
            pass
        if self.sink is not None:
            self.sink.abort()
        elif isinstance(self.path, Path):
            self.path.unlink(missing_ok=True)


def part_entry(path: PathLike, rows: int, reasons: Dict[str, int], info: Optional[Dict[str, Any]] = None
               ) -> Dict[str, Any]:
    """A part's marker entry (bytes and SHA-256 from ``info`` when the writer computed them, else read)."""
    info = info or {}
    size = info["bytes"] if "bytes" in info else storage.size(path)
    digest = info["sha256"] if "sha256" in info else fmt.sha256_file(path)
    return {"name": storage.name(path), "bytes": int(size), "rows": int(rows), "sha256": digest,
            "reasons": dict(reasons)}


def write_part(folder: PathLike, index: int, tables: Iterable[pa.Table],
               schema: pa.Schema = DECISION_SCHEMA) -> Optional[Dict[str, Any]]:
    """Write part ``index`` of a table folder from a sorted stream (where the data is: a worker or a Spark
    task); returns its marker entry, or None when the stream was empty (no file)."""
    path = storage.join(folder, PART_FORMAT.format(index))
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
            writer.abort()
        raise
    if writer is None:
        return None
    info = writer.close()
    return part_entry(path, info["rows"], info["reasons"], info)


def temp_folder(final: PathLike, new: bool = False) -> storage.Location:
    """A fresh sibling folder to write parts into (a leftover of a killed job is removed first). On object
    storage the table folder itself, emptied (marker first, see the module docstring); ``new``: the caller
    knows nothing is there (it listed the parent under its lock), so nothing is checked."""
    if storage.is_url(final):
        if not new:
            remove_table(final)
        return storage.location(final)
    final = Path(final)
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        logger.warning("%s: removing a partially written table of an earlier run", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_parts(tmp: PathLike, final: PathLike, entries: Sequence[Optional[Dict[str, Any]]], *,
                  kind: Optional[str], info: Optional[str], source: Optional[Dict[str, Any]],
                  clean: bool = True) -> Summary:
    """Write the marker (last) into ``tmp`` and move it over ``final``; the summary from the entries' counts.
    ``clean=False``: ``tmp`` holds only the listed parts (an in-process writer into a new folder)."""
    entries = sorted((e for e in entries if e), key=lambda e: e["name"])
    if clean:  # Spark's own _SUCCESS and .crc files, anything that is not a listed part
        storage.remove_tree(tmp, keep={e["name"] for e in entries})
    rows = int(sum(e["rows"] for e in entries))
    doc = {"version": MARKER_VERSION, "kind": kind, "info": info, "source": source, "rows": rows,
           "parts": list(entries)}
    if storage.is_url(final):  # written in place: the marker, last, makes it complete
        storage.write_json(storage.join(final, MARKER), doc)
        final = storage.location(final)
    else:
        tmp, final = Path(tmp), Path(final)
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
                 schema: pa.Schema = DECISION_SCHEMA, new: bool = False) -> None:
        self.path = storage.location(path)
        self.new = new  # the caller knows nothing is at ``path`` (no older table to remove)
        storage.makedirs(storage.parent(self.path))
        self.kind, self.info, self.source, self.schema = kind, info, source, schema
        self.parts = max(0, int(parts))
        self.total = total_rows
        self.rows = 0
        self.counts: Dict[str, int] = {}
        self.entries: List[Dict[str, Any]] = []
        if self.parts:
            self.tmp = temp_folder(self.path, new=new)
            self.index, self.current = 0, None
        elif storage.is_url(self.path):  # an upload that appears whole when published
            self.tmp_file = None
            self.file = PartWriter(self.path, schema, sink=storage.AtomicFile(self.path))
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
                self.current = PartWriter(storage.join(self.tmp, PART_FORMAT.format(self.index)), self.schema)
            room = self._limit() - self.rows if self.index < self.parts - 1 else float("inf")
            take = int(min(table.num_rows - at, max(room, 1)))
            self.current.write(table.slice(at, take))
            self.rows += take
            at += take
            if self.index < self.parts - 1 and self.rows >= self._limit():
                self._roll()

    def _roll(self) -> None:
        info = self.current.close()
        self.entries.append(part_entry(self.current.path, info["rows"], info["reasons"], info))
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
            if self.tmp_file is None:
                sink = self.file.writer_sink
                if storage.isdir(self.path):
                    remove_table(self.path)
                sink.publish()
                return Summary.of_counts(self.rows, self.file.counts, self.path)
            remove_table(self.path) if self.path.is_dir() else None
            atomic.commit(self.tmp_file, self.path)
            return Summary.of_counts(self.rows, self.file.counts, self.path)
        if self.current is not None:
            self._roll()
        return publish_parts(self.tmp, self.path, self.entries, kind=self.kind, info=self.info, source=self.source,
                             clean=not (self.new and storage.is_url(self.tmp)))

    def abort(self) -> None:
        if not self.parts:
            try:
                self.file.writer.close()
            except Exception:  # noqa: BLE001  (closing a half-written file; the error that got us here wins)
                pass
            if self.tmp_file is None:
                self.file.writer_sink.abort()
            else:
                Path(self.tmp_file).unlink(missing_ok=True)
        elif isinstance(self.tmp, Path):
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            if self.current is not None:
                self.current.abort()
            with contextlib.suppress(OSError):
                storage.remove_tree(self.tmp)


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
