"""Combining decision tables for ``ccmb build-shards --keep``: keep-aware, and the shard set's provenance.

A sample is kept when every table keeps it (the first table that drops a row names the reason; a key a table
does not list is ``not_in:<file>``). Tables made independently can disagree in one harmful way: dedup keeps
sample R and drops D as its duplicate, and another table (the filter, decontamination) drops R; combined
naively, both copies are lost. Such a D (every other table keeps it) is **restored**:

* exact levels (the level registry says ``exact``: URL, SHA-256): the restored duplicates of one removed R
  are regrouped by their actual value (normalised URL / SHA-256, the level's own ``prepare``); the lowest key
  of each value is kept and the others stay dropped (they equal it);
* near-duplicate levels: every such D is restored (each was checked against R only, never against the
  others; nothing is lost, at worst a near-copy stays) and a warning says to run dedup after the other steps
  (``ccmb dedup --keep filter.parquet``), which never needs restoring.

The provenance (``manifest.json`` ``"provenance"``) lists every table with its fingerprint, kind and drop
count, and the decontamination tables' targets and reports; with ``--blocklist``, the list (files, SHA-256 of
its entries, entry counts) and the rows it dropped by reason.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ... import shards as fmt
from ... import storage
from ...blocklist import HASH_COLUMNS, REASON_CODES, URL_COLUMNS, Blocklist, blocked
from ..primitives.columns import downloaded
from ..tables.dataflow import Fn
from ..tables.decisions import DecisionTable, table_fingerprint
from ..tables.folder import DownloadFolder
from ..tables.schema import REASON_NOT_DOWNLOADED, REASON_NOT_IN, CurationError, TABLE_INFO
from .decontaminate import REASON_EVAL_OVERLAP
from .dedup import check_unique_keys
from .keep import table_rows
from .levels import DedupConfig, levels

logger = logging.getLogger(__name__)

KEPT = pa.schema([("key", pa.string()), ("shard", pa.string())])
COUNTS = pa.schema([("reason", pa.string()), ("n", pa.int64())])
LOST = pa.schema([("key", pa.string()), ("tab", pa.int32()), ("why", pa.string()), ("rep", pa.string())])


@dataclass
class Combined:
    """Kept rows (a dataset of key, shard), drop counts, what was restored, and the provenance document."""

    kept: Any
    dropped: Dict[str, int]
    restored: Dict[str, int] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)


def state_schema(n: int) -> pa.Schema:
    fields = [pa.field("key", pa.string()), pa.field("shard", pa.string()), pa.field("nd", pa.bool_()),
              pa.field("reason", pa.string())]
    for i in range(n):
        fields += [pa.field(f"r{i}", pa.string()), pa.field(f"dup{i}", pa.string())]
    return pa.schema(fields)


def _scan(blocklist: Optional[Blocklist], t: pa.Table) -> pa.Table:
    """The folder's rows: ``not_downloaded``, else the blocklist's reason (``blocklist_md5``, ...). Either is
    final (``nd``): no table can keep such a row, and it is never restored as a duplicate."""
    reason = pc.if_else(downloaded(t), pa.scalar(None, pa.string()), pa.scalar(REASON_NOT_DOWNLOADED))
    if blocklist is not None:
        reason = pc.coalesce(reason, blocked(t, blocklist, codes=True))
    return pa.table({"key": t.column("key"), "shard": t.column("shard"), "nd": pc.is_valid(reason), "reason": reason})


def blocklist_columns(folder: DownloadFolder, blocklist: Blocklist) -> List[str]:
    """The columns :func:`ccmb.blocklist.blocked` reads for ``blocklist``; a list with MD5 (SHA-256) entries
    on a folder whose parquets have no ``md5`` (``sha256``) column is refused naming the parquet (such a folder
    was downloaded before ccmb wrote MD5s: its hashes cannot be matched without reading every image)."""
    needed = [kind for kind, entries in (("md5", blocklist.md5), ("sha256", blocklist.sha256)) if entries]
    for parquet in folder.parquets if needed else ():
        try:
            with fmt.parquet_source(storage.location(parquet)) as src:  # a local path or a URL
                names = pq.read_schema(src).names
        except (OSError, pa.ArrowException) as exc:
            raise CurationError(f"{parquet}: unreadable parquet: {exc}") from exc
        for kind in needed:
            if kind not in names:
                raise CurationError(f"{folder.path}: {storage.name(parquet)} has no {kind} column (downloaded before ccmb "
                                    f"recorded it), so the {kind.upper()} entries of the blocklist cannot be "
                                    "checked; download again, or list URLs/domains instead")
    cols = ["key", "status"]
    if blocklist.md5 or blocklist.sha256:
        cols += list(HASH_COLUMNS)
    if blocklist.urls or blocklist.domains:
        cols += list(URL_COLUMNS)
    return cols


def _add_table(i: int, name: str, schema: pa.Schema, t: pa.Table) -> pa.Table:
    """The joined rows of table ``i``: its reason (``not_in`` when it misses the key), its pointer; the
    combined reason is the first table's that drops the row."""
    missing = pc.is_null(t.column("t_has"))
    r = pc.if_else(missing, pa.scalar(REASON_NOT_IN.format(name=name)), t.column("t_reason"))
    cols = {c: t.column(c) for c in schema.names if c in t.column_names}
    cols["reason"] = pc.coalesce(t.column("reason"), r)
    cols[f"r{i}"] = r
    cols[f"dup{i}"] = t.column("t_dup")
    return pa.table({c: cols[c] for c in schema.names})


def _lost(n: int, t: pa.Table) -> pa.Table:
    """Candidates: rows only table i drops, as a duplicate of another row (every other table keeps them)."""
    out = []
    for i in range(n):
        sel = pc.and_(pc.invert(t.column("nd")), pc.is_valid(t.column(f"dup{i}")))
        for j in range(n):
            if j != i:
                sel = pc.and_(sel, pc.is_null(t.column(f"r{j}")))
        rows = t.filter(sel)
        out.append(pa.table({"key": rows.column("key"), "tab": pa.array([i] * rows.num_rows, pa.int32()),
                             "why": rows.column(f"r{i}"), "rep": rows.column(f"dup{i}")}))
    return pa.concat_tables(out) if out else LOST.empty_table()


def _rep_reasons(t: pa.Table) -> pa.Table:
    return pa.table({"rep": t.column("key"), "rep_reason": t.column("reason")})


def _removed(t: pa.Table) -> pa.Table:
    return t.filter(pc.is_valid(t.column("rep_reason"))).select(LOST.names)


def _exact_values(fields: List[str], config: DedupConfig, t: pa.Table) -> pa.Table:
    cols = {"key": t.column("key")}
    for lv in config.enabled():
        cols.update({k: v for k, v in lv.prepare(t, config).items() if k in fields})
    return pa.table(cols)


def _value_of(exact: Dict[str, str], t: pa.Table) -> pa.Table:
    """The value an exact level's restored duplicates are regrouped by (null for near-duplicate reasons)."""
    value = pa.nulls(t.num_rows, pa.binary())
    for reason, col in exact.items():
        v = pc.cast(t.column(col), pa.binary()) if col in t.column_names else pa.nulls(t.num_rows, pa.binary())
        value = pc.if_else(pc.equal(t.column("why"), reason), v, value)
    return pa.table({"key": t.column("key"), "tab": t.column("tab"), "why": t.column("why"), "rep": t.column("rep"),
                     "value": value, "exact": pc.fill_null(pc.is_in(t.column("why"), pa.array(list(exact))), False)})


def _restore(t: pa.Table) -> pa.Table:
    """One partition (every candidate of a (table, reason, rep, value) is here): exact ones keep the lowest
    key of each group, near ones all."""
    if not t.num_rows:
        return pa.table({"key": pa.array([], pa.string()), "why": pa.array([], pa.string()),
                         "exact": pa.array([], pa.bool_())})
    first = t.group_by(["tab", "why", "rep", "value"], use_threads=False).aggregate([("key", "min")])
    firsts = pc.is_in(t.column("key"), value_set=first.column("key_min"))
    take = pc.or_(pc.invert(t.column("exact")), firsts)
    t = t.filter(take)
    return pa.table({"key": t.column("key"), "why": t.column("why"), "exact": t.column("exact")})


def _restored_keys(t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("key"), "restored": pc.is_valid(t.column("key"))})


def _apply_restore(t: pa.Table) -> pa.Table:
    back = pc.fill_null(t.column("restored"), False)
    reason = pc.if_else(back, pa.scalar(None, pa.string()), t.column("reason"))
    return pa.table({"key": t.column("key"), "shard": t.column("shard"), "reason": reason})


def _counts(t: pa.Table) -> pa.Table:
    reasons = pc.drop_null(t.column("reason"))
    if not len(reasons):
        return COUNTS.empty_table()
    vc = pc.value_counts(reasons)
    return pa.table({"reason": vc.field("values"), "n": pc.cast(vc.field("counts"), pa.int64())})


def _kept(t: pa.Table) -> pa.Table:
    t = t.filter(pc.and_(pc.is_null(t.column("reason")), pc.is_valid(t.column("key"))))
    return t.select(["key", "shard"])


def _sum(table: pa.Table) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for r, n in zip(table.column("reason").to_pylist(), table.column("n").to_pylist()):
        out[r] = out.get(r, 0) + int(n)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _dropped_rows(t: pa.Table) -> pa.Table:
    keep = pc.fill_null(t.column("keep"), False)
    reasons = pc.fill_null(t.column("reason"), "dropped").filter(pc.invert(keep))
    return _counts(pa.table({"reason": reasons}))


def table_info(engine, table: DecisionTable) -> Dict[str, Any]:
    """(kind, info, rows dropped) of a decision table; kind inferred from its reasons when it records none."""
    counts = _sum(engine.collect(engine.read_table(table, ["keep", "reason"], Fn(_dropped_rows, COUNTS))))
    kind = table.kind
    if kind is None:
        if REASON_EVAL_OVERLAP in counts:
            kind = "decontaminate"
        elif any(r.startswith("duplicate_") for r in counts):
            kind = "dedup"
        else:
            kind = "filter"
    info = None
    if table.info:
        try:
            info = json.loads(table.info)
        except json.JSONDecodeError as exc:
            raise CurationError(f"{table.path}: metadata {TABLE_INFO.decode()} is not JSON: {exc}") from exc
    return {"kind": kind, "info": info, "dropped": sum(counts.values())}


def provenance(engine, tables: Sequence[DecisionTable]) -> Dict[str, Any]:
    """The ``provenance`` document of a shard set made from ``tables``."""
    entries, against, reports = [], [], []
    for t in tables:
        ti = table_info(engine, t)
        entries.append({"path": t.resolved, "fingerprint": table_fingerprint(t.path),
                        "kind": ti["kind"], "dropped": ti["dropped"]})
        if ti["kind"] == "decontaminate":
            info = ti["info"] or {}
            against += [a for a in info.get("against", []) if a not in against]
            if info.get("report") is not None:
                reports.append(info["report"])
    report = None
    if len(reports) == 1:
        report = reports[0]
    elif reports:  # several decontamination tables: one report, datasets merged
        report = {"datasets": {k: v for r in reports for k, v in r.get("datasets", {}).items()},
                  "reports": reports}
    return {"decision_tables": entries, "decontamination": {"against": against, "report": report}}


def exact_levels() -> Dict[str, str]:
    """{reason: prepared value column} of the registered exact levels."""
    return {lv.reason: lv.value for lv in levels().values() if lv.exact and lv.value}


def combine(engine, folder: DownloadFolder, tables: Sequence[DecisionTable],
            blocklist: Optional[Blocklist] = None) -> Combined:
    """Combine decision tables over a download folder (kept = every table keeps), restoring duplicates whose
    representative another table removed (module docstring). Rows ``blocklist`` matches are dropped first
    (reasons ``blocklist_md5|sha256|url|domain``), whatever the tables say."""
    n = len(tables)
    schema = state_schema(n)
    base = pa.schema([schema.field(c) for c in ("key", "shard", "nd", "reason")])
    columns = blocklist_columns(folder, blocklist) if blocklist is not None else ["key", "status"]
    scan = engine.read_folder(folder, columns, Fn(partial(_scan, blocklist), base))
    state = engine.shuffle(scan, ["key"], Fn(partial(check_unique_keys, str(folder.path)), base), desc="build: scan")
    for i, t in enumerate(tables):
        joined = engine.join(state, table_rows(engine, t), ["key"], "left", desc=f"join {t.name}")
        state = engine.map(joined, Fn(partial(_add_table, i, t.name, pa.schema(list(state.schema) + [
            schema.field(f"r{i}"), schema.field(f"dup{i}")])), pa.schema(list(state.schema) + [
                schema.field(f"r{i}"), schema.field(f"dup{i}")])), partitioned_by=("key",))
    state = engine.cache(state, desc="build: combine")
    restored: Dict[str, int] = {}
    if n:
        cands = engine.map(state, Fn(partial(_lost, n), LOST))
        reps = engine.map(state, Fn(_rep_reasons, pa.schema([("rep", pa.string()), ("rep_reason", pa.string())])))
        lost = engine.cache(engine.map(engine.join(cands, reps, ["rep"], "left"), Fn(_removed, LOST)))
        if engine.count(lost):
            restored_rows = _restored_rows(engine, folder, lost)
            counts = engine.collect(restored_rows)
            for why in counts.column("why").to_pylist():
                restored[why] = restored.get(why, 0) + 1
            near = int(pc.sum(pc.invert(counts.column("exact"))).as_py() or 0) if counts.num_rows else 0
            if restored:
                logger.warning("build-shards: restored %s: duplicates whose kept copy another table drops "
                               "(otherwise both copies would be lost)",
                               ", ".join(f"{v} {k}" for k, v in restored.items()))
            if near:
                logger.warning("build-shards: %d restored near-duplicates were never compared with each other; for "
                               "exact results run dedup after the other steps: `ccmb dedup --keep filter.parquet "
                               "...`", near)
            back = engine.map(restored_rows, Fn(_restored_keys, pa.schema([("key", pa.string()),
                                                                            ("restored", pa.bool_())])))
            state = engine.map(engine.join(state, back, ["key"], "left"), Fn(_apply_restore, KEPT.append(
                pa.field("reason", pa.string()))), partitioned_by=("key",))
            state = engine.cache(state)
    dropped = _sum(engine.collect(engine.map(state, Fn(_counts, COUNTS))))
    kept = engine.map(state, Fn(_kept, KEPT))
    prov = provenance(engine, tables)
    if blocklist is not None:
        prov["blocklist"] = {**blocklist.describe(),
                             "dropped": {r: n for r, n in dropped.items() if r in REASON_CODES.values()}}
    return Combined(kept=kept, dropped=dropped, restored=dict(sorted(restored.items())), provenance=prov)


def _restored_rows(engine, folder: DownloadFolder, lost):
    """The candidates that are restored: near ones all, exact ones the lowest key per (table, reason, removed
    representative, value), the values computed by the exact levels' own ``prepare``."""
    exact = exact_levels()
    config = DedupConfig(levels=tuple(lv.name for lv in levels().values() if lv.exact and lv.value))
    fields = sorted(set(exact.values()))
    vschema = pa.schema([pa.field("key", pa.string())] + [f for f in config.fields() if f.name in fields])
    values = engine.read_folder(folder, config.columns(), Fn(partial(_exact_values, fields, config), vschema))
    valued = engine.join(lost, values, ["key"], "left")
    vt = pa.schema(list(LOST) + [pa.field("value", pa.binary()), pa.field("exact", pa.bool_())])
    valued = engine.map(valued, Fn(partial(_value_of, exact), vt))
    out = pa.schema([("key", pa.string()), ("why", pa.string()), ("exact", pa.bool_())])
    return engine.cache(engine.shuffle(valued, ["tab", "why", "rep", "value"], Fn(_restore, out)))

