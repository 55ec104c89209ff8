"""``ccmb build-shards --engine spark``: the plan computed by the executors, each output shard written by a
Spark task.

* plan: the download's key/status/shard columns joined with every decision table on the executors; a row
  is kept when it was downloaded and every table keeps it (the first table that drops it names the
  reason, as in-process). Kept rows are ordered by key, or by their seeded shuffle rank
  (:func:`ccmb.corpus.build.shuffle_rank`, computed per row in the tasks, so both engines give the same
  plan), numbered with ``zipWithIndex`` and cut into shards; the plan is written as parquet parts under
  ``_build/plan/`` by the executors, then ``_build/plan.json`` by the driver (last);
* write: one task per output shard reads its rows from the plan files (row-group statistics prune the
  rest), writes the tar atomically and records ``_build/done/NNNNN.json``; a restart skips shards whose
  tar matches that record, so the build stays restartable shard by shard;
* provenance: as in-process (kind, fingerprint, drop count of every table; the decontamination report).

Tables made independently are combined keep-aware with the in-process rule of :mod:`ccmb.corpus.combine`,
on the executors (joins and a window, nothing collected): when one table drops D as a duplicate of R, every
other table keeps D and the combination drops R, D is *restored*; for an exact level (``DedupLevel.exact``:
equal normalised URL / SHA-256) only the lowest key of each (R, value) group of such D, for a near-duplicate
level every such D. The plan records the restored counts per reason, as in-process.
The output folder and the download folder must be on storage every executor reads and writes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import atomic
from .. import shards as fmt
from .table import REASON_NOT_DOWNLOADED, decision_metadata
from ..types import PathLike

logger = logging.getLogger(__name__)

PLAN_DIR = "plan"


def _rank_batches(seed: int):
    def fn(batches):
        from .build import shuffle_rank

        for batch in batches:
            keys = batch.column(0)
            yield pa.RecordBatch.from_arrays([keys, batch.column(1), pa.array(shuffle_rank(keys, seed), pa.int64())],
                                             names=["key", "shard", "rank"])
    return fn


def _plan_rows(samples_per_shard: int):
    def fn(item):
        (key, shard), pos = item
        s, i = divmod(pos, samples_per_shard)
        return (int(s), fmt.make_key(int(s), int(i), samples_per_shard), key, shard)
    return fn


def _provenance(spark, tables: Sequence[PathLike], dropped_by: List[int]) -> Dict[str, Any]:
    from .parts import table_fingerprint

    entries, against, reports = [], [], []
    for t, dropped in zip(tables, dropped_by):
        meta = decision_metadata(t)
        kind = meta["kind"] or "unknown"
        entries.append({"path": str(Path(t).resolve()), "fingerprint": table_fingerprint(t), "kind": kind,
                        "dropped": int(dropped)})
        if kind == "decontaminate" and meta["info"]:
            info = json.loads(meta["info"])
            against += [a for a in info.get("against", []) if a not in against]
            if info.get("report") is not None:
                reports.append(info["report"])
    report = reports[0] if len(reports) == 1 else (
        {"datasets": {k: v for r in reports for k, v in r.get("datasets", {}).items()}, "reports": reports}
        if reports else None)
    return {"decision_tables": entries, "decontamination": {"against": against, "report": report}}


def spark_plan(spark, input_dir: Path, build_dir: Path, tables: Sequence[PathLike], samples_per_shard: int,
               shuffle: bool, seed: int) -> Dict[str, Any]:
    """Compute and write the plan on the executors; return the plan.json document (without params)."""
    from pyspark.sql import functions as F

    from .engine_spark import read_metadata_df
    from .spark_dist import read_table_df

    meta = read_metadata_df(spark, input_dir, ["key", "status"])
    ok = F.coalesce(F.col("status"), F.lit("")) == "success"
    df = meta.select("key", "shard", F.when(~ok, F.lit(REASON_NOT_DOWNLOADED)).alias("reason"),
                     (~ok).alias("nd"))
    dropped_by: List[int] = []
    for i, t in enumerate(tables):
        tab = read_table_df(spark, t, with_duplicate_of=True)
        dropped_by.append(tab.where(~F.coalesce(F.col("keep"), F.lit(False))).count())
        drop = ~F.coalesce(F.col("keep"), F.lit(False))
        tab = tab.select("key", F.when(drop, F.coalesce(F.col("reason"), F.lit("dropped"))).alias(f"r{i}"),
                         F.lit(True).alias(f"has{i}"), drop.alias(f"d{i}"),
                         F.when(drop, F.col("duplicate_of")).alias(f"dup{i}"),
                         F.when(drop, F.col("reason")).alias(f"raw{i}"))
        df = df.join(tab, "key", "left")
        df = df.withColumn("reason", F.coalesce(F.col("reason"), F.when(F.col(f"has{i}").isNull(), F.lit(
            f"not_in:{Path(t).name}")).otherwise(F.col(f"r{i}")))).drop(f"r{i}")
    df = df.localCheckpoint()
    df, restored = _restore(spark, input_dir, df, len(tables))
    counts = df.where(F.col("reason").isNotNull()).groupBy("reason").count().collect()
    dropped = dict(sorted(((r["reason"], int(r["count"])) for r in counts), key=lambda kv: (-kv[1], kv[0])))
    kept = df.where(F.col("reason").isNull() & F.col("key").isNotNull()).select("key", "shard")
    if shuffle:
        kept = kept.mapInArrow(_rank_batches(seed), "key string, shard string, rank long").orderBy("rank", "key")
    else:
        kept = kept.orderBy("key")
    rows = kept.select("key", "shard").rdd.map(tuple).zipWithIndex().map(_plan_rows(samples_per_shard))
    plan_dir = build_dir / PLAN_DIR
    plan = spark.createDataFrame(rows, schema="out_shard int, out_key string, key string, shard string")
    plan.write.mode("overwrite").parquet(str(plan_dir))
    stats = spark.read.parquet(str(plan_dir)).agg(F.count("*").alias("n"), F.max("out_shard").alias("m")).collect()[0]
    samples = int(stats["n"])
    return {"samples": samples, "dropped": dropped, "restored": restored, "plan_file": PLAN_DIR,
            "provenance": _provenance(spark, tables, dropped_by),
            "shards": int(stats["m"]) + 1 if samples else 0}


def exact_level_columns() -> Dict[str, str]:
    """{reason: metadata column} of the exact dedup levels (the level table's ``exact`` with a column): the
    values by which restored duplicates are regrouped (as :func:`ccmb.corpus.combine.combine_tables`)."""
    from .dedup import LEVELS

    out: Dict[str, str] = {}
    for lv in LEVELS.values():
        if lv.exact and lv.columns and lv.reason not in out:
            out[lv.reason] = lv.columns[0]
    return out


def _restore(spark, input_dir: Path, df, n_tables: int):
    """The keep-aware restore of :mod:`ccmb.corpus.combine` on the executors: (df with the restored rows
    kept, {reason: restored count}). A row only table i drops, as a duplicate of a row the combination drops,
    is restored (exact levels: the lowest key per (table, reason, kept copy, value))."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from .engine_spark import read_metadata_df, spark_normalize_url

    reps = df.select(F.col("key").alias("rep"), F.col("reason").alias("rep_reason"))
    lost = None
    for i in range(n_tables):
        only_i = F.col(f"d{i}") & ~F.col("nd") & F.col(f"dup{i}").isNotNull()
        for j in range(n_tables):
            if j != i:
                only_i = only_i & F.col(f"has{j}") & ~F.col(f"d{j}")
        part = (df.where(only_i).select("key", F.col(f"dup{i}").alias("rep"), F.col(f"raw{i}").alias("why"),
                                        F.lit(i).alias("tab"))
                .join(reps, "rep").where(F.col("rep_reason").isNotNull()).drop("rep_reason"))
        lost = part if lost is None else lost.unionByName(part)
    if lost is None:
        return df, {}
    lost = lost.localCheckpoint()
    if not lost.limit(1).count():
        return df, {}
    exact = exact_level_columns()
    cols = sorted(set(exact.values()))
    value = F.lit(None).cast("string")
    if cols:
        meta = read_metadata_df(spark, input_dir, ["key"] + cols)
        for reason, col in exact.items():
            v = spark_normalize_url(F.col(col)) if col == "url" else F.col(col)
            value = F.when(F.col("why") == reason, v.cast("string")).otherwise(value)
        lost = lost.join(meta.select("key", *cols), "key", "left")
    is_exact = F.col("why").isin(list(exact)) if exact else F.lit(False)
    first = F.row_number().over(Window.partitionBy("tab", "why", "rep", "value").orderBy("key")) == 1
    take = (lost.withColumn("value", value).withColumn("exact", is_exact).withColumn("first", first)
            .where(~F.col("exact") | F.col("first")).select("key", "tab", "why", "exact").localCheckpoint())
    counts = take.groupBy("tab", "why", "exact").count().collect()
    restored: Dict[str, int] = {}
    for r in sorted(counts, key=lambda r: (r["tab"], r["why"] or "")):
        restored[r["why"]] = restored.get(r["why"], 0) + int(r["count"])
    if restored:
        logger.warning("build-shards: restored %s: duplicates whose kept copy another table drops (otherwise "
                       "both copies would be lost)", ", ".join(f"{v} {k}" for k, v in restored.items()))
    near = sum(int(r["count"]) for r in counts if not r["exact"])
    if near:
        logger.warning("build-shards: %d restored near-duplicates were never compared with each other; for "
                       "exact results run dedup after the other steps: `ccmb dedup --keep filter.parquet ...`", near)
    back = take.select("key", F.lit(True).alias("restored"))
    df = df.join(back, "key", "left").withColumn(
        "reason", F.when(F.coalesce(F.col("restored"), F.lit(False)), F.lit(None).cast("string"))
        .otherwise(F.col("reason"))).drop("restored")
    return df.localCheckpoint(), restored


def _write_task(input_dir: str, output_dir: str, plan_path: str):
    def fn(s: int):
        from .build import TarIndex, _done_path, _finished, _write_shard

        out = Path(output_dir)
        name = fmt.shard_name(s)
        entry = _finished(out, name)
        if entry is not None:
            return name, entry, False
        rows = pq.read_table(plan_path, filters=[("out_shard", "=", s)])
        rows = rows.sort_by([("out_key", "ascending")])
        source = TarIndex(Path(input_dir))
        try:
            _write_shard(out, s, rows, source)
        finally:
            source.close()
        entry = fmt.shard_entry(out / f"{name}.tar")
        atomic.write_json(_done_path(out, name), entry)
        return name, entry, True
    return fn


def spark_write_shards(spark, input_dir: Path, output_dir: Path, saved: Dict[str, Any], summary) -> Dict[str, Any]:
    """Write every output shard in a Spark task (restartable); returns {tar name: manifest entry}."""
    from .build import BUILD_DIR

    n = int(saved["shards"])
    plan_path = str(output_dir / BUILD_DIR / saved.get("plan_file", "plan.parquet"))
    if not n:
        return {}
    results = spark.sparkContext.parallelize(list(range(n)), n).map(
        _write_task(str(input_dir), str(output_dir), plan_path)).collect()
    known: Dict[str, Any] = {}
    for name, entry, written in sorted(results, key=lambda r: r[0]):
        (summary.written if written else summary.skipped).append(name)
        known[f"{name}.tar"] = entry
    return known


__all__ = ["spark_plan", "spark_write_shards", "np"]
