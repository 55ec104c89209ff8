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

``duplicate_of`` pointers across levels are followed on the drops only (a small join per level) so each
names a kept sample. Few jobs: the corpus state is read once and cached by the executors (on their
local disks); each level computes its drops from it (the rows earlier levels dropped are excluded by an
anti-join with the accumulated drops, which are small); nothing is counted between steps except the
star rounds' "anything undecided?". Steps whose input is costly to recompute (pHash of the images, the
semantic vectors) still go to a scratch folder next to the output (parquet, removed at the end).
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
from ..spark import AUTO_SHUFFLE_FLAG
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
        self.cached: list = []

    def keep(self, df, name: str = "df"):
        self.count += 1
        path = self.root / f"{self.count:03d}-{name}"
        df.write.mode("overwrite").parquet(str(path))
        return self.spark.read.parquet(str(path))

    def cache(self, df):
        """``df`` cached by the executors on their local disks when first computed (streamed: a memory
        cache of a corpus-sized partition does not fit a small heap); released by close."""
        from pyspark import StorageLevel

        df = df.persist(StorageLevel.DISK_ONLY)
        self.cached.append(df)
        return df

    def close(self) -> None:
        for df in self.cached:
            df.unpersist()
        self.cached.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _part_entry_counts(path: str):
    """(marker entry, {reason: rows}) of one written part: one Spark task reads it once."""
    import pyarrow.parquet as pq

    reasons = pq.read_table(path, columns=["reason"]).column("reason").drop_null().value_counts()
    counts = {str(v["values"]): int(v["counts"]) for v in reasons.to_pylist()}
    return parts.part_entry(path), counts


def write_table_df(spark, df, output: PathLike, *, kind: str, source: Optional[dict],
                   info: Optional[str] = None, seconds_from: Optional[float] = None) -> Summary:
    """Write a decision DataFrame as a partitioned table (key order), marker last; return the counts.

    ``df`` is cached while it is written: the sort's range sampling and the write compute it once. The
    tasks that hash each part for the marker also count its reasons (no second read of the table)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    output = Path(output)
    tmp = parts.temp_folder(output)
    df = df.select(*OUT_COLUMNS).persist(StorageLevel.DISK_ONLY)
    try:
        df.orderBy(F.col("key").asc_nulls_last()).write.option("compression", "snappy").parquet(str(tmp))
    finally:
        df.unpersist()
    files = [str(p) for p in parts.part_files(tmp)]
    got = spark.sparkContext.parallelize(files, max(1, len(files))).map(_part_entry_counts).collect() \
        if files else []
    entries = [e for e, _ in got]
    dropped_counts: dict = {}
    for _, counts in got:
        for reason, n in counts.items():
            dropped_counts[reason] = dropped_counts.get(reason, 0) + n
    for junk in tmp.iterdir():  # Spark's own _SUCCESS and .crc files
        if junk.name.startswith(("_", ".")):
            junk.unlink()
    parts.finish(tmp, output, entries, kind=kind, info=info, source=source)
    dropped = dict(sorted(dropped_counts.items(), key=lambda kv: (-kv[1], kv[0])))
    rows = sum(e["rows"] for e in entries)
    return Summary(rows=rows, kept=rows - sum(dropped.values()), dropped=dropped, output=str(output),
                   seconds=time.time() - seconds_from if seconds_from else 0.0)


def spark_filter_to(input_dir: PathLike, config: FilterConfig, output: PathLike, spark) -> Summary:
    """``ccmb filter --engine spark``: the rules as column expressions, the table written by executors."""
    from pyspark.sql import functions as F

    from .engine_spark import filter_reason_column, read_metadata_df, with_text_measures

    start = time.time()
    size_shuffle_partitions(spark, input_dir)
    df = with_text_measures(read_metadata_df(spark, input_dir, FILTER_COLUMNS), config)
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


def check_unique_keys_spark(df, input_dir) -> None:
    """The Spark form of :func:`ccmb.corpus.table.check_unique_keys`: raise :class:`CurationError` naming
    ``input_dir`` and up to five repeated sample keys of the DataFrame ``df``."""
    from pyspark.sql import functions as F

    dup = df.where(F.col("key").isNotNull()).groupBy("key").count().where(F.col("count") > 1).limit(5).collect()
    if dup:
        raise CurationError(f"{input_dir}: sample keys are not unique, e.g. {sorted(r['key'] for r in dup)}")


#: Up to this many verified edges, star groups are formed in one executor task (numpy, the in-process
#: :func:`ccmb.corpus.groups.star_reps`); above it, in rounds of joins over all executors.
ONE_TASK_EDGES = 10_000_000


def _star_one_task(batches):
    """mapInArrow over all the edges (a, b) in one partition: (node, centre) by the in-process greedy."""
    import pyarrow.compute as pc

    from .groups import star_reps

    batches = list(batches)
    if not batches:
        return
    tab = pa.Table.from_batches(batches)
    ends = pa.concat_arrays([tab.column("a").combine_chunks(), tab.column("b").combine_chunks()])
    nodes = pc.unique(ends)
    nodes = nodes.take(pc.array_sort_indices(nodes))  # byte order of UTF-8 = Spark's string order
    ids = pc.index_in(ends, value_set=nodes).to_numpy(zero_copy_only=False).astype(np.int64)
    n, m = len(nodes), tab.num_rows
    reps = star_reps(np.arange(n, dtype=np.int64), n, (ids[:m], ids[m:]))
    yield pa.RecordBatch.from_arrays([nodes, nodes.take(pa.array(reps))], names=["node", "centre"])


def star_centres(spark, edges, scratch: Scratch):
    """Per node of the verified ``edges`` (columns a < b, node ids ordered like keys): its centre, by the
    greedy star rule (see the module docstring). Returns a DataFrame (node, centre).

    Up to :data:`ONE_TASK_EDGES` edges (counted once) the groups are formed in one executor task with
    the in-process code; above, one job per round: the round's status is checkpointed and counted
    ("anything undecided?") in one pass."""
    from pyspark.sql import functions as F

    edges = scratch.cache(edges.select("a", "b").distinct())
    n_edges = edges.count()
    if n_edges <= ONE_TASK_EDGES:  # the usual case: the whole graph in one executor task
        logger.info("star groups: %d edges in one task", n_edges)
        return edges.repartition(1).mapInArrow(_star_one_task, "node string, centre string")
    status = edges.select(F.col("a").alias("node")).union(edges.select(F.col("b").alias("node"))).distinct()
    status = status.select("node", F.lit("U").alias("st"), F.lit(None).cast("string").alias("centre"))
    for rnd in range(MAX_ROUNDS):
        lower = edges.join(status.select(F.col("node").alias("a"), F.col("st").alias("st_a")), "a")
        agg = lower.groupBy(F.col("b").alias("node")).agg(
            F.sum(F.when(F.col("st_a") == "U", 1).otherwise(0)).alias("und"),
            F.min(F.when(F.col("st_a") == "C", F.col("a"))).alias("minc"))
        joined = status.join(agg, "node", "left")
        ready = (F.col("st") == "U") & (F.coalesce(F.col("und"), F.lit(0)) == 0)
        # checkpointed by the executors as the count computes it: the next round's plan starts here
        # (a cached plan would nest every earlier round, twice per round)
        status = joined.select(
            "node",
            F.when(ready, F.when(F.col("minc").isNull(), F.lit("C")).otherwise(F.lit("N"))).otherwise(F.col("st"))
            .alias("st"),
            F.when(ready, F.coalesce(F.col("minc"), F.col("node"))).otherwise(F.col("centre")).alias("centre")
        ).localCheckpoint(eager=False)
        if not status.where(F.col("st") == "U").count():
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


#: All pairs (a < b) of the nodes ``ns`` sharing a (band, bucket), as Spark SQL.
_PAIRS = ("flatten(transform(sequence(0, size(ns) - 2), i -> transform(slice(ns, i + 2, size(ns) - i - 1), "
          "y -> named_struct('a', least(ns[i], y), 'b', greatest(ns[i], y)))))")


def candidate_pairs(items):
    """Distinct candidate pairs (a < b) of (node, band, bucket) items: grouped by (band, bucket) (no
    self-join), buckets of one node dropped first, pairs deduplicated before anything is verified."""
    from pyspark.sql import functions as F

    from pyspark.sql import Window

    # almost every bucket holds one node: count them first (one shuffle, codegen), so that the object
    # aggregation collecting node lists only sees shared buckets
    shared = items.withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("band", "bucket"))).where(F.col("n") > 1)
    grouped = shared.groupBy("band", "bucket").agg(F.collect_set("node").alias("ns")).where(F.size("ns") > 1)
    return grouped.select(F.explode(F.expr(_PAIRS)).alias("p")).select("p.a", "p.b").distinct()


def verified_band_edges(items, values, check):
    """Verified edges from (node, band, bucket) items: candidate pairs sharing a (band, bucket), the exact
    ``check`` on columns ``<name>_a``/``<name>_b`` of ``values`` (node, ...)."""
    from pyspark.sql import functions as F

    pairs = candidate_pairs(items)
    va = values.select(*[F.col(c).alias(f"{c}_a") for c in values.columns])
    vb = values.select(*[F.col(c).alias(f"{c}_b") for c in values.columns])
    pairs = pairs.join(va, F.col("a") == F.col("node_a")).join(vb, F.col("b") == F.col("node_b"))
    return pairs.where(check).select("a", "b")


def _caption_bands(params):
    """mapInArrow: (node, normalised text) -> (node, bands) with the in-process MinHash code (numpy)."""
    from . import minhash

    def fn(batches):
        for batch in batches:
            texts = batch.column(1).to_pylist()
            sig, _ = minhash.signatures(texts, params)
            bands = minhash.band_values(sig, params) if len(texts) else np.zeros((0, params.bands), np.int64)
            flat = pa.array(np.ascontiguousarray(bands).reshape(-1), pa.int64())
            yield pa.RecordBatch.from_arrays(
                [batch.column(0), pa.FixedSizeListArray.from_arrays(flat, params.bands).cast(pa.list_(pa.int64()))],
                names=["node", "bands"])
    return fn


def _jaccard_pairs(ngram: int, threshold: float):
    """mapInArrow: candidate pairs (a, b, text_a, text_b) -> the pairs whose exact n-gram Jaccard similarity
    reaches ``threshold`` (the in-process check, :func:`ccmb.corpus.minhash.jaccard`)."""
    from . import minhash

    def fn(batches):
        for batch in batches:
            ta, tb = batch.column(2).to_pylist(), batch.column(3).to_pylist()
            ok = [minhash.jaccard_sets(minhash.ngrams(x, ngram), minhash.ngrams(y, ngram)) >= threshold
                  for x, y in zip(ta, tb)]
            yield pa.RecordBatch.from_arrays([batch.column(0), batch.column(1)], names=["a", "b"]).filter(
                pa.array(ok, pa.bool_()))
    return fn


def _normalise_texts(batches):
    from . import minhash

    for batch in batches:
        yield pa.RecordBatch.from_arrays([batch.column(0), minhash.normalize_texts(batch.column(1))],
                                         names=["key", "norm"])


def _caption_level(spark, elig, config: DedupConfig, scratch: Scratch):
    """Nodes are distinct normalised captions named by their lowest key (a window, one shuffle); their
    MinHash bands give candidate pairs; each pair is verified in Python with the in-process Jaccard."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    text = F.col(config.text_field)
    if config.text_field == "caption":
        text = F.coalesce(text, F.col("title"))
    norm = elig.select("key", text.alias("text")).mapInArrow(_normalise_texts, "key string, norm string")
    norm = norm.where(F.length("norm") > 0)
    members = scratch.cache(norm.withColumn("node", F.min("key").over(Window.partitionBy("norm"))))
    nodes = members.where(F.col("key") == F.col("node")).select("node", "norm")
    bands = nodes.mapInArrow(_caption_bands(config.minhash), "node string, bands array<long>")
    pairs = candidate_pairs(bands.select("node", F.posexplode("bands").alias("band", "bucket")))
    pairs = (pairs.join(nodes.select(F.col("node").alias("a"), F.col("norm").alias("ta")), "a")
             .join(nodes.select(F.col("node").alias("b"), F.col("norm").alias("tb")), "b"))
    edges = pairs.select("a", "b", "ta", "tb").mapInArrow(
        _jaccard_pairs(config.minhash.ngram, float(config.caption_threshold)), "a string, b string")
    return [_node_drops(spark, members.select("key", "node"), edges, "duplicate_caption", scratch)]


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
    """``ccmb dedup --engine spark``: every level on the executors, the table written by them.

    The state (key, shard, base reason, the columns of the levels) is cached once; each level reads its
    eligible rows from it minus the rows earlier levels dropped (an anti-join with the accumulated drops);
    ``duplicate_of`` chains are followed on the drops; one final join writes the table."""
    from pyspark.sql import functions as F

    from .engine_spark import read_metadata_df, spark_normalize_url

    start = time.time()
    input_dir, output = Path(input_dir), Path(output)
    for t in keep_tables:
        check_source(t, input_dir)
    size_shuffle_partitions(spark, input_dir)
    df = read_metadata_df(spark, input_dir, config.columns())
    scratch = Scratch(spark, output)
    try:
        ok = F.coalesce(F.col("status"), F.lit("")) == "success"
        state = df.withColumn("reason", F.when(~ok, F.lit(REASON_NOT_DOWNLOADED)).otherwise(
            F.lit(None).cast("string"))).drop("status")
        for t in keep_tables:  # the first table that drops a row names the reason
            tab = read_table_df(spark, t).select(
                "key", F.when(~F.coalesce(F.col("keep"), F.lit(False)), F.coalesce(F.col("reason"), F.lit("dropped")))
                .alias("t_reason"), F.lit(True).alias("t_has"))
            state = state.join(tab, "key", "left").withColumn(
                "reason", F.coalesce(F.col("reason"), F.when(F.col("t_has").isNull(), F.lit(f"not_in:{Path(t).name}"))
                                     .otherwise(F.col("t_reason")))).drop("t_reason", "t_has")
        state = scratch.cache(state)
        check_unique_keys_spark(state, input_dir)  # also fills the cache
        base = state.where(F.col("reason").isNull() & F.col("key").isNotNull())
        dropped = None  # (key, r, d) of every level so far (a small share of the rows)
        for name in config.levels:
            elig = base if dropped is None else base.join(dropped.select("key"), "key", "left_anti")
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
            level = drops[0]
            for d in drops[1:]:
                level = level.union(d)
            level = scratch.cache(level.select("key", "r", "d"))
            dropped = level if dropped is None else dropped.union(level)
            logger.info("dedup level %s planned on Spark", name)
        final = state.select("key", "shard", "reason", F.lit(None).cast("string").alias("duplicate_of"))
        if dropped is not None:
            # a pointer names a row eligible at its level, dropped (if at all) by a later level: at most
            # one hop per level leads to a kept sample (or to a row dropped without pointer, as in-process)
            target = dropped.select(F.col("key").alias("d"), F.col("d").alias("next"))
            for _ in config.levels:
                dropped = dropped.join(target, "d", "left").select(
                    "key", "r", F.coalesce(F.col("next"), F.col("d")).alias("d"))
            final = state.join(dropped, "key", "left").select(
                "key", "shard", F.coalesce(F.col("reason"), F.col("r")).alias("reason"),
                F.col("d").alias("duplicate_of"))
        out = final.select("key", "shard", F.col("reason").isNull().alias("keep"), "reason", "duplicate_of")
        summary = write_table_df(spark, out, output, kind="dedup", source=parts.source_of(input_dir),
                                 seconds_from=start)
        logger.info("dedup on Spark in %.1fs", time.time() - start)
        return summary
    finally:
        scratch.close()


#: Shuffle input per partition when ccmb sizes ``spark.sql.shuffle.partitions`` (AQE coalesces further).
SHUFFLE_BYTES = 128 << 20
MAX_SHUFFLE_PARTITIONS = 20_000


def size_shuffle_partitions(spark, input_dir: PathLike) -> int:
    """Size ``spark.sql.shuffle.partitions`` to the download folder (its parquet bytes / 128 MB, at least
    one per core, a multiple of the cores) unless the user set it (``--spark-conf``); returns the value."""
    from .table import list_parquets

    if spark.conf.get(AUTO_SHUFFLE_FLAG, "false") != "true":
        return int(spark.conf.get("spark.sql.shuffle.partitions"))
    cores = max(1, spark.sparkContext.defaultParallelism)
    total = sum(p.stat().st_size for p in list_parquets(input_dir))
    n = min(MAX_SHUFFLE_PARTITIONS, max(1, -(-total // SHUFFLE_BYTES)))
    n = cores * -(-n // cores)
    spark.conf.set("spark.sql.shuffle.partitions", str(n))
    logger.info("spark.sql.shuffle.partitions=%d (%.0f MB of parquet, %d cores)", n, total / 2**20, cores)
    return n


def table_paths(tables: Sequence[PathLike]) -> List[str]:
    return [str(Path(t)) for t in tables]
