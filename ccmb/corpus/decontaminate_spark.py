"""``ccmb decontaminate --engine spark``: matching and the decision table on the executors.

The rule is the in-process one (:mod:`ccmb.corpus.decontaminate`), row by row; only where it runs differs:

* the evaluation index (hashes, SHA-256 digests, normalised texts of the downstream sets: small) is built
  on the driver and broadcast;
* exact bytes: the corpus ``sha256`` (64 hex digits, any case) joined with the evaluation digests;
* pHash: one Spark task per tar hashes its downloaded samples and matches them exhaustively against the
  broadcast evaluation hashes (:class:`~ccmb.corpus.decontaminate.TarMatcher`); only matches, undecodable
  images, samples missing from their tar and a count per tar leave the task;
* captions: corpus captions are normalised and MinHashed in the tasks with the in-process code; the
  candidates are the evaluation texts sharing a band bucket (the broadcast band table), each verified with
  the exact n-gram Jaccard; per corpus caption the best evaluation text (highest Jaccard, then the lowest
  text row) as in-process;
* the decision table is written by the executors as a partitioned table (marker, kind, source and the
  report in its info), through :func:`ccmb.corpus.spark_dist.write_table_df`.

The driver holds the index, counts and at most ``MAX_EXAMPLES`` examples per evaluation set: nothing per
corpus row. Intermediate results go to a scratch folder next to the output (removed at the end).
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pyarrow as pa

from . import minhash, parts
from .combine import REASON_EVAL_OVERLAP
from .decontaminate import (MAX_EXAMPLES, REASON_UNDECODABLE, DecontaminationConfig, DecontaminationResult, EvalIndex,
                            TarMatcher, all_matches)
from .table import DECISION_SCHEMA, REASON_NOT_DOWNLOADED, CurationError, Summary, sort_by_key
from ..types import PathLike

logger = logging.getLogger(__name__)

PHASH_SCHEMA = "kind string, key string, j int, dist int, hits array<int>, msg string, n long"
MAX_LOGGED_ERRORS = 20


# ------------------------------------------------------------------------------------ in the tasks

def _phash_task(input_dir: str, hashes_bc, threshold: int):
    """flatMap: (tar name, keys) -> rows of PHASH_SCHEMA: matches ('m': best evaluation row, its distance,
    every evaluation row within the threshold), undecodable images ('e'), keys absent from the tar ('l')
    and the number of images hashed ('c')."""

    def fn(item):
        shard, keys = item
        matcher = TarMatcher(hashes_bc.value, threshold)
        keys_m, ev, dist, errors, count, lost, matched = matcher((str(Path(input_dir) / shard), sorted(keys)))
        hits = all_matches(np.asarray(matched), hashes_bc.value, threshold) if keys_m else []
        out = [("m", k, int(j), int(d), [int(x) for x in h], None, None)
               for k, j, d, h in zip(keys_m, ev, dist, hits)]
        out += [("e", k, None, None, None, str(msg), None) for k, msg in errors.items()]
        out += [("l", k, None, None, None, tar, None) for tar, k in lost]
        out.append(("c", None, None, None, None, None, int(count)))
        return out
    return fn


def _text_task(table_bc, config: DecontaminationConfig):
    """mapInArrow: (key, raw text) -> (key, t, sim): the best evaluation text (global text row ``t``) of each
    corpus caption with exact Jaccard >= the threshold, among the LSH candidates (as in-process)."""
    params, min_len, threshold = config.minhash, config.min_caption_chars, config.caption_threshold

    def fn(batches):
        ev_rows, ev_texts, ev_bands = table_bc.value
        buckets: List[Dict[int, List[int]]] = [dict() for _ in range(params.bands)]
        for e in range(len(ev_texts)):
            for j in range(params.bands):
                buckets[j].setdefault(int(ev_bands[e, j]), []).append(e)
        known = [np.fromiter(b.keys(), np.int64, len(b)) for b in buckets]
        ev_grams: Dict[int, frozenset] = {}
        for batch in batches:
            keys = batch.column(0).to_pylist()
            texts = minhash.normalize_texts(batch.column(1)).to_pylist()
            rows = [i for i, t in enumerate(texts) if t and len(t) >= min_len]
            out_k, out_t, out_s = [], [], []
            if rows and ev_texts:
                c_texts = [texts[i] for i in rows]
                bands = minhash.band_values(minhash.signatures(c_texts, params)[0], params)
                any_hit = np.zeros(len(rows), bool)
                for j in range(params.bands):
                    any_hit |= np.isin(bands[:, j], known[j])
                for ci in np.flatnonzero(any_hit).tolist():
                    cand = sorted({e for j in range(params.bands) for e in buckets[j].get(int(bands[ci, j]), ())})
                    grams = minhash.ngrams(c_texts[ci], params.ngram)
                    best, best_sim = -1, -1.0
                    for e in cand:
                        g = ev_grams.get(e)
                        if g is None:
                            g = ev_grams[e] = minhash.ngrams(ev_texts[e], params.ngram)
                        sim = minhash.jaccard_sets(grams, g)
                        if sim >= threshold and sim > best_sim:  # ties: the lowest evaluation text
                            best, best_sim = e, sim
                    if best >= 0:
                        out_k.append(keys[rows[ci]])
                        out_t.append(ev_rows[best])
                        out_s.append(best_sim)
            yield pa.RecordBatch.from_arrays(
                [pa.array(out_k, pa.string()), pa.array(out_t, pa.int32()), pa.array(out_s, pa.float64())],
                names=["key", "t", "sim"])
    return fn


# ------------------------------------------------------------------------------------- on the driver

def _eval_frames(spark, index: EvalIndex):
    """Small DataFrames of the evaluation index: images (j, set, image_id, name), texts (t, set, text,
    image_id, name), digests (sha hex, first image row)."""
    images = [(j, index.sets[index.set_of[j]], index.image_ids[j], index.name_of(j))
              for j in range(len(index.image_ids))]
    texts = [(t, index.sets[index.set_of[i]], index.texts[t], index.image_ids[i], index.name_of(i))
             for t, i in enumerate(index.text_image)]
    first: Dict[str, Tuple[int, List[int]]] = {}
    for j, h in enumerate(index.sha256):
        first.setdefault(h.hex(), (j, []))[1].append(j)
    digests = [(h, j, js) for h, (j, js) in first.items()]
    img = spark.createDataFrame(images, schema="j int, set string, image_id string, name string")
    txt = spark.createDataFrame(texts, schema="t int, set string, eval_text string, image_id string, name string")
    sha = spark.createDataFrame(digests, schema="sha string, s_j int, s_js array<int>")
    return img, txt, sha


def _text_table(index: EvalIndex, config: DecontaminationConfig):
    """(evaluation text rows that can match, their texts, their band values): broadcast to the tasks."""
    params = config.minhash
    ev_rows = [i for i, t in enumerate(index.texts) if t and len(t) >= config.min_caption_chars]
    ev_texts = [index.texts[i] for i in ev_rows]
    bands = minhash.band_values(minhash.signatures(ev_texts, params)[0], params) if ev_texts else \
        np.zeros((0, params.bands), np.int64)
    return ev_rows, ev_texts, bands


def spark_decisions(spark, input_dir: Path, index: EvalIndex, config: DecontaminationConfig, scratch):
    """(decision DataFrame: key, shard, keep, reason, duplicate_of; the report without totals; counts)."""
    from pyspark.sql import functions as F

    from .engine_spark import read_metadata_df
    from .spark_dist import check_unique_keys_spark

    text_cols = [config.text_field] + (["title"] if config.text_field == "caption" else [])
    meta = read_metadata_df(spark, input_dir, ["key", "status", "sha256"] + text_cols)
    check_unique_keys_spark(meta, input_dir)
    ok = F.coalesce(F.col("status"), F.lit("")) == "success"
    elig = meta.where(ok & F.col("key").isNotNull())
    ev_img, ev_txt, ev_sha = _eval_frames(spark, index)
    sc = spark.sparkContext

    # 1. exact bytes
    sha = F.when(F.col("sha256").rlike("^[0-9a-fA-F]{64}$"), F.lower(F.col("sha256")))
    sha_hits = elig.select("key", sha.alias("sha")).join(F.broadcast(ev_sha), "sha").select("key", "s_j", "s_js")

    # 2. pHash variants of every downloaded image, matched in the same task
    by_tar = elig.groupBy("shard").agg(F.collect_list("key").alias("keys"))
    n_tars = max(1, by_tar.count())
    hashes_bc = sc.broadcast(np.ascontiguousarray(index.hashes))
    rdd = by_tar.rdd.map(lambda r: (r["shard"], list(r["keys"]))).repartition(n_tars).flatMap(
        _phash_task(str(input_dir), hashes_bc, config.phash_threshold))
    ph = scratch.keep(spark.createDataFrame(rdd, schema=PHASH_SCHEMA), "decon-phash")
    lost = ph.where(F.col("kind") == "l")
    n_lost = lost.count()
    if n_lost:
        r = lost.orderBy("msg", "key").limit(1).collect()[0]
        raise CurationError(f"{r['msg']}: sample {r['key']} is in the parquet as downloaded but not in the tar "
                            f"({n_lost} such samples)")
    for r in ph.where(F.col("kind") == "e").orderBy("key").limit(MAX_LOGGED_ERRORS).collect():
        logger.warning("decontaminate: %s", r["msg"])
    counts = ph.where(F.col("kind").isin("c", "e")).groupBy("kind").agg(
        F.sum(F.coalesce(F.col("n"), F.lit(1))).alias("n")).collect()
    counts = {r["kind"]: int(r["n"]) for r in counts}
    bad = ph.where(F.col("kind") == "e").select("key", F.lit(True).alias("bad"))
    matches = ph.where(F.col("kind") == "m").select("key", F.col("j").alias("p_j"), F.col("dist").alias("p_dist"),
                                                    F.col("hits").alias("p_hits"))
    img = sha_hits.join(matches, "key", "full_outer").select(
        "key", F.when(F.col("s_j").isNotNull(), 1).otherwise(2).alias("method"),
        F.coalesce("s_j", "p_j").alias("j"),
        F.when(F.col("s_j").isNotNull(), 0).otherwise(F.col("p_dist")).alias("distance"),
        F.array_sort(F.array_distinct(F.concat(F.coalesce("s_js", F.array().cast("array<int>")),
                                               F.coalesce("p_hits", F.array().cast("array<int>"))))).alias("hits"))
    img = scratch.keep(img.join(F.broadcast(ev_img.select("j", F.col("name").alias("i_name"))), "j"), "decon-images")

    # 3. captions
    text = F.col(config.text_field)
    if config.text_field == "caption":
        text = F.coalesce(text, F.col("title"))
    table_bc = sc.broadcast(_text_table(index, config))
    cap = elig.select("key", text.cast("string").alias("text")).mapInArrow(
        _text_task(table_bc, config), "key string, t int, sim double")
    cap = scratch.keep(cap.join(F.broadcast(ev_txt.select("t", F.col("name").alias("c_name"))), "t"), "decon-texts")

    # 4. the decision table (the in-process order of reasons)
    d = meta.select("key", "shard", ok.alias("ok")).join(img.select("key", "i_name"), "key", "left") \
        .join(bad, "key", "left")
    has_cap = F.lit(False)
    if config.drop_caption_matches:
        d = d.join(cap.select("key", "c_name"), "key", "left")
        has_cap = F.col("c_name").isNotNull()
    is_bad = F.coalesce(F.col("bad"), F.lit(False))
    reason = (F.when(~F.col("ok"), F.lit(REASON_NOT_DOWNLOADED))
              .when(F.col("i_name").isNotNull(), F.lit(REASON_EVAL_OVERLAP))
              .when(is_bad, F.lit(REASON_UNDECODABLE))
              .when(has_cap, F.lit(REASON_EVAL_OVERLAP)))
    dup = F.when(~F.col("ok"), F.lit(None)).when(F.col("i_name").isNotNull(), F.col("i_name"))
    if config.drop_caption_matches:
        dup = dup.when(is_bad, F.lit(None)).when(has_cap, F.col("c_name"))
    decisions = d.select("key", "shard", reason.isNull().alias("keep"), reason.alias("reason"),
                         dup.cast("string").alias("duplicate_of"))
    report = _report(index, img, cap, ev_img, ev_txt, config)
    return decisions, report, counts


def _report(index: EvalIndex, img, cap, ev_img, ev_txt, config: DecontaminationConfig) -> Dict[str, Any]:
    """The report of :func:`ccmb.corpus.decontaminate.make_report` from counts and bounded examples."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    names = {1: "sha256", 2: "phash"}
    per: Dict[str, Dict[str, Any]] = {}
    for set_name in index.sets:
        per[set_name] = {"images": index.set_sizes[set_name]["images"], "texts": index.set_sizes[set_name]["texts"],
                         "images_with_copies": 0, "texts_with_copies": 0, "corpus_samples_copying_images": 0,
                         "corpus_samples_copying_texts": 0, "by_method": {"sha256": 0, "phash": 0},
                         "examples": [], "text_examples": []}
    # images: per (corpus sample, evaluation set) the lowest evaluation row it copies
    hit = img.select("key", "method", "distance", F.explode("hits").alias("h")).join(
        F.broadcast(ev_img.select(F.col("j").alias("h"), "set")), "h")
    per_set = hit.groupBy("key", "set", "method", "distance").agg(F.min("h").alias("h"))
    for r in per_set.groupBy("set", "method").count().collect():
        per[r["set"]]["by_method"][names[int(r["method"])]] += int(r["count"])
        per[r["set"]]["corpus_samples_copying_images"] += int(r["count"])
    for r in hit.groupBy("set").agg(F.countDistinct("h").alias("n")).collect():
        per[r["set"]]["images_with_copies"] = int(r["n"])
    first = Window.partitionBy("set").orderBy("key")
    examples = (per_set.withColumn("i", F.row_number().over(first)).where(F.col("i") <= MAX_EXAMPLES)
                .join(F.broadcast(ev_img.select(F.col("j").alias("h"), "image_id")), "h").orderBy("set", "key")
                .collect())
    for r in examples:
        per[r["set"]]["examples"].append({"corpus_key": r["key"], "eval_image": r["image_id"],
                                          "method": names[int(r["method"])], "distance": int(r["distance"])})
    # texts: every corpus caption with its best evaluation text
    tx = cap.select("key", "t", "sim").join(F.broadcast(ev_txt.select("t", "set", "eval_text", "image_id")), "t")
    for r in tx.groupBy("set").agg(F.count("*").alias("n"), F.countDistinct("t").alias("u")).collect():
        per[r["set"]]["corpus_samples_copying_texts"] = int(r["n"])
        per[r["set"]]["texts_with_copies"] = int(r["u"])
    text_examples = (tx.withColumn("i", F.row_number().over(first)).where(F.col("i") <= MAX_EXAMPLES)
                     .orderBy("set", "key").collect())
    for r in text_examples:
        per[r["set"]]["text_examples"].append({"corpus_key": r["key"], "eval_text": r["eval_text"],
                                               "eval_image": r["image_id"], "jaccard": round(float(r["sim"]), 4)})
    return {"against": list(index.sets),
            "settings": {"phash_threshold": config.phash_threshold, "caption_threshold": config.caption_threshold,
                         "min_caption_chars": config.min_caption_chars, "ngram": config.minhash.ngram,
                         "drop_caption_matches": config.drop_caption_matches},
            "datasets": per}


def _totals(decisions, input_dir: Path, counts: Dict[str, int]) -> Dict[str, Any]:
    """The report's totals (as in-process: no timings, the table is reproducible)."""
    by_reason = {r["reason"]: int(r["count"]) for r in decisions.groupBy("reason").count().collect()}
    return {"corpus": str(input_dir), "rows": sum(by_reason.values()), "images_scanned": counts.get("c", 0),
            "undecodable": counts.get("e", 0),
            "dropped": sum(n for r, n in by_reason.items() if r is not None and r != REASON_NOT_DOWNLOADED)}


def spark_decontaminate_to(input_dir: PathLike, index: EvalIndex, config: DecontaminationConfig, output: PathLike,
                           spark) -> Tuple[Summary, Dict[str, Any]]:
    """``ccmb decontaminate --engine spark``: the partitioned decision table written by the executors (the
    report in its info, as in-process); returns the summary and the report."""
    from .spark_dist import Scratch, write_table_df

    start = time.time()
    input_dir, output = Path(input_dir), Path(output)
    scratch = Scratch(spark, output)
    try:
        decisions, report, counts = spark_decisions(spark, input_dir, index, config, scratch)
        report.update(_totals(decisions, input_dir, counts))
        info = json.dumps({"against": report["against"], "report": report}, ensure_ascii=False)
        summary = write_table_df(spark, decisions, output, kind="decontaminate", source=parts.source_of(input_dir),
                                 info=info, seconds_from=start)
    finally:
        scratch.close()
    logger.info("decontaminate: %d rows scanned on Spark in %.1fs", summary.rows, time.time() - start)
    return summary, report


def spark_decontamination_table(input_dir: PathLike, index: EvalIndex, config: DecontaminationConfig,
                                spark) -> DecontaminationResult:
    """The table-returning API on Spark: the same decisions, brought back to the driver (tests, small data)."""
    from .spark_dist import Scratch

    input_dir = Path(input_dir)
    with tempfile.TemporaryDirectory(prefix="ccmb-decon-") as tmp:
        scratch = Scratch(spark, Path(tmp) / "table")
        try:
            decisions, report, counts = spark_decisions(spark, input_dir, index, config, scratch)
            report.update(_totals(decisions, input_dir, counts))
            table = sort_by_key(decisions.toArrow().cast(DECISION_SCHEMA))
        finally:
            scratch.close()
    return DecontaminationResult(table, report)
