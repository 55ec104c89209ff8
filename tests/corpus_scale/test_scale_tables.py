"""Partitioned decision tables (parts + marker written last) and the source check, in-process."""
from __future__ import annotations

import pytest

from ccmb.corpus.tables import decisions as parts
from ccmb.corpus.api import build_shards
from ccmb.corpus.api import dedup_samples, dedup_table
from ccmb.corpus.steps.levels import DedupConfig
from ccmb.corpus.api import filter_samples
from ccmb.corpus.primitives.minhash import jaccard_sets, ngrams
from ccmb.corpus.tables.decisions import decision_metadata, read_decisions
from ccmb.corpus.tables.schema import CurationError
from ccmb.corpus.tables.writer import write_table as write_decisions
from ccmb import shards as fmt

from scale_helpers import write_planted


def test_partitioned_table_reads_like_the_file(planted_scale, tmp_path):
    table = dedup_table(planted_scale, DedupConfig(levels=("url", "sha256", "caption")))
    write_decisions(tmp_path / "one.parquet", table, kind="dedup", source=planted_scale)
    write_decisions(tmp_path / "many.parquet", table, kind="dedup", source=planted_scale, parts=4)
    assert (tmp_path / "many.parquet").is_dir()
    assert len(parts.part_files(tmp_path / "many.parquet")) == 4
    assert read_decisions(tmp_path / "many.parquet").equals(read_decisions(tmp_path / "one.parquet"))
    # both forms drive build-shards to the same shards
    a = build_shards(planted_scale, tmp_path / "a", keep_tables=[tmp_path / "one.parquet"], samples_per_shard=8)
    b = build_shards(planted_scale, tmp_path / "b", keep_tables=[tmp_path / "many.parquet"], samples_per_shard=8)
    assert a.samples == b.samples and a.dropped == b.dropped
    ma, mb = fmt.read_manifest(tmp_path / "a"), fmt.read_manifest(tmp_path / "b")
    assert {k: v["sha256"] for k, v in ma["shards"].items()} == {k: v["sha256"] for k, v in mb["shards"].items()}
    assert mb["provenance"]["decision_tables"][0]["fingerprint"].startswith("sha256:")


def test_partial_partitioned_table_is_refused_and_redone(planted_scale, tmp_path):
    table = dedup_table(planted_scale, DedupConfig(levels=("url",)))
    out = tmp_path / "t.parquet"
    write_decisions(out, table, source=planted_scale, parts=3)
    (out / parts.MARKER).unlink()  # a killed job: parts but no marker
    with pytest.raises(CurationError, match="partially written"):
        read_decisions(out)
    with pytest.raises(CurationError, match="partially written"):
        build_shards(planted_scale, tmp_path / "b", keep_tables=[out])
    write_decisions(out, table, source=planted_scale, parts=3)  # redone: complete again
    assert read_decisions(out).num_rows == table.num_rows
    victim = parts.part_files(out)[1]  # a part rewritten after the marker
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(CurationError, match="bytes"):
        read_decisions(out)
    victim.unlink()
    with pytest.raises(CurationError, match="missing"):
        read_decisions(out)
    # a leftover .partial folder of a killed writer is cleared by the next write
    (tmp_path / "u.parquet.partial").mkdir()
    (tmp_path / "u.parquet.partial" / "part-00000.parquet").write_bytes(b"junk")
    write_decisions(tmp_path / "u.parquet", table, parts=2)
    assert not (tmp_path / "u.parquet.partial").exists()
    assert read_decisions(tmp_path / "u.parquet").num_rows == table.num_rows


def test_table_of_another_download_folder_is_refused(planted_scale, tmp_path):
    other = write_planted(tmp_path / "other", per_shard=5)  # same rows, other shards
    filter_samples(other, tmp_path / "f.parquet", min_side=0)
    assert decision_metadata(tmp_path / "f.parquet")["source"]["path"] == str(other.resolve())
    assert decision_metadata(tmp_path / "f.parquet")["kind"] == "filter"
    with pytest.raises(CurationError) as err:
        dedup_samples(planted_scale, tmp_path / "d.parquet", keep_tables=[tmp_path / "f.parquet"],
                      levels=["url"])
    assert str(other.resolve()) in str(err.value) and str(planted_scale.resolve()) in str(err.value)
    with pytest.raises(CurationError, match="decision table of the download folder"):
        build_shards(planted_scale, tmp_path / "b", keep_tables=[tmp_path / "f.parquet"])


def test_star_groups_never_chain(planted_scale):
    """The planted caption chain a~b~c (not a~c): no dropped caption is further than the threshold from
    the sample it names."""
    from ccmb.corpus.tables.folder import read_columns as load_metadata

    table = dedup_table(planted_scale, DedupConfig(levels=("caption",)))
    caps = dict(zip(*[load_metadata(planted_scale, ["key", "caption"]).column(c).to_pylist()
                      for c in ("key", "caption")]))
    drops = [r for r in table.to_pylist() if r["reason"] == "duplicate_caption"]
    assert len(drops) >= 2
    from ccmb.corpus.primitives.minhash import normalize_texts

    def norm(t):
        return normalize_texts([t])[0].as_py()

    for r in drops:
        assert jaccard_sets(ngrams(norm(caps[r["key"]]), 3), ngrams(norm(caps[r["duplicate_of"]]), 3)) >= 0.8


def test_spark_conf_option_is_parsed_before_spark_starts(planted_scale, tmp_path):
    from click.testing import CliRunner

    from ccmb.cli import main

    res = CliRunner().invoke(main, ["filter", "--input", str(planted_scale), "--output", str(tmp_path / "f.parquet"),
                                    "--engine", "spark", "--spark-conf", "spark.driver.memory"])
    assert res.exit_code != 0 and "--spark-conf" in res.output and "KEY=VALUE" in res.output
