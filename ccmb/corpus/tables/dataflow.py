"""The contract between steps and engines: a step function over Arrow tables with its output schema.

A step is a plain function ``pa.Table -> pa.Table`` (top-level, its settings bound with
:func:`functools.partial`, so it pickles to worker processes and Spark executors). :class:`Fn` pairs it
with the schema of what it returns; engines call it on batches or whole partitions and never look inside.
Its output is conformed to the schema (column order, types), so every engine sees the same columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import pyarrow as pa

#: Column every dataset read from a download folder carries: a row id unique within the run (the parquet's
#: position in the folder << 32 | the row's position in it). Internal: never written to a table.
ROW_ID = "_id"


@dataclass(frozen=True)
class Fn:
    """A step function and the schema of its output."""

    fn: Callable[[pa.Table], pa.Table]
    schema: pa.Schema

    def __call__(self, table: pa.Table) -> pa.Table:
        return conform(self.fn(table), self.schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (missing columns are an error)."""
    if table.schema.equals(schema, check_metadata=False):
        return table
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"step output lacks columns {missing} (has {table.column_names})")
    cols = []
    for f in schema:
        col = table.column(f.name)
        if not col.type.equals(f.type):
            col = col.cast(f.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def concat(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    """One table of ``schema`` from several (an empty one when there are none)."""
    tables = [conform(t, schema) for t in tables]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]


def schema_of(*fields: pa.Field, base: Optional[pa.Schema] = None, drop: Sequence[str] = ()) -> pa.Schema:
    """``base``'s fields (without ``drop`` and without those redefined) followed by ``fields``."""
    names = {f.name for f in fields} | set(drop)
    kept = [f for f in (base or pa.schema([])) if f.name not in names]
    return pa.schema(kept + list(fields))


def select(table: pa.Table, columns: Sequence[str], rename: Optional[dict] = None) -> pa.Table:
    """The ``columns`` of ``table`` (renamed by ``rename``)."""
    rename = rename or {}
    return pa.table({rename.get(c, c): table.column(c) for c in columns})
