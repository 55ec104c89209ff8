"""Curation end to end on Spark executors: nothing per row comes back to the driver.

``ccmb filter|dedup --engine spark`` run here. The download folder's parquet files are read by the
executors; every step is a DataFrame job; the decision table is written by the executors as a partitioned
table (:mod:`ccmb.corpus.parts`: part files in key order, then the marker, written last by the driver with
each part's size, rows and SHA-256 computed by Spark tasks). The driver only holds per-reason counts,
the level list and a handful of example keys for error messages, so its memory does not grow with the
corpus.

Groups are formed on the executors with the same semantics as in-process (:mod:`ccmb.corpus.dedup`):

* exact levels (URL, SHA-256): the lowest key of each equal value (a window over the value);
* near-duplicate levels (pHash, caption): nodes are distinct values (their id is their lowest key);
  LSH candidates are a self-join on (band, bucket), each verified with the exact measure; star groups are
  the *lexicographically first maximal independent set* of the verified graph, computed in rounds: a node
  whose lower neighbours are all decided becomes a centre when none of them is a centre, else it joins
  the lowest centre among them. This is exactly the greedy order of :func:`ccmb.corpus.groups.star_reps`
  (nodes visited by lowest key; a centre takes its undecided neighbours), so both engines give the same
  table; the number of rounds is the longest chain of lower neighbours, small for duplicate graphs.

``duplicate_of`` pointers across levels are followed (a join per level) so each names a kept sample.
Intermediate results are written to a scratch folder next to the output (parquet, removed at the end):
the executors spill to disk, lineage stays short.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa

from . import parts
from .dedup import REASON_UNDECODABLE, DedupConfig
from .filter import FILTER_COLUMNS, FilterConfig
from .table import REASON_NOT_DOWNLOADED, CurationError, Summary, check_source
from ..types import PathLike

logger = logging.getLogger(__name__)

OUT_COLUMNS = ("key", "shard", "keep", "reason", "duplicate_of")
MAX_ROUNDS = 10_000


class Scratch:
    """A folder for intermediate DataFrames (parquet written by the executors, read back)."""

    def __init__(self, spark, output: Path) -> None:
        self.spark = spark
        self.root = output.with_name(output.name + ".work")
        if self.root.exists():
            shutil.rmtree(self.root)
        self.count = 0

    def keep(self, df, name: str = "df"):
        self.count += 1
        path = self.root / f"{self.count:03d}-{name}"
        df.write.mode("overwrite").parquet(str(path))
        return self.spark.read.parquet(str(path))

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def write_table_df(spark, df, output: PathLike, *, kind: str, source: Optional[dict],
                   info: Optional[str] = None, seconds_from: Optional[float] = None) -> Summary:
    """Write a decision DataFrame as a partitioned table (key order), marker last; return the counts."""
    from pyspark.sql import functions as F

    output = Path(output)
    tmp = parts.temp_folder(output)
    (df.select(*OUT_COLUMNS).orderBy(F.col("key").asc_nulls_last())
     .write.option("compression", "snappy").parquet(str(tmp)))
    files = [str(p) for p in parts.part_files(tmp)]
    entries = spark.sparkContext.parallelize(files, max(1, len(files))).map(parts.part_entry).collect() \
        if files else []
    for junk in tmp.iterdir():  # Spark's own _SUCCESS and .crc files
        if junk.name.startswith(("_", ".")):
            junk.unlink()
    parts.finish(tmp, output, entries, kind=kind, info=info, source=source)
    counts = (spark.read.parquet(*[str(output / e["name"]) for e in entries]).where(F.col("reason").isNotNull())
              .groupBy("reason").count().collect()) if entries else []
    dropped = dict(sorted(((r["reason"], int(r["count"])) for r in counts), key=lambda kv: (-kv[1], kv[0])))
    rows = sum(e["rows"] for e in entries)
    return Summary(rows=rows, kept=rows - sum(dropped.values()), dropped=dropped, output=str(output),
                   seconds=time.time() - seconds_from if seconds_from else 0.0)


def spark_filter_to(input_dir: PathLike, config: FilterConfig, output: PathLike, spark) -> Summary:
    """``ccmb filter --engine spark``: the rules as column expressions, the table written by executors."""
    from pyspark.sql import functions as F

    from .engine_spark import filter_reason_column, read_metadata_df

    start = time.time()
    df = read_metadata_df(spark, input_dir, FILTER_COLUMNS)
    reason = filter_reason_column(config)
    out = df.select(F.col("key"), F.col("shard"), reason.isNull().alias("keep"), reason.alias("reason"),
                    F.lit(None).cast("string").alias("duplicate_of"))
    return write_table_df(spark, out, output, kind="filter", source=parts.source_of(input_dir), seconds_from=start)


def read_table_df(spark, path: PathLike, with_duplicate_of: bool = False):
    """A decision table (file or complete folder) as a DataFrame of key, keep, reason (and duplicate_of)."""
    from pyspark.sql import functions as F

    from .table import decision_metadata

    path = Path(path)
    decision_metadata(path)  # refuses a partial folder, naming it
    files = [str(path / p["name"]) for p in parts.read_marker(path)["parts"]] if path.is_dir() else [str(path)]
    df = spark.read.parquet(*files)
    if "reason" not in df.columns:
        df = df.withColumn("reason", F.lit(None).cast("string"))
    if with_duplicate_of and "duplicate_of" not in df.columns:
        df = df.withColumn("duplicate_of", F.lit(None).cast("string"))
    return df.select("key", "keep", "reason", *(["duplicate_of"] if with_duplicate_of else []))


def _check_unique(df, input_dir) -> None:
    from pyspark.sql import functions as F

    dup = df.where(F.col("key").isNotNull()).groupBy("key").count().where(F.col("count") > 1).limit(5).collect()
    if dup:
        raise CurationError(f"{input_dir}: sample keys are not unique, e.g. {sorted(r['key'] for r in dup)}")


def star_centres(spark, edges, scratch: Scratch):
    """Per node of the verified ``edges`` (columns a < b, node ids ordered like keys): its centre, by the
    greedy star rule (see the module docstring). Returns a DataFrame (node, centre)."""
    from pyspark.sql import functions as F

    edges = scratch.keep(edges.select("a", "b").distinct(), "edges")
    status = edges.select(F.col("a").alias("node")).union(edges.select(F.col("b").alias("node"))).distinct()
    status = status.select("node", F.lit("U").alias("st"), F.lit(None).cast("string").alias("centre"))
    status = scratch.keep(status, "status")
    for rnd in range(MAX_ROUNDS):
        lower = edges.join(status.select(F.col("node").alias("a"), F.col("st").alias("st_a")), "a")
        agg = lower.groupBy(F.col("b").alias("node")).agg(
            F.sum(F.when(F.col("st_a") == "U", 1).otherwise(0)).alias("und"),
            F.min(F.when(F.col("st_a") == "C", F.col("a"))).alias("minc"))
        joined = status.join(agg, "node", "left")
        ready = (F.col("st") == "U") & (F.coalesce(F.col("und"), F.lit(0)) == 0)
        status = joined.select(
            "node",
            F.when(ready, F.when(F.col("minc").isNull(), F.lit("C")).otherwise(F.lit("N"))).otherwise(F.col("st"))
            .alias("st"),
            F.when(ready, F.coalesce(F.col("minc"), F.col("node"))).otherwise(F.col("centre")).alias("centre"))
        status = scratch.keep(status, f"status{rnd}")
        if not status.where(F.col("st") == "U").limit(1).count():
            logger.info("star groups: %d rounds", rnd + 1)
            return status.select("node", "centre")
    raise RuntimeError("star groups did not converge")  # pragma: no cover


def _node_drops(spark, members, edges, reason: str, scratch: Scratch):
    """Drops of a near-duplicate level: ``members`` (key, node), verified ``edges`` (a, b) between nodes."""
    from pyspark.sql import functions as F

    centres = star_centres(spark, edges, scratch)
    rep = members.join(centres, "node", "left").select(
        "key", F.coalesce(F.col("centre"), F.col("node")).alias("rep"))
    return rep.where(F.col("rep") != F.col("key")).select("key", F.lit(reason).alias("r"),
                                                           F.col("rep").alias("d"))


def _exact_drops(elig, value, reason: str):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = elig.select("key", value.alias("v")).where(F.col("v").isNotNull())
    rep = F.min("key").over(Window.partitionBy("v"))
    return df.withColumn("rep", rep).where(F.col("rep") != F.col("key")).select(
        "key", F.lit(reason).alias("r"), F.col("rep").alias("d"))


def verified_band_edges(items, values, check):
    """Verified edges from (node, band, bucket) items: a self-join on (band, bucket), the exact ``check``
    on columns ``<name>_a``/``<name>_b`` of ``values`` (node, ...)."""
    from pyspark.sql import functions as F

    a, b = items.alias("x"), items.alias("y")
    pairs = (a.join(b, (F.col("x.band") == F.col("y.band")) & (F.col("x.bucket") == F.col("y.bucket"))
                    & (F.col("x.node") < F.col("y.node")))
             .select(F.col("x.node").alias("a"), F.col("y.node").alias("b")).distinct())
    va = values.select(*[F.col(c).alias(f"{c}_a") for c in values.columns])
    vb = values.select(*[F.col(c).alias(f"{c}_b") for c in values.columns])
    pairs = pairs.join(va, F.col("a") == F.col("node_a")).join(vb, F.col("b") == F.col("node_b"))
    return pairs.where(check).select("a", "b")


def _caption_features(params, threshold_ngram: int):
    """mapInArrow: (node, text) -> (node, bands, grams) with the in-process MinHash code."""
    from . import minhash

    def fn(batches):
        for batch in batches:
            texts = batch.column(1).to_pylist()
            sig, _ = minhash.signatures(texts, params)
            bands = minhash.band_values(sig, params) if len(texts) else np.zeros((0, params.bands), np.int64)
            grams = [sorted(minhash.ngrams(t, params.ngram)) for t in texts]
            yield pa.RecordBatch.from_arrays(
                [batch.column(0), pa.array(list(bands), pa.list_(pa.int64())), pa.array(grams, pa.list_(pa.string()))],
                names=["node", "bands", "grams"])
    return fn


def _normalise_texts(batches):
    from . import minhash

    for batch in batches:
        yield pa.RecordBatch.from_arrays([batch.column(0), minhash.normalize_texts(batch.column(1))],
                                         names=["key", "norm"])


def _caption_level(spark, elig, config: DedupConfig, scratch: Scratch):
    from pyspark.sql import functions as F

    text = F.col(config.text_field)
    if config.text_field == "caption":
        text = F.coalesce(text, F.col("title"))
    norm = elig.select("key", text.alias("text")).mapInArrow(_normalise_texts, "key string, norm string")
    norm = scratch.keep(norm.where(F.length("norm") > 0), "norm")
    nodes = norm.groupBy("norm").agg(F.min("key").alias("node"))
    members = norm.join(nodes, "norm").select("key", "node")
    feats = scratch.keep(nodes.select("node", "norm").mapInArrow(
        _caption_features(config.minhash, config.minhash.ngram), "node string, bands array<long>, grams array<string>"),
        "captionfeats")
    items = feats.select("node", F.posexplode("bands").alias("band", "bucket"))
    inter = F.size(F.array_intersect("g_a", "g_b")).cast("double")
    check = inter / F.size(F.array_union("g_a", "g_b")).cast("double") >= F.lit(float(config.caption_threshold))
    edges = verified_band_edges(items, feats.select("node", F.col("grams").alias("g")), check)
    return [_node_drops(spark, members, edges, "duplicate_caption", scratch)]


def _phash_rows(input_dir: str):
    """flatMap: (tar name, keys) -> (key, h0, h1, h2, error) rows, hashed in the task."""
    from .phash import _phash_job

    def fn(item):
        shard, keys = item
        got_keys, values, errors = _phash_job((str(Path(input_dir) / shard), sorted(keys)))
        out = [(k, int(v[0]), int(v[1]), int(v[2]), None) for k, v in zip(got_keys, np.asarray(values, np.int64))]
        out += [(k, None, None, None, str(msg)) for k, msg in errors.items()]
        return out
    return fn


def _phash_level(spark, input_dir: Path, elig, config: DedupConfig, scratch: Scratch):
    from pyspark.sql import functions as F

    from .groups import phash_band_ranges
    from .phash import VARIANT_PAIRS, VARIANTS

    by_tar = elig.groupBy("shard").agg(F.collect_list("key").alias("keys"))
    n_tars = max(1, by_tar.count())
    rdd = by_tar.rdd.map(lambda r: (r["shard"], list(r["keys"]))).repartition(n_tars) \
        .flatMap(_phash_rows(str(input_dir)))
    hashed = scratch.keep(spark.createDataFrame(
        rdd, schema="key string, h0 long, h1 long, h2 long, error string"), "phash")
    missing = elig.select("key", "shard").join(hashed, "key", "left_anti").limit(5).collect()
    if missing:
        r = missing[0]
        raise CurationError(f"{r['shard']}: sample {r['key']} is in the parquet as downloaded but not in the tar")
    for r in hashed.where(F.col("error").isNotNull()).limit(20).collect():
        logger.warning("phash: %s", r["error"])
    bad = hashed.where(F.col("error").isNotNull()).select(
        "key", F.lit(REASON_UNDECODABLE).alias("r"), F.lit(None).cast("string").alias("d"))
    good = hashed.where(F.col("error").isNull())
    hcols = [f"h{j}" for j in range(VARIANTS)]
    nodes = good.groupBy(*hcols).agg(F.min("key").alias("node"))
    nodes = scratch.keep(nodes, "phashnodes")
    members = good.join(nodes, hcols).select("key", "node")
    items = None
    for j in range(VARIANTS):
        for i, (shift, width) in enumerate(phash_band_ranges(config.bands)):
            bucket = F.shiftrightunsigned(F.col(f"h{j}"), shift).bitwiseAND(F.lit((1 << width) - 1))
            part = nodes.select("node", F.lit(i).alias("band"), bucket.alias("bucket"))
            items = part if items is None else items.union(part)
    items = items.distinct()

    def dist(x, y):
        return F.bit_count(F.col(x).bitwiseXOR(F.col(y)))

    check = F.least(*[dist(f"h{i}_a", f"h{j}_b") for i, j in VARIANT_PAIRS]) <= config.phash_threshold
    edges = verified_band_edges(items, nodes.select("node", *hcols), check)
    return [bad, _node_drops(spark, members, edges, "duplicate_phash", scratch)]


def spark_dedup_to(input_dir: PathLike, config: DedupConfig, output: PathLike, spark,
                   keep_tables: Sequence[PathLike] = ()) -> Summary:
    """``ccmb dedup --engine spark``: every level on the executors, the table written by them."""
    from pyspark.sql import functions as F

    from .engine_spark import read_metadata_df, spark_normalize_url

    start = time.time()
    input_dir, output = Path(input_dir), Path(output)
    for t in keep_tables:
        check_source(t, input_dir)
    df = read_metadata_df(spark, input_dir, config.columns())
    _check_unique(df, input_dir)
    scratch = Scratch(spark, output)
    try:
        ok = F.coalesce(F.col("status"), F.lit("")) == "success"
        state = df.withColumn("reason", F.when(~ok, F.lit(REASON_NOT_DOWNLOADED)).otherwise(
            F.lit(None).cast("string"))).withColumn("duplicate_of", F.lit(None).cast("string"))
        for t in keep_tables:  # the first table that drops a row names the reason
            tab = read_table_df(spark, t).select(
                "key", F.when(~F.coalesce(F.col("keep"), F.lit(False)), F.coalesce(F.col("reason"), F.lit("dropped")))
                .alias("t_reason"), F.lit(True).alias("t_has"))
            state = state.join(tab, "key", "left").withColumn(
                "reason", F.coalesce(F.col("reason"), F.when(F.col("t_has").isNull(), F.lit(f"not_in:{Path(t).name}"))
                                     .otherwise(F.col("t_reason")))).drop("t_reason", "t_has")
        state = scratch.keep(state, "state")
        for name in config.levels:
            t0 = time.time()
            elig = state.where(F.col("reason").isNull() & F.col("key").isNotNull())
            if name == "url":
                drops = [_exact_drops(elig, spark_normalize_url(F.col("url")), "duplicate_url")]
            elif name == "sha256":
                sha = F.when(F.col("sha256").rlike("^[0-9a-fA-F]{64}$"), F.lower(F.col("sha256")))
                drops = [_exact_drops(elig, sha, "duplicate_sha256")]
            elif name == "caption":
                drops = _caption_level(spark, elig, config, scratch)
            elif name == "phash":
                drops = _phash_level(spark, input_dir, elig, config, scratch)
            elif name == "semdedup":
                from .semantic import spark_semantic_drops

                drops = spark_semantic_drops(spark, elig, config, scratch)
            else:
                raise ValueError(f"dedup level {name!r} has no distributed Spark implementation")
            all_drops = drops[0]
            for d in drops[1:]:
                all_drops = all_drops.union(d)
            state = state.join(all_drops, "key", "left").select(
                *[c for c in state.columns if c not in ("reason", "duplicate_of")],
                F.coalesce(F.col("reason"), F.col("r")).alias("reason"),
                F.coalesce(F.col("duplicate_of"), F.col("d")).alias("duplicate_of"))
            state = scratch.keep(state, name)
            logger.info("dedup level %s on Spark in %.1fs", name, time.time() - t0)
        for _ in range(len(config.levels) + 1):  # follow duplicate_of to a kept sample
            target = state.select(F.col("key").alias("duplicate_of"), F.col("duplicate_of").alias("next"))
            state = scratch.keep(state.join(target, "duplicate_of", "left").withColumn(
                "duplicate_of", F.coalesce(F.col("next"), F.col("duplicate_of"))).drop("next"), "chains")
            chained = state.alias("s").join(state.alias("t"), F.col("s.duplicate_of") == F.col("t.key")).where(
                F.col("t.duplicate_of").isNotNull()).limit(1).count()
            if not chained:
                break
        out = state.select("key", "shard", F.col("reason").isNull().alias("keep"), "reason", "duplicate_of")
        return write_table_df(spark, out, output, kind="dedup", source=parts.source_of(input_dir),
                              seconds_from=start)
    finally:
        scratch.close()


def table_paths(tables: Sequence[PathLike]) -> List[str]:
    return [str(Path(t)) for t in tables]
