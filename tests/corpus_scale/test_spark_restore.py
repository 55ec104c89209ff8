"""``build-shards --engine spark`` combines independent tables keep-aware like the in-process engine: a
duplicate whose kept copy another table drops is restored (exact levels: one per value), on the executors;
both engines give the same plan and the same shards."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from ccmb import shards as fmt
from ccmb.corpus.build import BUILD_DIR, build_shards
from ccmb.corpus.build_spark import exact_level_columns
from ccmb.corpus.dedup import DedupConfig, dedup_table
from ccmb.corpus.filter import FilterConfig, filter_table
from ccmb.corpus.table import load_metadata, write_decisions

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _plan(out):
    build = out / BUILD_DIR
    plan = pq.read_table(build / "plan") if (build / "plan").is_dir() else pq.read_table(build / "plan.parquet")
    return plan.select(["out_shard", "out_key", "key", "shard"]).sort_by(
        [("out_shard", "ascending"), ("out_key", "ascending")]).to_pylist()


def _source_keys(out):
    return {s.meta["source_key"] for tar in fmt.list_shards(out) for s in fmt.iter_tar_samples(tar)}


def test_exact_levels_are_url_and_sha256():
    assert exact_level_columns() == {"duplicate_url": "url", "duplicate_sha256": "sha256"}


def test_spark_restores_like_in_process(planted_scale, spark, tmp_path):
    d = planted_scale
    # made independently: dedup (every level) and a filter that drops every representative dedup kept
    dedup = dedup_table(d, DedupConfig())
    reps = {r["duplicate_of"] for r in dedup.to_pylist() if r["duplicate_of"]}
    meta = load_metadata(d, ["key", "caption"])
    block = sorted({c for k, c in zip(meta.column("key").to_pylist(), meta.column("caption").to_pylist())
                    if k in reps})
    filt = filter_table(d, FilterConfig(min_side=0, blocklist=block))
    assert reps and not any(r["keep"] for r in filt.to_pylist() if r["key"] in reps)
    tables = [tmp_path / "f.parquet", tmp_path / "d.parquet"]
    write_decisions(tables[0], filt, kind="filter", source=d)
    write_decisions(tables[1], dedup, kind="dedup", source=d)
    # the same tables as partitioned folders for the Spark build
    folders = [tmp_path / "fp.parquet", tmp_path / "dp.parquet"]
    write_decisions(folders[0], filt, kind="filter", source=d, parts=2)
    write_decisions(folders[1], dedup, kind="dedup", source=d, parts=3)

    local = build_shards(d, tmp_path / "local", keep_tables=tables, samples_per_shard=8, shuffle=True, seed=11)
    remote = build_shards(d, tmp_path / "spark", keep_tables=folders, samples_per_shard=8, shuffle=True, seed=11,
                          engine="spark", spark=spark)
    # restored on both: exact levels one per value, near-duplicate levels every one
    assert set(local.restored) >= {"duplicate_url", "duplicate_sha256", "duplicate_phash", "duplicate_caption"}
    assert remote.restored == local.restored
    assert (remote.samples, remote.shards, remote.dropped) == (local.samples, local.shards, local.dropped)
    assert _plan(tmp_path / "spark") == _plan(tmp_path / "local")
    ml, ms = fmt.read_manifest(tmp_path / "local"), fmt.read_manifest(tmp_path / "spark")
    assert {k: v["sha256"] for k, v in ms["shards"].items()} == {k: v["sha256"] for k, v in ml["shards"].items()}
    assert ms["restored"] == ml["restored"] == local.restored

    # nothing planted is lost: every URL / byte group keeps exactly one sample, and no kept sample is a
    # dropped representative
    kept = _source_keys(tmp_path / "spark")
    assert not kept & reps
    rows = {r["key"]: r for r in dedup.to_pylist()}
    for reason in ("duplicate_url", "duplicate_sha256"):
        groups = {}
        for r in rows.values():
            if r["reason"] == reason:
                groups.setdefault(r["duplicate_of"], set()).add(r["key"])
        for rep, members in groups.items():
            alive = members & kept
            assert len(alive) <= 1, (reason, rep, members)
