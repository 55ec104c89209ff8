"""Combining decision tables for ``ccmb build-shards --keep``: keep-aware, and the shard set's provenance.

A sample is kept when every table keeps it. Tables made independently can disagree in one harmful way:
dedup keeps sample R and drops D as its duplicate, and another table (the filter, decontamination) drops
R; combined naively, both copies are lost. Such a D (every other table keeps it) is **restored**:

* exact levels (``duplicate_url``, ``duplicate_sha256``: the level table says ``exact``): the restored
  duplicates of one removed R are regrouped by their actual value (normalised URL / SHA-256); the first
  of each value is kept and the others stay dropped (they equal it);
* near-duplicate levels: every such D is restored (they were each checked against R only, never against
  each other; nothing is lost, at worst a near-copy stays) and a warning says to run dedup after the other
  steps (``ccmb dedup --keep filter.parquet``), which never needs restoring.

The provenance (``manifest.json`` ``"provenance"``, see docs/curation.md) lists every table with its file
fingerprint, kind and drop count, and the decontamination tables' targets and reports.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .parts import table_fingerprint
from .table import (REASON_NOT_DOWNLOADED, TABLE_INFO, CurationError, decision_metadata, ReasonCodes, as_numpy_bool,
                    load_metadata, prior_reason_codes, read_decisions)
from ..types import PathLike

logger = logging.getLogger(__name__)

REASON_EVAL_OVERLAP = "eval_overlap"


@dataclass
class Combined:
    """Kept rows and drop counts of combined tables, what was restored, and the provenance document."""

    kept: pa.Table
    dropped: Dict[str, int]
    restored: Dict[str, int] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)


def table_info(path: PathLike) -> Dict[str, Any]:
    """(kind, info) a decision table carries in its parquet metadata; kind inferred from reasons if absent."""
    path = Path(path)
    meta = decision_metadata(path)  # a file or a complete partitioned folder
    kind = meta["kind"]
    info = None
    if meta["info"]:
        try:
            info = json.loads(meta["info"])
        except json.JSONDecodeError as exc:
            raise CurationError(f"{path}: metadata {TABLE_INFO.decode()} is not JSON: {exc}") from exc
    table = read_decisions(path, columns=["key", "keep", "reason"])
    reasons = pc.drop_null(table.column("reason"))
    names = set(pc.unique(reasons).to_pylist()) if len(reasons) else set()
    if kind is None:
        if REASON_EVAL_OVERLAP in names:
            kind = "decontaminate"
        elif any(r.startswith("duplicate_") for r in names):
            kind = "dedup"
        else:
            kind = "filter"
    dropped = int(table.num_rows - pc.sum(pc.cast(pc.fill_null(table.column("keep"), False), pa.int64())).as_py()
                  ) if table.num_rows else 0
    return {"kind": kind, "info": info, "dropped": dropped}


def provenance(tables: Sequence[PathLike]) -> Dict[str, Any]:
    """The ``provenance`` document of a shard set made from ``tables``."""
    entries, against, reports = [], [], []
    for t in tables:
        ti = table_info(t)
        entries.append({"path": str(Path(t).resolve()), "fingerprint": table_fingerprint(t),
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


def _aligned_duplicates(keys: pa.ChunkedArray, path: PathLike):
    """Rows of ``keys`` a table drops as duplicates of another row: (rows, rep rows, reasons)."""
    t = read_decisions(path, columns=["key", "keep", "reason", "duplicate_of"])
    dup = t.filter(pc.and_(pc.invert(pc.fill_null(t.column("keep"), True)), pc.is_valid(t.column("duplicate_of"))))
    if not dup.num_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    rows = pc.index_in(dup.column("key"), value_set=keys)
    reps = pc.index_in(dup.column("duplicate_of"), value_set=keys)
    ok = pc.and_(rows.is_valid(), reps.is_valid())  # eval_overlap points outside the corpus: skipped
    dup = dup.filter(ok)
    return (pc.filter(rows, ok).to_numpy(zero_copy_only=False).astype(np.int64),
            pc.filter(reps, ok).to_numpy(zero_copy_only=False).astype(np.int64),
            dup.column("reason").to_pylist())


def _exact_values(input_dir: Path, reason: str, rows: np.ndarray) -> Optional[List[Any]]:
    from .dedup import LEVELS

    level = next((lv for lv in LEVELS.values() if lv.reason == reason and lv.exact and lv.columns), None)
    if level is None:
        return None
    col = level.columns[0]
    meta = load_metadata(input_dir, ["key", col])
    values = meta.column(col).take(pa.array(rows))
    if col == "url":
        from .urlnorm import normalize_urls

        values = normalize_urls(values)
    return values.to_pylist()


def combine_tables(input_dir: PathLike, tables: Sequence[PathLike]) -> Combined:
    """Combine decision tables over a download folder (kept = every table keeps), restoring duplicates whose
    representative another table removed (rules in the module docstring)."""
    input_dir = Path(input_dir)
    meta = load_metadata(input_dir, ["key", "status"])
    keys = meta.column("key")
    n = meta.num_rows
    base = ~as_numpy_bool(pc.equal(pc.fill_null(meta.column("status"), ""), "success"))
    combined = ReasonCodes(n)
    combined.fill(base, REASON_NOT_DOWNLOADED)
    kept_by: List[np.ndarray] = []  # per table: the rows it keeps (one byte per row)
    for t in tables:
        rc = ReasonCodes(n)
        prior_reason_codes(keys, [t], rc)
        combined.merge(rc.codes, rc.names)  # the first table that drops a row names the reason
        kept_by.append(rc.kept)
        del rc
    restore = np.zeros(n, bool)
    restored: Dict[str, int] = {}
    near_restored = 0
    for i, t in enumerate(tables):
        rows, reps, reasons = _aligned_duplicates(keys, t)
        if not len(rows):
            continue
        others_keep = ~base[rows]
        for j, kept in enumerate(kept_by):
            if j != i:
                others_keep &= kept[rows]
        lost = others_keep & ~combined.kept[reps]  # this table keeps the rep, another one drops it
        if not lost.any():
            continue
        reasons_arr = np.asarray(reasons, object)
        for reason in sorted(set(reasons_arr[lost].tolist())):
            sel = np.flatnonzero(lost & (reasons_arr == reason))
            values = _exact_values(input_dir, reason, rows[sel])
            if values is None:  # a near-duplicate level: restore every one
                take = rows[sel]
                near_restored += len(take)
            else:  # an exact level: the first of each (removed rep, value) stays
                seen = set()
                take_list = []
                for r, rep, v in sorted(zip(rows[sel].tolist(), reps[sel].tolist(), values)):
                    if (rep, v) not in seen:
                        seen.add((rep, v))
                        take_list.append(r)
                take = np.asarray(take_list, np.int64)
            restore[take] = True
            restored[reason] = restored.get(reason, 0) + len(take)
    if restore.any():
        combined.codes[restore] = -1
        logger.warning("build-shards: restored %s: duplicates whose kept copy another table drops (otherwise "
                       "both copies would be lost)", ", ".join(f"{v} {k}" for k, v in restored.items()))
    if near_restored:
        logger.warning("build-shards: %d restored near-duplicates were never compared with each other; for "
                       "exact results run dedup after the other steps: `ccmb dedup --keep filter.parquet ...`",
                       near_restored)
    reasons = combined.array()
    valid_key = keys.is_valid().to_numpy(zero_copy_only=False)
    kept_mask = combined.kept & valid_key
    kept = pa.table({"key": keys, "shard": meta.column("shard")}).filter(pa.array(kept_mask))
    counts = pc.value_counts(pc.drop_null(reasons)).to_pylist() if len(pc.drop_null(reasons)) else []
    dropped = dict(sorted(((c["values"], int(c["counts"])) for c in counts), key=lambda kv: (-kv[1], kv[0])))
    return Combined(kept=kept, dropped=dropped, restored=restored, provenance=provenance(tables))
