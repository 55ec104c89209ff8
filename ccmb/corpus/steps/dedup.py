"""``ccmb dedup`` as steps: drop duplicates level by level, keeping one sample per group.

Levels come from the registry (:mod:`ccmb.corpus.steps.levels`, in their order); each runs over the rows
the earlier ones kept. Rule: in every group the row with the LOWEST KEY is kept; every dropped row records in
``duplicate_of`` the kept row it stands for (when a later level drops that row, the pointer follows to the
finally kept one: one verified step per level). Only downloaded rows take part (``not_downloaded``
otherwise); rows that earlier decision tables (``--keep``) drop keep that table's reason and take no part,
so representatives are always rows those tables keep.

The pipeline, on any engine: one scan of the folder computes every enabled level's values per row; the rows
are partitioned by key (keys checked unique), joined with the ``--keep`` tables by key and kept; each level
reads the still-eligible rows (an anti-join with the drops so far) and returns its drops; the pointers are
followed on the drops; one final join gives the decision rows.
"""
from __future__ import annotations

from functools import partial
from typing import List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..primitives.columns import downloaded
from ..primitives.hashing import string_hashes
from ..tables.dataflow import ROW_ID, Fn
from ..tables.decisions import DecisionTable
from ..tables.folder import DownloadFolder
from ..tables.schema import DECISION_SCHEMA, REASON_NOT_DOWNLOADED, CurationError
from .exact import DROPS_SCHEMA
from .keep import apply_keep_tables
from .levels import DedupConfig, LevelContext

BASE = [pa.field("key", pa.string()), pa.field("shard", pa.string()), pa.field(ROW_ID, pa.int64()),
        pa.field("reason", pa.string())]


def state_schema(config: DedupConfig) -> pa.Schema:
    return pa.schema(BASE + config.fields())


def _prepare(config: DedupConfig, schema: pa.Schema, t: pa.Table) -> pa.Table:
    """A scan batch -> the state rows: key, shard, row id, base reason, every enabled level's values."""
    ok = downloaded(t)
    cols = {"key": t.column("key"), "shard": t.column("shard"), ROW_ID: t.column(ROW_ID),
            "reason": pc.if_else(ok, pa.scalar(None, pa.string()), pa.scalar(REASON_NOT_DOWNLOADED))}
    for level in config.enabled():
        if level.prepare is not None:
            cols.update(level.prepare(t, config))
    return pa.table({f.name: cols[f.name] for f in schema})


def check_unique_keys(where: str, t: pa.Table) -> pa.Table:
    """One partition (every row of a key is here): a repeated key is an error naming it and its files."""
    keys = t.column("key")
    if t.num_rows < 2:
        return t
    h = np.sort(string_hashes(keys.filter(pc.is_valid(keys)) if keys.null_count else keys))
    if not (h[1:] == h[:-1]).any():  # distinct 64-bit hashes: distinct keys (a collision is checked exactly)
        return t
    counts = t.group_by("key", use_threads=False).aggregate([("key", "count")])
    dup = counts.filter(pc.greater(counts.column("key_count"), 1)).column("key")
    dup_keys = sorted(k for k in dup.to_pylist() if k is not None)
    if not dup_keys:
        return t
    rows = t.filter(pc.is_in(t.column("key"), value_set=pa.array(dup_keys[:1])))
    files = sorted({f"{s.rsplit('.', 1)[0]}.parquet" for s in rows.column("shard").to_pylist()})
    raise CurationError(f"{where}: sample keys are not unique, e.g. {dup_keys[:5]} (in {', '.join(files)})")


def _eligible(names: Sequence[str], t: pa.Table) -> pa.Table:
    keep = pc.and_(pc.is_null(t.column("reason")), pc.is_valid(t.column("key")))
    return t.filter(keep).select(list(names))


def _keys_of(t: pa.Table) -> pa.Table:
    return t.select(["key"])


def _pointer_targets(t: pa.Table) -> pa.Table:
    t = t.filter(pc.is_valid(t.column("duplicate_of")))
    return pa.table({"duplicate_of": t.column("key"), "next": t.column("duplicate_of")})


def _hop(t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("key"), "reason": t.column("reason"),
                     "duplicate_of": pc.coalesce(t.column("next"), t.column("duplicate_of"))})


def decided_rows(t: pa.Table) -> pa.Table:
    """Decision rows from the scan's rows (key, shard, reason so far) joined with what a step decided
    (``d_reason``, ``d_dup``): the earlier reason wins, a pointer only with the step's reason."""
    reason = pc.coalesce(t.column("reason"), t.column("d_reason"))
    dup = pc.if_else(pc.is_null(t.column("reason")), t.column("d_dup"), pa.scalar(None, pa.string()))
    return pa.table({"key": t.column("key"), "shard": t.column("shard"), "keep": pc.is_null(reason),
                     "reason": reason, "duplicate_of": dup})


def _as_drops(t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("key"), "d_reason": t.column("reason"), "d_dup": t.column("duplicate_of")})


def scan_rows(engine, folder: DownloadFolder, config: DedupConfig, tables: Sequence[DecisionTable] = ()):
    """The state of a dedup run: one row per download row (key, shard, row id, reason so far, the levels'
    values), partitioned by key, keys checked unique, the ``--keep`` tables' reasons in."""
    schema = state_schema(config)
    scan = engine.read_folder(folder, config.columns(), Fn(partial(_prepare, config, schema), schema))
    rows = engine.shuffle(scan, ["key"], Fn(partial(check_unique_keys, str(folder.path)), schema), desc="dedup: scan")
    return engine.cache(apply_keep_tables(engine, rows, tables), desc="dedup: state")


def follow_pointers(engine, drops, hops: int):
    """``duplicate_of`` of every drop followed to a kept row: a pointer names a row eligible at its level,
    dropped (if at all) by a later one, so ``hops`` = levels - 1 steps suffice."""
    for _ in range(max(0, hops)):
        targets = engine.map(drops, Fn(_pointer_targets, pa.schema([("duplicate_of", pa.string()),
                                                                      ("next", pa.string())])))
        joined = engine.join(drops, targets, ["duplicate_of"], "left")
        drops = engine.cache(engine.map(joined, Fn(_hop, DROPS_SCHEMA)))
    return drops


def dedup_dataset(engine, folder: DownloadFolder, config: DedupConfig, tables: Sequence[DecisionTable] = ()):
    """The decision rows of dedup over a download folder, on ``engine`` (module docstring)."""
    state = scan_rows(engine, folder, config, tables)
    context = LevelContext(folder)
    drops = None
    names: List[str] = ["key", "shard", ROW_ID] + [f.name for f in config.fields()]
    for level in config.enabled():
        rows = engine.map(state, Fn(partial(_eligible, names), pa.schema([state.schema.field(n) for n in names])),
                          partitioned_by=("key",))
        if drops is not None:
            rows = engine.join(rows, engine.map(drops, Fn(_keys_of, pa.schema([("key", pa.string())]))), ["key"],
                               "anti")
        level_drops = engine.cache(level.drops(engine, rows, config, context), desc=f"dedup: {level.name}")
        drops = level_drops if drops is None else engine.union(drops, level_drops)
    base = engine.map(state, Fn(_base_rows, pa.schema(BASE[:2] + BASE[3:])), partitioned_by=("key",))
    if drops is None:
        return engine.map(base, Fn(_final_no_drops, DECISION_SCHEMA))
    drops = follow_pointers(engine, drops, len(config.levels) - 1)
    final = engine.join(base, engine.map(drops, Fn(_as_drops, pa.schema([("key", pa.string()),
                                                                           ("d_reason", pa.string()),
                                                                           ("d_dup", pa.string())]))),
                        ["key"], "left", desc="dedup: table")
    return engine.map(final, Fn(decided_rows, DECISION_SCHEMA))


def _base_rows(t: pa.Table) -> pa.Table:
    return t.select(["key", "shard", "reason"])


def _final_no_drops(t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("key"), "shard": t.column("shard"), "keep": pc.is_null(t.column("reason")),
                     "reason": t.column("reason"), "duplicate_of": pa.nulls(t.num_rows, pa.string())})
