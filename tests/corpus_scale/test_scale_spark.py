"""The in-process and Spark engines give identical decision tables (Spark's are partitioned folders written
by the executors) and identical final shards; build-shards runs as Spark tasks, restartable per shard."""
from __future__ import annotations

import pytest

from ccmb import shards as fmt
from ccmb.corpus import parts
from ccmb.corpus.build import build_shards
from ccmb.corpus.dedup import dedup_samples
from ccmb.corpus.filter import filter_samples
from ccmb.corpus.table import CurationError, read_decisions, write_decisions

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _shards(path):
    return {k: v["sha256"] for k, v in fmt.read_manifest(path)["shards"].items()}


def test_engines_agree_tables_and_shards(planted_scale, spark, tmp_path):
    d = planted_scale
    filter_samples(d, tmp_path / "fl.parquet", min_side=0, blocklist=["山山山"])
    filter_samples(d, tmp_path / "fs.parquet", min_side=0, blocklist=["山山山"], engine="spark", spark=spark)
    assert (tmp_path / "fs.parquet").is_dir() and (tmp_path / "fs.parquet" / parts.MARKER).exists()
    assert read_decisions(tmp_path / "fs.parquet").equals(read_decisions(tmp_path / "fl.parquet"))

    local = dedup_samples(d, tmp_path / "dl.parquet", keep_tables=[tmp_path / "fl.parquet"])
    remote = dedup_samples(d, tmp_path / "ds.parquet", keep_tables=[tmp_path / "fs.parquet"], engine="spark",
                           spark=spark)
    assert local.dropped == remote.dropped and remote.rows == local.rows
    a, b = read_decisions(tmp_path / "dl.parquet"), read_decisions(tmp_path / "ds.parquet")
    assert a.equals(b), [(x, y) for x, y in zip(a.to_pylist(), b.to_pylist()) if x != y]
    reasons = set(a.column("reason").to_pylist())
    assert {"duplicate_url", "duplicate_sha256", "duplicate_phash", "duplicate_caption", "blocklist"} <= reasons
    # the partitioned form of the in-process table equals Spark's too
    write_decisions(tmp_path / "dp.parquet", a, kind="dedup", source=d, parts=3)
    assert read_decisions(tmp_path / "dp.parquet").equals(b)

    # final shards: same keys in the same shards, byte for byte, sorted and shuffled
    for shuffle in (False, True):
        la = build_shards(d, tmp_path / f"l{shuffle}", keep_tables=[tmp_path / "fl.parquet", tmp_path / "dl.parquet"],
                          samples_per_shard=8, shuffle=shuffle, seed=7)
        sa = build_shards(d, tmp_path / f"s{shuffle}", keep_tables=[tmp_path / "fs.parquet", tmp_path / "ds.parquet"],
                          samples_per_shard=8, shuffle=shuffle, seed=7, engine="spark", spark=spark)
        assert (la.samples, la.shards, la.dropped) == (sa.samples, sa.shards, sa.dropped)
        assert _shards(tmp_path / f"l{shuffle}") == _shards(tmp_path / f"s{shuffle}")
        assert len(sa.written) == sa.shards > 1

    # restartable shard by shard: a lost shard is rewritten by its task, the others are skipped
    out = tmp_path / "sFalse"
    (out / "00001.tar").unlink()
    again = build_shards(d, out, keep_tables=[tmp_path / "fs.parquet", tmp_path / "ds.parquet"],
                         samples_per_shard=8, seed=7, engine="spark", spark=spark)
    assert again.written == ["00001"] and len(again.skipped) == again.shards - 1
    assert _shards(out) == _shards(tmp_path / "lFalse")

    # a partially written Spark table is refused by every reader
    (tmp_path / "ds.parquet" / parts.MARKER).unlink()
    with pytest.raises(CurationError, match="partially written"):
        build_shards(d, tmp_path / "x", keep_tables=[tmp_path / "ds.parquet"], engine="spark", spark=spark)
