"""Issue 12 item 2 and 4: keep-aware dedup, build-shards never loses both copies, shard-set provenance."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
from curation_helpers import jpeg, rand_image

from ccmb import shards as fmt
from ccmb.corpus.api import build_shards
from ccmb.corpus.api import dedup_samples
from ccmb.corpus.api import filter_samples


def _rows(path):
    return {r["key"]: r for r in pq.read_table(path).to_pylist()}


def _source_keys(shard_dir):
    return {s.meta["source_key"] for tar in fmt.list_shards(shard_dir) for s in fmt.iter_tar_samples(tar)}


BLOCK = ["外滩", "橘猫"]  # the captions of orig1 and orig2


def test_dedup_with_keep_picks_representatives_the_filter_keeps(planted, tmp_path):
    d, k = planted
    filter_samples(d, tmp_path / "f.parquet", blocklist=BLOCK)
    dedup_samples(d, tmp_path / "d.parquet", keep_tables=[tmp_path / "f.parquet"])
    t = _rows(tmp_path / "d.parquet")
    assert t[k["orig1"]]["reason"] == "blocklist" and t[k["orig2"]]["reason"] == "blocklist"
    assert t[k["same_bytes"]]["keep"] and t[k["resized"]]["keep"]  # they represent their images now
    for r in t.values():
        if r["duplicate_of"]:
            assert t[r["duplicate_of"]]["keep"]


def test_build_restores_duplicates_whose_kept_copy_another_table_drops(planted, tmp_path):
    d, k = planted
    # made independently: dedup keeps orig1/orig2 and drops their copies; the filter drops orig1/orig2
    dedup_samples(d, tmp_path / "d.parquet")
    filter_samples(d, tmp_path / "f.parquet", blocklist=BLOCK)
    d_rows = _rows(tmp_path / "d.parquet")
    assert d_rows[k["same_bytes"]]["duplicate_of"] == k["orig1"]
    assert d_rows[k["resized"]]["duplicate_of"] == k["orig2"]
    out = tmp_path / "shards"
    summary = build_shards(d, out, keep_tables=[tmp_path / "f.parquet", tmp_path / "d.parquet"])
    kept = _source_keys(out)
    assert k["same_bytes"] in kept and k["resized"] in kept       # restored: one copy of each image stays
    assert k["orig1"] not in kept and k["orig2"] not in kept
    assert k["url_https"] not in kept and k["caption_dup"] not in kept  # their kept copies are still there
    manifest = fmt.read_manifest(out)
    assert manifest["restored"] == {"duplicate_sha256": 1, "duplicate_phash": 1}
    assert summary.samples == len(kept) == 12
    assert any(line.startswith("  restored duplicate_phash: 1") for line in summary.lines())
    # the same result as running dedup after the filter
    dedup_samples(d, tmp_path / "d2.parquet", keep_tables=[tmp_path / "f.parquet"])
    build_shards(d, tmp_path / "shards2", keep_tables=[tmp_path / "f.parquet", tmp_path / "d2.parquet"])
    assert _source_keys(tmp_path / "shards2") == kept
    assert fmt.read_manifest(tmp_path / "shards2")["restored"] == {}


def test_build_restores_one_copy_per_exact_value(make_download, tmp_path):
    a, b = jpeg(rand_image(1)), jpeg(rand_image(2))
    rows = [dict(url="http://x/a.jpg", caption="广告图片需要过滤", image=a),
            dict(url="http://x/a2.jpg", caption="第一份相同的图片", image=a),
            dict(url="http://x/a3.jpg", caption="第二份相同的图片", image=a),
            dict(url="http://x/b.jpg", caption="另一张不同的图片", image=b)]
    d = make_download(rows)
    dedup_samples(d, tmp_path / "d.parquet", levels=["sha256"])
    filter_samples(d, tmp_path / "f.parquet", blocklist=["广告"])
    build_shards(d, tmp_path / "s", keep_tables=[tmp_path / "d.parquet", tmp_path / "f.parquet"])
    keys = sorted(_rows(tmp_path / "d.parquet"))
    assert _source_keys(tmp_path / "s") == {keys[1], keys[3]}  # one copy of a (the lowest key), and b


def test_manifest_records_the_tables_that_made_the_shard_set(planted, tmp_path):
    d, k = planted
    filter_samples(d, tmp_path / "f.parquet")
    dedup_samples(d, tmp_path / "d.parquet", keep_tables=[tmp_path / "f.parquet"])
    out = tmp_path / "shards"
    build_shards(d, out, keep_tables=[tmp_path / "f.parquet", tmp_path / "d.parquet"])
    prov = json.loads((out / "manifest.json").read_text())["provenance"]
    tables = prov["decision_tables"]
    assert [t["kind"] for t in tables] == ["filter", "dedup"]
    assert tables[1]["fingerprint"] == "sha256:" + fmt.sha256_file(tmp_path / "d.parquet")
    assert tables[1]["dropped"] == sum(1 for r in _rows(tmp_path / "d.parquet").values() if not r["keep"])
    assert prov["decontamination"] == {"against": [], "report": None}
    # the default build (no --keep) records its own tables
    build_shards(d, tmp_path / "s2")
    prov = fmt.read_manifest(tmp_path / "s2")["provenance"]
    assert [t["kind"] for t in prov["decision_tables"]] == ["filter", "dedup"]
    assert prov["decision_tables"][0]["path"].endswith("_build/filter.parquet")
