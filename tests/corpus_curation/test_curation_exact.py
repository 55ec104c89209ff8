"""Issue 12: near-duplicate candidates are verified exactly, groups never chain, the level table."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from curation_helpers import jpeg, rand_image

from ccmb.cli import main
from ccmb.corpus.api import caption_reps, dedup_table, phash_reps
from ccmb.corpus.primitives import groups, minhash
from ccmb.corpus.steps import levels as dedup
from ccmb.corpus.steps.levels import DedupConfig, DedupLevel


def _norm(texts):
    return minhash.normalize_texts(texts).to_pylist()


def test_minhash_estimate_is_never_trusted_for_distinct_captions():
    # exact trigram Jaccard 0.69 and 0.73: below 0.8, so never merged, whatever the MinHash estimate says
    texts = _norm(["一只小猫坐在窗台上第48号", "一只小猫坐在窗台上第42号", "古老的寺庙和石阶第53号", "古老的寺庙和石阶第5号"])
    grams = [minhash.ngrams(t, 3) for t in texts]
    assert minhash.jaccard_sets(grams[0], grams[1]) == pytest.approx(9 / 13)
    assert minhash.jaccard_sets(grams[2], grams[3]) < 0.8
    rows = np.arange(4)
    for perm, bands in ((64, 16), (64, 32), (16, 16)):  # coarse signatures propose more candidates
        reps = caption_reps(texts, rows, 4, minhash.MinHashParams(num_perm=perm, bands=bands), 0.8)
        assert reps.tolist() == [0, 1, 2, 3]
    # the same pairs at a threshold below their exact similarity are grouped
    reps = caption_reps(texts, rows, 4, minhash.MinHashParams(), 0.6)
    assert reps.tolist() == [0, 0, 2, 2]


def test_equal_signatures_of_different_texts_are_not_one_node():
    # 1-permutation MinHash: many different texts share a signature; exact check keeps them apart
    texts = _norm([f"城市街头第{i}号骑自行车的人们和汽车" for i in range(30)] + ["完全不同的一句话在这里"])
    reps = caption_reps(texts, np.arange(len(texts)), len(texts), minhash.MinHashParams(num_perm=1, bands=1), 0.95)
    assert reps.tolist() == list(range(len(texts)))


def test_caption_groups_do_not_chain():
    # a ~ b and b ~ c at 0.5, but a and c are further apart: c must not be dropped as a duplicate of a
    a, b, c = "春天的公园里开满了桃花和樱花", "春天的公园里开满了桃花和梨花树下", "公园里开满了桃花和梨花树下有人野餐"
    texts = _norm([a, b, c])
    g = [minhash.ngrams(t, 3) for t in texts]
    ab, bc, ac = (minhash.jaccard_sets(g[i], g[j]) for i, j in ((0, 1), (1, 2), (0, 2)))
    thr = min(ab, bc) - 1e-9
    assert ac < thr
    reps = caption_reps(texts, np.arange(3), 3, minhash.MinHashParams(num_perm=128, bands=64), thr)
    assert reps.tolist() == [0, 0, 2]  # b joins a (the lowest key); c stays: it is not within thr of a


def test_phash_groups_do_not_chain_and_reps_survive():
    # hashes 0 -- 3 bits -- h1 -- 3 bits -- h2: with threshold 4, h2 is 6 bits from h0
    h0 = np.uint64(0)
    h1 = np.uint64(0b111)
    h2 = np.uint64(0b111111)
    hashes = np.array([h0, h1, h2, h2], np.uint64)
    reps = phash_reps(hashes, np.arange(4), 4, threshold=4, bands=5)
    assert reps.tolist() == [0, 0, 2, 2]
    # transitive components would have merged all four
    assert groups.component_reps(np.arange(3), 3, (np.array([0, 1]), np.array([1, 2]))).tolist() == [0, 0, 0]


def test_star_reps_every_dropped_row_points_at_a_direct_neighbour():
    rng = np.random.default_rng(0)
    n = 60
    a = rng.integers(0, n, 200)
    b = rng.integers(0, n, 200)
    keep = a != b
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    reps = groups.star_reps(np.arange(n), n, (a, b))
    adj = set(zip(a.tolist(), b.tolist())) | set(zip(b.tolist(), a.tolist()))
    for r, rep in enumerate(reps.tolist()):
        if rep != r:
            assert (r, rep) in adj          # verified directly, no intermediate
            assert reps[rep] == rep         # the representative survives
            assert rep < r                  # the lowest key wins


def test_phash_variants_tolerate_a_small_border_crop():

    from ccmb.corpus.primitives.phash import phash_variants_bytes, variant_distance

    img = rand_image(7, (320, 320))
    crop = img.crop((16, 16, 304, 304))  # 5% of each side cut away
    other = rand_image(8, (320, 320))
    h = phash_variants_bytes([jpeg(img), jpeg(crop), jpeg(other)])
    assert variant_distance(h[0], h[1])[0] <= 4
    assert variant_distance(h[0], h[2])[0] > 12


def _second_row_duplicates_the_first(calls, engine, rows, config, context):
    """A test level: the second eligible row (key order) is a duplicate of the first."""
    import pyarrow as pa

    from ccmb.corpus.steps.exact import DROPS_SCHEMA
    from ccmb.corpus.tables.dataflow import Fn

    def step(t):
        calls.append(t.num_rows)
        keys = sorted(t.column("key").to_pylist())
        return pa.table({"key": keys[1:2], "reason": ["duplicate_test"], "duplicate_of": keys[:1]})

    return engine.gather(rows, Fn(step, DROPS_SCHEMA))


def test_level_table_unknown_level_raises_and_registering_is_one_entry(planted):
    from functools import partial

    d, k = planted
    with pytest.raises(ValueError, match="unknown dedup level"):
        DedupConfig(levels=("semantic",))
    with pytest.raises(ValueError, match="unknown dedup level"):
        dedup.get_level("semantic")
    calls = []
    level = DedupLevel("testlevel", "duplicate_test", "a test level", order=25,
                       drops=partial(_second_row_duplicates_the_first, calls), default=False)
    dedup.register_level(level)
    try:
        assert "testlevel" not in DedupConfig().levels
        assert list(dedup.levels())[:3] == ["url", "sha256", "testlevel"]  # run order from the table
        t = dedup_table(d, DedupConfig(levels=("sha256", "testlevel")))
        reasons = t.column("reason").to_pylist()
        assert reasons.count("duplicate_test") == 1 and reasons.count("duplicate_sha256") == 1 and calls == [16]
        res = CliRunner().invoke(main, ["dedup", "--help"])  # the CLI switch comes from the table (at import)
        assert res.exit_code == 0
    finally:
        dedup.unregister_level("testlevel")


def test_cli_level_switches_come_from_the_table(planted, tmp_path):
    d, k = planted
    res = CliRunner().invoke(main, ["dedup", "--help"])
    for name in dedup.levels():
        assert f"--{name} / --no-{name}" in res.output
    res = CliRunner().invoke(main, ["dedup", "--input", str(d), "--output", str(tmp_path / "x.parquet"),
                                    "--no-url", "--no-sha256", "--no-phash", "--no-caption"])
    assert res.exit_code != 0 and "switched off" in res.output
