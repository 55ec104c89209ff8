"""Grouping by equal values (the exact dedup levels: URL, SHA-256): rows are shuffled by their value, and in
every group the row with the lowest key stays; the others are dropped as its duplicates."""
from __future__ import annotations

from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from ..tables.dataflow import Fn

#: What every dedup level returns: the rows it drops, why, and the kept row each stands for.
DROPS_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string())])


def _valued(column: str, t: pa.Table) -> pa.Table:
    v = t.column(column)
    ok = pc.and_(pc.is_valid(v), pc.is_valid(t.column("key")))
    return pa.table({"key": t.column("key"), "v": v}).filter(ok)


def _first_of_value(reason: str, t: pa.Table) -> pa.Table:
    """One partition (every row of a value is here): rows whose value a lower key holds, and that key."""
    if not t.num_rows:
        return DROPS_SCHEMA.empty_table()
    first = t.group_by("v", use_threads=False).aggregate([("key", "min")])
    rep = first.column("key_min").take(pc.index_in(t.column("v"), value_set=first.column("v")))
    drop = pc.not_equal(t.column("key"), rep)
    return pa.table({"key": t.column("key"), "reason": pa.nulls(t.num_rows, pa.string()).fill_null(reason),
                     "duplicate_of": rep}).filter(drop)


def exact_drops(engine, rows, column: str, value_type: pa.DataType, reason: str, desc: str = ""):
    """Drops of an exact level over ``rows`` (key and the value ``column``): equal values, lowest key kept."""
    valued = engine.map(rows, Fn(partial(_valued, column), pa.schema([("key", pa.string()), ("v", value_type)])))
    return engine.shuffle(valued, ["v"], Fn(partial(_first_of_value, reason), DROPS_SCHEMA), desc=desc)
