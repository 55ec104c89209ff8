"""Spark building blocks of filter and dedup: the filter rules and the URL normal form as column
expressions, the curation session, and the table-returning API (``filter_table(..., engine="spark")``,
``dedup_table(..., engine="spark")``), which brings the table back to the driver.

The commands (``ccmb filter|dedup|build-shards --engine spark``) run end to end on the executors instead,
nothing per row on the driver: :mod:`ccmb.corpus.spark_dist` and :mod:`ccmb.corpus.build_spark`. The
table-returning API below:

* filter: Spark reads the parquet files itself and evaluates the rules as column expressions
  (Java regexes equivalent to the RE2 ones of :mod:`ccmb.corpus.filter`); only the decision columns are
  collected.
* dedup: URL and SHA-256 groups are Spark window aggregations (lowest key per group); pHashes are computed
  by Spark tasks, one per tar (the tars must be on storage every executor reads); LSH candidate pairs of
  pHash and MinHash come from Spark groups by (band, bucket) with the exact check in Spark SQL (Hamming
  distance of the hash variants; Jaccard of the n-gram sets). Only dropped rows and verified edges come
  back to the driver, which forms the same star groups as in-process (numpy) and writes the table. The
  driver holds the key/status columns of the metadata (for the output table).

Sessions come only from :func:`ccmb.spark.get_spark_session`.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import groups, minhash
from .dedup import (REASON_UNDECODABLE, DedupConfig, LevelDrops, caption_texts, drops_from_reps,
                    eligible_by_tar, phash_bands_of_variants, raise_missing)
from .filter import FILTER_COLUMNS, NON_CJK_CLASS, TEXT_COLUMNS, FilterConfig
from .phash import _phash_job
from .table import DECISION_SCHEMA, REASON_NOT_DOWNLOADED, list_parquets, sort_by_key
from .urlnorm import (DEFAULT_PORT, FRAGMENT, MULTI_AMP, QMARK_AMP, TRACKING_PARAM, TRAILING_SEP,
                      TRAILING_SLASH, URL_PARTS)

logger = logging.getLogger(__name__)

TRIM_JAVA = r"^[ \t\n\r\f\x0B\u3000]+|[ \t\n\r\f\x0B\u3000]+$"
WS_TRIM_JAVA = r"^[ \t\n\r\f\x0B]+|[ \t\n\r\f\x0B]+$"
SPARK_TYPES = {"width": "int", "height": "int", "original_width": "int", "original_height": "int"}


def _session(spark=None):
    if spark is not None:
        return spark
    from ..spark import get_spark_session

    # Python workers must run this interpreter (numpy, pyarrow, ccmb); a cluster sets its own.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    return get_spark_session(app_name="ccmb-curation")


def read_metadata_df(spark, input_dir, columns: List[str]):
    """The download folder's parquet files as a Spark DataFrame with ``columns`` and ``shard``."""
    from pyspark.sql import functions as F

    paths = [str(p) for p in list_parquets(input_dir)]
    df = spark.read.option("mergeSchema", "true").parquet(*paths)
    for c in columns:
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast(SPARK_TYPES.get(c, "string")))
    shard = F.concat(F.regexp_extract(F.input_file_name(), r"([0-9]+)\.parquet$", 1), F.lit(".tar"))
    return df.select(*[F.col(c) for c in columns], shard.alias("shard"))


def with_text_measures(df, config: FilterConfig):
    """``df`` plus ``_text_len`` and ``_cjk_len`` of the trimmed text, each computed once per row (the rules
    read them several times; inline, Spark would trim and scan the text once per rule)."""
    from pyspark.sql import functions as F

    text = F.col(config.text_field)
    if config.text_field == "caption":
        text = F.coalesce(text, F.col("title"))
    df = df.withColumn("_text", F.regexp_replace(text, TRIM_JAVA, ""))
    cjk = F.coalesce(F.length(F.regexp_replace(F.col("_text"), NON_CJK_CLASS, "")), F.lit(0)) \
        if config.min_chinese_share else F.lit(0)
    return df.select(*[c for c in df.columns if c != "_text"], F.coalesce(F.length("_text"), F.lit(0)).alias("_text_len"),
                     cjk.alias("_cjk_len"))


def filter_reason_column(config: FilterConfig):
    """The filter rules of ``config`` as one Spark column (null = kept), first failing rule wins; reads the
    columns of :func:`with_text_measures`."""
    from pyspark.sql import functions as F

    rules = [(F.coalesce(F.col("status"), F.lit("")) != "success", REASON_NOT_DOWNLOADED)]
    if config.size_rules:
        w = F.coalesce(F.col("original_width"), F.col("width")).cast("double")
        h = F.coalesce(F.col("original_height"), F.col("height")).cast("double")
        rules.append((w.isNull() | h.isNull(), "unknown_size"))
        short, long_ = F.least(w, h), F.greatest(w, h)
        if config.min_side:
            rules.append((short < float(config.min_side), "too_small"))
        if config.max_ratio:
            rules.append((long_ > short * float(config.max_ratio), "aspect_ratio"))
    length = F.col("_text_len")
    if config.min_text_len:
        rules.append((length < config.min_text_len, "text_too_short"))
    if config.max_text_len:
        rules.append((length > config.max_text_len, "text_too_long"))
    if config.min_chinese_share:
        rules.append((F.col("_cjk_len").cast("double") < length.cast("double") * float(config.min_chinese_share),
                      "low_chinese_share"))
    pattern = config.blocklist_regex()
    if pattern:
        joined = F.concat_ws("\n", *[F.coalesce(F.col(c), F.lit("")) for c in TEXT_COLUMNS])
        rules.append((F.lower(joined).rlike(pattern), "blocklist"))
    expr = None
    for cond, reason in rules:
        expr = F.when(cond, F.lit(reason)) if expr is None else expr.when(cond, F.lit(reason))
    return expr.otherwise(F.lit(None).cast("string"))


def spark_filter_table(input_dir, config: FilterConfig, spark=None) -> pa.Table:
    """The filter decision table computed on Spark."""
    from pyspark.sql import functions as F

    spark = _session(spark)
    df = with_text_measures(read_metadata_df(spark, input_dir, FILTER_COLUMNS), config)
    reason = filter_reason_column(config)
    out = df.select(F.col("key"), F.col("shard"), reason.isNull().alias("keep"), reason.alias("reason"),
                    F.lit(None).cast("string").alias("duplicate_of"))
    return sort_by_key(out.toArrow().cast(DECISION_SCHEMA))


def spark_normalize_url(col):
    """:func:`ccmb.corpus.urlnorm.normalize_urls` as a Spark column expression."""
    from pyspark.sql import functions as F

    u = F.regexp_replace(F.regexp_replace(col, WS_TRIM_JAVA, ""), FRAGMENT, "")
    host = F.regexp_replace(F.lower(F.regexp_extract(u, URL_PARTS, 2)), DEFAULT_PORT, "")
    path = F.regexp_replace(F.regexp_extract(u, URL_PARTS, 3), TRAILING_SLASH, "")
    q = F.regexp_extract(u, URL_PARTS, 4)
    q = F.regexp_replace(q, TRACKING_PARAM, "$1")
    q = F.regexp_replace(q, MULTI_AMP, "&")
    q = F.regexp_replace(q, QMARK_AMP, "?")
    q = F.regexp_replace(F.regexp_replace(q, TRAILING_SEP, ""), TRAILING_SEP, "")
    norm = F.when(u.rlike(URL_PARTS), F.concat(F.lit("//"), host, path, q)).otherwise(u)
    return F.when(F.coalesce(norm, F.lit("")) == "", F.lit(None).cast("string")).otherwise(norm)


def _rows_of(keys: pa.Array, meta: pa.Table) -> np.ndarray:
    return pc.index_in(keys, value_set=meta.column("key")).to_numpy(zero_copy_only=False).astype(np.int64)


def _exact_level(spark, meta: pa.Table, eligible: np.ndarray, column, reason: str) -> LevelDrops:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = np.flatnonzero(eligible)
    if not len(rows):
        return LevelDrops(reason, np.zeros(0, np.int64), np.zeros(0, np.int64))
    sub = meta.select(["key", column]).take(pa.array(rows))
    typ = "string"
    if column == "sha256":  # packed to 32 bytes by dedup_table
        sub = sub.set_column(1, column, sub.column(column).cast(pa.binary()))
        typ = "binary"
    df = spark.createDataFrame(sub.to_pandas(), schema=f"key string, {column} {typ}")
    value = spark_normalize_url(F.col("url")) if column == "url" else F.col(column)
    df = df.select("key", value.alias("v")).where(F.col("v").isNotNull())
    rep = F.min("key").over(Window.partitionBy("v"))
    dropped = df.withColumn("rep", rep).where(F.col("rep") != F.col("key")).select("key", "rep").toArrow()
    return LevelDrops(reason, _rows_of(dropped.column("key"), meta), _rows_of(dropped.column("rep"), meta))


def spark_url_level(spark, input_dir, meta: pa.Table, eligible: np.ndarray, config: DedupConfig):
    return [_exact_level(spark, meta, eligible, "url", "duplicate_url")]


def spark_sha256_level(spark, input_dir, meta: pa.Table, eligible: np.ndarray, config: DedupConfig):
    return [_exact_level(spark, meta, eligible, "sha256", "duplicate_sha256")]


def _edges(spark, bands: np.ndarray, values, value_schema: str, check, node_of_item=None) -> tuple:
    """Verified LSH edges between nodes, computed by a Spark self-join on (band, bucket).

    ``bands`` has one row per item; ``node_of_item`` maps items to nodes (default: item = node);
    ``values`` are per-node columns the ``check`` (on ``<col>_a``/``<col>_b``) reads."""
    from pyspark.sql import functions as F
    import pandas as pd

    if not len(bands):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    m = len(bands)
    node_of_item = np.arange(m, dtype=np.int64) if node_of_item is None else node_of_item.astype(np.int64)
    items = spark.createDataFrame(pd.DataFrame({"node": node_of_item, "bands": list(bands)}),
                                  schema="node long, bands array<long>")
    n_nodes = int(node_of_item.max()) + 1
    pdf = {"node": np.arange(n_nodes, dtype=np.int64)}
    pdf.update(values)
    df = spark.createDataFrame(pd.DataFrame(pdf), schema=f"node long, {value_schema}")
    from .spark_dist import verified_band_edges

    ex = items.select("node", F.posexplode("bands").alias("band", "bucket"))
    edges = verified_band_edges(ex, df, check).toArrow()
    return (edges.column("a").to_numpy().astype(np.int64), edges.column("b").to_numpy().astype(np.int64))


def spark_hash_rows(spark, input_dir: Path, meta: pa.Table, eligible: np.ndarray, job=None):
    """pHash variants of the eligible rows computed by Spark tasks (one per tar):
    (hashes (n, VARIANTS) int64, present mask, sorted undecodable rows)."""
    from .phash import VARIANTS

    n = meta.num_rows
    by_tar = eligible_by_tar(meta, eligible)
    jobs = [(str(Path(input_dir) / s), sorted(keys)) for s, keys in sorted(by_tar.items())]
    results = spark.sparkContext.parallelize(jobs, max(1, len(jobs))).map(job or _phash_job).collect() \
        if jobs else []
    hashes = np.zeros((n, VARIANTS), np.int64)
    present = np.zeros(n, bool)
    bad: List[int] = []
    for keys, values, errors in results:
        idx = _rows_of(pa.array(keys, pa.string()), meta)
        hashes[idx] = values
        present[idx] = True
        bad.extend(_rows_of(pa.array(list(errors), pa.string()), meta).tolist())
        for msg in errors.values():
            logger.warning("phash: %s", msg)
    bad_rows = np.sort(np.asarray(bad, np.int64))
    missing = np.setdiff1d(np.flatnonzero(eligible & ~present), bad_rows)
    if len(missing):
        raise_missing(meta, missing)
    return hashes, present, bad_rows


def spark_phash_level(spark, input_dir, meta: pa.Table, eligible: np.ndarray, config: DedupConfig):
    from pyspark.sql import functions as F

    n = meta.num_rows
    hashes, present, bad_rows = spark_hash_rows(spark, input_dir, meta, eligible)
    prow = np.flatnonzero(present)
    uniq, node = groups.unique_nodes(hashes[prow].view(np.uint64), prow, n)
    items, node_of_item = phash_bands_of_variants(uniq, config.bands)
    t = config.phash_threshold

    def dist(x, y):
        return F.bit_count(F.col(x).bitwiseXOR(F.col(y)))

    from .phash import VARIANT_PAIRS

    check = F.least(*[dist(f"h{i}_a", f"h{j}_b") for i, j in VARIANT_PAIRS]) <= t
    u = uniq.view(np.int64)
    edges = _edges(spark, items, {f"h{j}": u[:, j] for j in range(u.shape[1])},
                   ", ".join(f"h{j} long" for j in range(u.shape[1])), check, node_of_item=node_of_item)
    reps = groups.star_reps(node, len(uniq), edges)
    return [LevelDrops(REASON_UNDECODABLE, bad_rows, np.full(len(bad_rows), -1, np.int64)),
            drops_from_reps(reps, "duplicate_phash")]


def _signature_batches(params: minhash.MinHashParams):
    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            texts = batch.column(1).to_pylist()
            sig, _ = minhash.signatures(texts, params)
            grams = [sorted(minhash.ngrams(t, params.ngram)) for t in texts]
            yield pa.RecordBatch.from_arrays(
                [batch.column(0), pa.array(list(sig.astype(np.int64)), pa.list_(pa.int64())),
                 pa.array(grams, pa.list_(pa.string()))], names=["node", "sig", "grams"])
    return fn


def spark_caption_level(spark, input_dir, meta: pa.Table, eligible: np.ndarray, config: DedupConfig):
    from pyspark.sql import functions as F

    n = meta.num_rows
    params = config.minhash
    rows = np.flatnonzero(eligible)
    none = [drops_from_reps(np.full(n, -1, np.int64), "duplicate_caption")]
    texts = minhash.normalize_texts(caption_texts(meta, config.text_field)).take(pa.array(rows))
    valid = pc.fill_null(pc.greater(pc.utf8_length(texts), 0), False).to_numpy(zero_copy_only=False)
    rows = rows[valid]
    if not len(rows):
        return none
    enc = texts.filter(pa.array(valid)).dictionary_encode()
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    uniq = enc.dictionary
    node = np.full(n, -1, np.int64)
    node[rows] = enc.indices.to_numpy(zero_copy_only=False)
    df = spark.createDataFrame(pa.table({"node": pa.array(np.arange(len(uniq)), pa.int64()),
                                         "text": uniq}).to_pandas(), schema="node long, text string")
    res = df.mapInArrow(_signature_batches(params), "node long, sig array<long>, grams array<string>").toArrow()
    res = res.sort_by("node")
    sig = np.stack(res.column("sig").to_pylist()).astype(np.uint32)
    grams = res.column("grams").to_pylist()
    inter = F.size(F.array_intersect("g_a", "g_b")).cast("double")
    check = inter / F.size(F.array_union("g_a", "g_b")).cast("double") >= F.lit(float(config.caption_threshold))
    edges = _edges(spark, minhash.band_values(sig, params), {"g": grams}, "g array<string>", check)
    return [drops_from_reps(groups.star_reps(node, len(uniq), edges), "duplicate_caption")]


def spark_dedup_levels(input_dir, meta: pa.Table, eligible: np.ndarray, config: DedupConfig,
                       spark=None) -> List[LevelDrops]:
    """Run the enabled dedup levels on Spark; returns each level's drops (rows of ``meta``)."""
    from .dedup import run_levels

    return run_levels(Path(input_dir), meta, eligible, config, engine="spark", spark=spark)


def spark_available() -> Optional[str]:
    """None when pyspark imports, else the reason."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def session(master: Optional[str] = None, conf: Optional[dict] = None):
    """A Spark session for the curation commands (from :func:`ccmb.spark.get_spark_session`); ``conf`` are
    Spark settings (``--spark-conf KEY=VALUE``)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from ..spark import get_spark_session

    return get_spark_session(master, app_name="ccmb-curation", conf=conf or None)
