"""The Spark building blocks of the fast path agree with the in-process code: candidate pairs from grouped
(band, bucket) items equal a brute-force self-join; star groups formed in one executor task and in rounds of
joins both equal ``groups.star_reps``; shuffle partitions are sized to the input unless the user set them."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ccmb.corpus import groups, spark_dist

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_candidate_pairs_and_star_groups_agree_with_in_process(spark, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    keys = [f"{i:06d}" for i in range(80)]
    # items: (node, band, bucket) with few buckets so that many share one; one node twice in a bucket
    items = [(keys[int(n)], int(b), int(rng.integers(0, 12))) for n in range(80) for b in range(3)
             if rng.random() < 0.6]
    items.append(items[0])
    expected_pairs = set()
    by_bucket: dict = {}
    for node, band, bucket in items:
        by_bucket.setdefault((band, bucket), set()).add(node)
    for nodes in by_bucket.values():
        expected_pairs |= {(a, b) for a, b in itertools.combinations(sorted(nodes), 2)}
    df = spark.createDataFrame(items, "node string, band int, bucket long")
    got_pairs = {(r["a"], r["b"]) for r in spark_dist.candidate_pairs(df).collect()}
    assert got_pairs == expected_pairs

    # a sparse graph with chains (0-1-2-3-4: rounds needed) and stars
    edges = {(0, 1), (1, 2), (2, 3), (3, 4), (10, 11), (10, 12), (11, 12), (20, 25), (21, 25), (22, 25)}
    edges |= {tuple(sorted(map(int, rng.choice(np.arange(30, 80), 2, replace=False)))) for _ in range(40)}
    a, b = (np.array(x, np.int64) for x in zip(*sorted(edges)))
    reps = groups.star_reps(np.arange(80, dtype=np.int64), 80, (a, b))
    linked = set(a.tolist()) | set(b.tolist())
    expected = {keys[n]: keys[int(reps[n])] for n in linked}
    edf = spark.createDataFrame([(keys[x], keys[y]) for x, y in sorted(edges)], "a string, b string")
    scratch = spark_dist.Scratch(spark, tmp_path / "t.parquet")
    try:
        one_task = {r["node"]: r["centre"] for r in spark_dist.star_centres(spark, edf, scratch).collect()}
        monkeypatch.setattr(spark_dist, "ONE_TASK_EDGES", 0)
        rounds = {r["node"]: r["centre"] for r in spark_dist.star_centres(spark, edf, scratch).collect()}
    finally:
        scratch.close()
    assert one_task == expected
    assert rounds == expected
    # no chaining along 0-1-2-3-4: 0 takes 1, 2 is a centre and takes 3, 4 is a centre
    assert [expected[keys[i]] for i in range(5)] == [keys[0], keys[0], keys[2], keys[2], keys[4]]


def test_shuffle_partitions_sized_unless_set(spark, planted_scale):
    from ccmb.spark import AUTO_SHUFFLE_FLAG

    before = (spark.conf.get(AUTO_SHUFFLE_FLAG, "false"), spark.conf.get("spark.sql.shuffle.partitions"))
    try:
        spark.conf.set(AUTO_SHUFFLE_FLAG, "true")
        cores = spark.sparkContext.defaultParallelism
        assert spark_dist.size_shuffle_partitions(spark, planted_scale) == cores  # tiny input: one per core
        spark.conf.set(AUTO_SHUFFLE_FLAG, "false")
        spark.conf.set("spark.sql.shuffle.partitions", "37")
        assert spark_dist.size_shuffle_partitions(spark, planted_scale) == 37  # the user's value is kept
    finally:
        spark.conf.set(AUTO_SHUFFLE_FLAG, before[0])
        spark.conf.set("spark.sql.shuffle.partitions", before[1])
