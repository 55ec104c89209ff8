"""Earlier decision tables joined to the download's rows by key (``--keep`` of dedup and build-shards).

A row that a table drops takes that table's reason (the first table that drops it names it); a key the table
does not list counts as dropped, ``not_in:<file name>``. Rows are matched by key, never by position. Within
one table a key listed twice with different decisions is refused, naming the file and the key (listed twice
with the same decision, it counts once).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..tables.dataflow import Fn
from ..tables.decisions import DecisionTable
from ..tables.schema import REASON_DROPPED, REASON_NOT_IN, CurationError

TABLE_ROWS = pa.schema([("key", pa.string()), ("t_reason", pa.string()), ("t_dup", pa.string()),
                        ("t_has", pa.bool_())])


def _table_rows(t: pa.Table) -> pa.Table:
    keep = pc.fill_null(t.column("keep"), False)
    reason = pc.if_else(keep, pa.scalar(None, pa.string()), pc.fill_null(t.column("reason"), REASON_DROPPED))
    dup = pc.if_else(keep, pa.scalar(None, pa.string()), t.column("duplicate_of"))
    out = pa.table({"key": t.column("key"), "t_reason": reason, "t_dup": dup,
                    "t_has": pa.nulls(t.num_rows, pa.bool_()).fill_null(True) if t.num_rows else pa.array([], pa.bool_())})
    return out.filter(pc.is_valid(t.column("key")))


def _unique_keys(path: str, t: pa.Table) -> pa.Table:
    """One partition (every row of a key is here): a key listed twice with different decisions is refused."""
    if t.num_rows < 2:
        return t
    counts = t.group_by("key", use_threads=False).aggregate([("key", "count")])
    if pc.max(counts.column("key_count")).as_py() < 2:
        return t
    dup_keys = counts.filter(pc.greater(counts.column("key_count"), 1)).column("key")
    rows = t.filter(pc.is_in(t.column("key"), value_set=dup_keys))
    distinct = rows.group_by(["key", "t_reason", "t_dup"], use_threads=False).aggregate([])
    per_key = distinct.group_by("key", use_threads=False).aggregate([("key", "count")])
    conflict = per_key.filter(pc.greater(per_key.column("key_count"), 1))
    if conflict.num_rows:
        k = sorted(conflict.column("key").to_pylist())[0]
        raise CurationError(f"{path}: key {k!r} is listed {int(pc.sum(pc.equal(t.column('key'), k)).as_py())} "
                            f"times with different decisions ({conflict.num_rows} such keys); a decision table "
                            "lists each key once")
    first = np.unique(pc.index_in(t.column("key"), value_set=pc.unique(t.column("key"))).to_numpy(),
                      return_index=True)[1]
    return t.take(pa.array(np.sort(first)))


def table_rows(engine, table: DecisionTable):
    """A decision table's rows (key, reason if dropped, duplicate_of if dropped, present) partitioned by key,
    its duplicate keys checked."""
    rows = engine.read_table(table, ["key", "keep", "reason", "duplicate_of"], Fn(_table_rows, TABLE_ROWS))
    return engine.shuffle(rows, ["key"], Fn(partial(_unique_keys, str(table.path)), TABLE_ROWS),
                          desc=f"read {table.name}")


def _fold(name: str, schema: pa.Schema, t: pa.Table) -> pa.Table:
    missing = pc.is_null(t.column("t_has"))
    theirs = pc.if_else(missing, pa.scalar(REASON_NOT_IN.format(name=name)), t.column("t_reason"))
    reason = pc.coalesce(t.column("reason"), theirs)
    return t.set_column(t.column_names.index("reason"), "reason", reason).select(schema.names)


def apply_keep_tables(engine, rows, tables):
    """``rows`` (with a ``reason`` column, partitioned by key) with each table's reason where it drops a row
    the earlier ones keep."""
    for table in tables:
        joined = engine.join(rows, table_rows(engine, table), ["key"], "left", desc=f"join {table.name}")
        rows = engine.map(joined, Fn(partial(_fold, table.name, rows.schema), rows.schema), partitioned_by=("key",))
    return rows
