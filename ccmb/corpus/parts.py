"""Partitioned decision tables: a folder of parquet parts, complete only with its marker.

A decision table is either one ``TABLE.parquet`` file or a *folder* ``TABLE.parquet/`` of parts
(``part-NNNNN.parquet``, in key order: part i holds smaller keys than part i+1) written by Spark executors
or by the in-process engine. The folder is complete only when its marker :data:`MARKER` exists; the marker
is written last and lists every part with its byte size, row count and SHA-256, plus the table's kind,
info and source (the download folder it was made from). A folder without marker, with a missing, extra or
resized part is a partially written table (a killed job): it is refused naming the folder, never read as
complete, and the writers remove it and redo it.

Every table records its source: the resolved path of the download folder and a fingerprint of it
(:func:`folder_fingerprint`: names and sizes of its ``NNNNN.parquet`` files). A step that reads a table
with another download folder refuses it naming both (:func:`check_source`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .. import atomic
from .. import shards as fmt
from ..types import PathLike

logger = logging.getLogger(__name__)

MARKER = "_ccmb_table.json"
MARKER_VERSION = 1
PART_FORMAT = "part-{:05d}.parquet"


class PartitionError(ValueError):
    """A partitioned table is incomplete or damaged (a :class:`ValueError`; the message names the folder)."""


def folder_fingerprint(input_dir: PathLike) -> str:
    """SHA-1 over the names and byte sizes of a download folder's ``NNNNN.parquet`` files (cheap; equal for
    a copy of the folder, different for another download)."""
    h = hashlib.sha1()
    for p in fmt.shard_parquets(Path(input_dir)):
        h.update(f"{p.name}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()


def source_of(input_dir: PathLike) -> Dict[str, str]:
    return {"path": str(Path(input_dir).resolve()), "fingerprint": folder_fingerprint(input_dir)}


def is_partitioned(path: PathLike) -> bool:
    return Path(path).is_dir()


def part_files(folder: PathLike) -> List[Path]:
    """The parquet files of a partitioned table folder, by name (``_``/``.`` files are not parts)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix == ".parquet" and not p.name.startswith(("_", ".")))


def read_marker(folder: PathLike, check_parts: bool = True) -> Dict[str, Any]:
    """The marker of a complete partitioned table; :class:`PartitionError` when the folder is partial."""
    folder = Path(folder)
    marker = folder / MARKER
    hint = "the job that wrote it did not finish; rerun the step (it replaces the folder)"
    if not marker.exists():
        raise PartitionError(f"{folder}: partially written decision table (no {MARKER}: {hint})")
    try:
        with open(marker, encoding="utf-8") as fh:
            doc = json.load(fh)
        parts = doc["parts"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PartitionError(f"{marker}: unreadable marker ({exc}): {hint}") from exc
    if check_parts:
        listed = {p["name"] for p in parts}
        found = {p.name for p in part_files(folder)}
        if listed != found:
            missing, extra = sorted(listed - found), sorted(found - listed)
            raise PartitionError(f"{folder}: parts differ from {MARKER} (missing {missing[:3]}, not listed "
                                 f"{extra[:3]}): {hint}")
        for p in parts:
            size = (folder / p["name"]).stat().st_size
            if size != p["bytes"]:
                raise PartitionError(f"{folder / p['name']}: {size} bytes, {MARKER} says {p['bytes']}: {hint}")
    return doc


def part_entry(path: PathLike) -> Dict[str, Any]:
    """Name, bytes, rows and SHA-256 of one part file (runs where the part is: a Spark task or here)."""
    path = Path(path)
    return {"name": path.name, "bytes": path.stat().st_size, "rows": pq.read_metadata(path).num_rows,
            "sha256": fmt.sha256_file(path)}


def finish(tmp_folder: Path, final: Path, parts: Sequence[Dict[str, Any]], *, kind: Optional[str],
           info: Optional[str], source: Optional[Dict[str, str]], fingerprint: Optional[str] = None) -> Path:
    """Write the marker (last) into ``tmp_folder`` and move it to ``final`` (replacing a partial one)."""
    parts = sorted(parts, key=lambda p: p["name"])
    doc = {"version": MARKER_VERSION, "kind": kind, "info": info, "source": source,
           "keys_fingerprint": fingerprint, "rows": int(sum(p["rows"] for p in parts)), "parts": list(parts)}
    atomic.write_json(tmp_folder / MARKER, doc)
    remove_table(final)
    os.replace(tmp_folder, final)
    return final


def remove_table(path: PathLike) -> None:
    """Remove an old decision table (file or folder, complete or partial) before writing a new one."""
    path = Path(path)
    if path.is_dir():
        check_replaceable(path)
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def check_replaceable(path: PathLike) -> None:
    """Refuse an output path that is a folder but not a decision table (e.g. the download folder given by
    mistake): writing a table replaces what is there."""
    path = Path(path)
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not _is_table_entry(p.name))
        if foreign:
            raise PartitionError(f"{path}: is a folder but not a decision table (it holds {foreign[0]!r}); "
                                 "refusing to replace it: choose another --output")


def _is_table_entry(name: str) -> bool:
    """Whether ``name`` is something a table folder's writers put there (parts, marker, Spark's files)."""
    return (name == MARKER or name.endswith(".parquet") or name.startswith(("_SUCCESS", "._SUCCESS"))
            or (name.startswith(".") and name.endswith(".crc")))


def temp_folder(final: PathLike) -> Path:
    """A fresh sibling folder to write parts into (a leftover of a killed job is removed first)."""
    final = Path(final)
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        logger.warning("%s: removing a partially written table of an earlier run", tmp)
        shutil.rmtree(tmp)
    return tmp


def write_local(path: PathLike, table: pa.Table, parts: int, *, kind: Optional[str], info: Optional[str],
                source: Optional[Dict[str, str]], fingerprint: Optional[str],
                dictionary_columns: Sequence[str] = ()) -> Path:
    """Write ``table`` (in key order) as ``parts`` part files plus the marker (in-process engine)."""
    path = Path(path)
    tmp = temp_folder(path)
    tmp.mkdir(parents=True)
    n = table.num_rows
    parts = max(1, int(parts))
    entries = []
    for i in range(parts):
        lo, hi = n * i // parts, n * (i + 1) // parts
        p = tmp / PART_FORMAT.format(i)
        pq.write_table(table.slice(lo, hi - lo), p, use_dictionary=list(dictionary_columns), write_statistics=False)
        entries.append(part_entry(p))
    return finish(tmp, path, entries, kind=kind, info=info, source=source, fingerprint=fingerprint)


def table_fingerprint(path: PathLike) -> str:
    """A content fingerprint of a decision table: SHA-256 of the file, or of the marker (which lists the
    SHA-256 of every part) for a folder."""
    path = Path(path)
    return "sha256:" + fmt.sha256_file(path / MARKER if path.is_dir() else path)


def read_parts(folder: PathLike, columns: Optional[Sequence[str]] = None,
               read_dictionary: Optional[Sequence[str]] = None) -> pa.Table:
    """The rows of a complete partitioned table in part order (checked against the marker)."""
    folder = Path(folder)
    doc = read_marker(folder)
    tables = []
    for p in doc["parts"]:
        path = folder / p["name"]
        names = pq.read_schema(path).names
        cols = None if columns is None else [c for c in columns if c in names]
        t = pq.read_table(path, columns=cols, read_dictionary=read_dictionary)
        if t.num_rows != p["rows"]:
            raise PartitionError(f"{path}: {t.num_rows} rows, {MARKER} says {p['rows']}")
        tables.append(t.replace_schema_metadata(None))
    if not tables:
        return pa.table({})
    schema = tables[0].schema
    return pa.concat_tables([t.cast(schema) for t in tables])
