"""Decision tables and outputs are checked, never trusted by position (issue 24 item 5): tables joined by key;
wrong column types and conflicting duplicate keys refused naming the file; outputs inside the download folder
refused; an output folder locked by the run writing it; a rerun with other settings refused; a part whose
bytes changed refused when read; build-shards refuses to finalize zero samples unless asked."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ccmb import outdir
from ccmb import shards as fmt
from ccmb.cli import main
from ccmb.corpus.api import build_shards, dedup_samples, dedup_table, filter_samples
from ccmb.corpus.steps.levels import DedupConfig
from ccmb.corpus.tables import decisions
from ccmb.corpus.tables.decisions import read_decisions
from ccmb.corpus.tables.schema import CurationError
from ccmb.corpus.tables.writer import table_lock, write_table


def _shas(out):
    return {k: v["sha256"] for k, v in fmt.read_manifest(out)["shards"].items()}


def test_a_resorted_table_gives_the_same_shards(planted_scale, tmp_path):
    """A decision table re-sorted with pyarrow (metadata kept) is applied by key: the same shards."""
    table = dedup_table(planted_scale, DedupConfig(levels=("url", "sha256", "caption")))
    write_table(tmp_path / "d.parquet", table, kind="dedup", source=planted_scale)
    resorted = pq.read_table(tmp_path / "d.parquet")
    order = pa.compute.sort_indices(resorted, sort_keys=[("reason", "ascending"), ("key", "descending")])
    pq.write_table(resorted.take(order), tmp_path / "r.parquet")
    assert pq.read_table(tmp_path / "r.parquet").column("key").to_pylist() != table.column("key").to_pylist()
    a = build_shards(planted_scale, tmp_path / "a", keep_tables=[tmp_path / "d.parquet"], samples_per_shard=8)
    b = build_shards(planted_scale, tmp_path / "b", keep_tables=[tmp_path / "r.parquet"], samples_per_shard=8)
    assert (a.samples, a.dropped) == (b.samples, b.dropped) and _shas(tmp_path / "a") == _shas(tmp_path / "b")


def test_wrong_column_types_are_refused_naming_the_file(planted_scale, tmp_path):
    filter_samples(planted_scale, tmp_path / "f.parquet", min_side=0)
    t = pq.read_table(tmp_path / "f.parquet")
    bad = t.set_column(t.column_names.index("keep"), "keep", pa.compute.cast(t.column("keep"), pa.string()))
    pq.write_table(bad, tmp_path / "strings.parquet")
    with pytest.raises(CurationError, match=r"strings\.parquet: column 'keep' is string, expected bool"):
        dedup_samples(planted_scale, tmp_path / "d.parquet", levels=["url"], keep_tables=[tmp_path / "strings.parquet"])
    res = CliRunner().invoke(main, ["build-shards", "--input", str(planted_scale), "--output", str(tmp_path / "s"),
                                    "--keep", str(tmp_path / "strings.parquet")])
    assert res.exit_code != 0 and "strings.parquet: column 'keep'" in res.output and "Traceback" not in res.output
    pq.write_table(t.drop(["key"]), tmp_path / "nokey.parquet")
    with pytest.raises(CurationError, match=r"nokey\.parquet: not a decision table"):
        build_shards(planted_scale, tmp_path / "s2", keep_tables=[tmp_path / "nokey.parquet"])


def test_duplicate_keys_with_conflicting_decisions_are_refused(planted_scale, tmp_path):
    filter_samples(planted_scale, tmp_path / "f.parquet", min_side=0)
    t = pq.read_table(tmp_path / "f.parquet")
    pq.write_table(pa.concat_tables([t, t.slice(0, 3)]), tmp_path / "same.parquet")  # repeated, same decision
    same = dedup_table(planted_scale, DedupConfig(levels=("url",)), keep_tables=[tmp_path / "same.parquet"])
    ref = dedup_table(planted_scale, DedupConfig(levels=("url",)), keep_tables=[tmp_path / "f.parquet"])
    assert same.equals(ref)
    flipped = t.slice(2, 1)
    flipped = flipped.set_column(2, "keep", pa.array([False])).set_column(3, "reason", pa.array(["blocklist"]))
    if t.column("keep")[2].as_py() is False:
        flipped = flipped.set_column(2, "keep", pa.array([True])).set_column(3, "reason", pa.nulls(1, pa.string()))
    pq.write_table(pa.concat_tables([t, flipped]), tmp_path / "conflict.parquet")
    key = t.column("key")[2].as_py()
    with pytest.raises(CurationError, match=rf"conflict\.parquet: key '{key}' is listed 2 times with different"):
        dedup_samples(planted_scale, tmp_path / "d.parquet", levels=["url"], keep_tables=[tmp_path / "conflict.parquet"])
    with pytest.raises(CurationError, match="different decisions"):
        build_shards(planted_scale, tmp_path / "s", keep_tables=[tmp_path / "conflict.parquet"])


def test_a_changed_part_is_refused_by_its_sha256(planted_scale, tmp_path):
    table = dedup_table(planted_scale, DedupConfig(levels=("url",)))
    out = tmp_path / "t.parquet"
    write_table(out, table, kind="dedup", source=planted_scale, parts=3)
    victim = decisions.part_files(out)[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: the marker's byte count still matches
    victim.write_bytes(bytes(data))
    assert victim.stat().st_size == len(data)
    with pytest.raises(CurationError, match=r"part-00001\.parquet: SHA-256 .* differs from _ccmb_table\.json"):
        read_decisions(out)
    with pytest.raises(CurationError, match="SHA-256"):
        build_shards(planted_scale, tmp_path / "s", keep_tables=[out])


def test_outputs_inside_the_download_folder_are_refused(planted_scale, tmp_path):
    before = sorted(os.listdir(planted_scale))
    for args in (["filter", "--output", str(planted_scale / "f.parquet")],
                 ["dedup", "--no-phash", "--output", str(planted_scale / "sub" / "d.parquet")],
                 ["build-shards", "--output", str(planted_scale / "shards")],
                 ["build-shards", "--output", str(planted_scale)]):
        res = CliRunner().invoke(main, [args[0], "--input", str(planted_scale), *args[1:]])
        assert res.exit_code != 0 and "inside the input folder" in res.output, (args, res.output)
    assert sorted(os.listdir(planted_scale)) == before  # nothing written, nothing replaced


def test_a_table_or_shard_folder_being_written_is_locked(planted_scale, tmp_path):
    with table_lock(tmp_path / "f.parquet", "ccmb filter (the other run)"):
        res = CliRunner().invoke(main, ["filter", "--input", str(planted_scale), "--output", str(tmp_path / "f.parquet")])
        assert res.exit_code != 0 and "another run is writing" in res.output and f"pid {os.getpid()}" in res.output
    out = tmp_path / "shards"
    outdir.claim(out, "shard set")
    with outdir.FolderLock(out, "ccmb build-shards (the other run)"):
        with pytest.raises(outdir.OutputFolderError, match=r"another run is writing this folder.*the other run"):
            build_shards(planted_scale, out, samples_per_shard=8)
    assert not (out / "manifest.json").exists()


def test_a_rerun_with_other_settings_is_refused_and_others_folders_are_never_written(planted_scale, tmp_path):
    out = tmp_path / "shards"
    build_shards(planted_scale, out, samples_per_shard=8, shuffle=True, seed=1)
    shas = _shas(out)
    with pytest.raises(CurationError, match="other settings"):
        build_shards(planted_scale, out, samples_per_shard=8, shuffle=True, seed=2)
    assert _shas(out) == shas and build_shards(planted_scale, out, samples_per_shard=8, shuffle=True, seed=1).written == []
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(outdir.OutputFolderError, match="keep.txt"):
        build_shards(planted_scale, mine, samples_per_shard=8)
    assert sorted(os.listdir(mine)) == ["keep.txt"]
    (tmp_path / "user.parquet").write_bytes(pq.read_table(planted_scale / "00000.parquet").to_pandas().to_parquet())
    with pytest.raises(CurationError, match="user.parquet: exists and is not a decision table"):
        filter_samples(planted_scale, tmp_path / "user.parquet")


def test_zero_samples_is_an_error_with_the_drop_counts_unless_allowed(planted_scale, tmp_path):
    filter_samples(planted_scale, tmp_path / "f.parquet", min_side=100000)  # every image too small
    res = CliRunner().invoke(main, ["build-shards", "--input", str(planted_scale), "--output", str(tmp_path / "s"),
                                    "--keep", str(tmp_path / "f.parquet")])
    assert res.exit_code != 0
    line = [ln for ln in res.output.splitlines() if ln.startswith("Error")]  # (progress bars aside)
    assert len(line) == 1 and "0 samples" in line[0] and "too_small 55" in line[0] and "not_downloaded 4" in line[0]
    assert not (tmp_path / "s" / "manifest.json").exists()
    s = build_shards(planted_scale, tmp_path / "e", keep_tables=[tmp_path / "f.parquet"], allow_empty=True)
    assert s.samples == 0 and fmt.read_manifest(tmp_path / "e")["total_samples"] == 0
