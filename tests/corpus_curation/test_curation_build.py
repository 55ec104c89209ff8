"""build-shards (determinism, restart, --keep), verify (corrupt / missing / wrong count), stats."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main
from ccmb.corpus import api
from ccmb.corpus.steps import build as build_mod
from ccmb.corpus.api import build_shards
from ccmb.corpus.api import dedup_samples
from ccmb.corpus.api import filter_samples
from ccmb.corpus.stats import corpus_stats
from ccmb.corpus.tables.schema import CurationError
from ccmb.corpus.verify import verify_shards


def _shas(out):
    return {name: e["sha256"] for name, e in shards.read_manifest(out)["shards"].items()}


def _source_keys(out):
    return [s.meta["source_key"] for s in shards.iter_samples(out)]


def test_default_build_applies_filter_and_dedup(planted, tmp_path):
    d, k = planted
    out = tmp_path / "out"
    summary = build_shards(d, out, samples_per_shard=5)
    assert summary.samples == 12 and summary.shards == 3 and len(summary.written) == 3
    assert summary.dropped == {"duplicate_url": 2, "duplicate_sha256": 1, "duplicate_phash": 1,
                               "duplicate_caption": 1, "not_downloaded": 1}
    src = _source_keys(out)
    assert src == sorted(src) and k["orig0"] in src and k["url_https"] not in src
    assert shards.read_sizes(out) == {"00000.tar": 5, "00001.tar": 5, "00002.tar": 2}
    samples = list(shards.iter_samples(out))
    assert [s.key for s in samples] == [shards.make_key(i // 5, i % 5, 5) for i in range(12)]
    orig = {s.key: s for s in shards.iter_samples(d)}
    for s in samples:                                   # bytes and texts carried over unchanged
        assert s.image == orig[s.meta["source_key"]].image and s.text == orig[s.meta["source_key"]].text
    assert verify_shards(out).ok


def test_shuffle_is_deterministic_for_a_seed(planted, tmp_path):
    d, _ = planted
    a = build_shards(d, tmp_path / "a", samples_per_shard=4, shuffle=True, seed=1)
    build_shards(d, tmp_path / "b", samples_per_shard=4, shuffle=True, seed=1)
    build_shards(d, tmp_path / "c", samples_per_shard=4, shuffle=True, seed=2)
    assert _shas(tmp_path / "a") == _shas(tmp_path / "b")          # byte-identical shards
    assert _source_keys(tmp_path / "a") == _source_keys(tmp_path / "b")
    assert _source_keys(tmp_path / "a") != _source_keys(tmp_path / "c")
    assert sorted(_source_keys(tmp_path / "a")) == sorted(_source_keys(tmp_path / "c"))
    assert _source_keys(tmp_path / "a") != sorted(_source_keys(tmp_path / "a")) and a.samples == 12


def test_restart_after_a_crash(planted, tmp_path, monkeypatch):
    d, _ = planted
    ref = tmp_path / "ref"
    build_shards(d, ref, samples_per_shard=3)
    out = tmp_path / "out"
    real = build_mod._write_one
    calls = []

    def crashing(input_dir, output_dir, samples_per_shard, plan, index, *known):
        calls.append(index)
        if index == 2:
            # die in the middle of shard 2 (shard 1 may still be publishing): a temporary is left, no 00002.tar
            with shards.ShardWriter(output_dir, index):
                raise KeyboardInterrupt("simulated kill")
        return real(input_dir, output_dir, samples_per_shard, plan, index, *known)

    monkeypatch.setattr(build_mod, "_write_one", crashing)
    with pytest.raises(KeyboardInterrupt):
        build_shards(d, out, samples_per_shard=3)
    assert (out / "_build" / "plan.json").exists() and not (out / "manifest.json").exists()
    assert not (out / "00002.tar").exists() and (out / "00001.tar").exists()
    mtime0 = (out / "00000.tar").stat().st_mtime_ns
    monkeypatch.setattr(build_mod, "_write_one", real)
    # the plan is reused: the filter/dedup step must not run again
    monkeypatch.setattr(api, "_build_plan", lambda *a, **k: pytest.fail("plan recomputed"))
    summary = build_shards(d, out, samples_per_shard=3)
    assert summary.skipped == ["00000", "00001"] and summary.written == ["00002", "00003"]
    assert (out / "00000.tar").stat().st_mtime_ns == mtime0
    assert _shas(out) == _shas(ref)
    assert verify_shards(out).ok
    # a shard whose bytes no longer match its recorded checksum is rewritten
    (out / "00001.tar").write_bytes(b"x")
    summary = build_shards(d, out, samples_per_shard=3)
    assert summary.written == ["00001"] and _shas(out) == _shas(ref)
    # other settings in the same folder are refused
    with pytest.raises(CurationError, match="other settings"):
        build_shards(d, out, samples_per_shard=4)


def test_keep_tables(planted, tmp_path):
    d, k = planted
    filter_samples(d, tmp_path / "f.parquet", blocklist=["外滩"])          # drops orig1
    dedup_samples(d, tmp_path / "d.parquet", levels=("url",))
    out = tmp_path / "out"
    summary = build_shards(d, out, keep_tables=[tmp_path / "f.parquet", tmp_path / "d.parquet"],
                           samples_per_shard=100)
    src = set(_source_keys(out))
    assert k["orig1"] not in src and k["url_https"] not in src and k["url_utm"] not in src
    assert k["same_bytes"] in src and k["resized"] in src           # only the URL level ran
    assert summary.samples == 14 and summary.dropped["blocklist"] == 1
    with pytest.raises(CurationError, match="nope.parquet"):
        build_shards(d, tmp_path / "o2", keep_tables=[tmp_path / "nope.parquet"])


def test_verify_catches_corrupt_missing_and_wrong_counts(planted, tmp_path):
    d, _ = planted
    out = tmp_path / "out"
    build_shards(d, out, samples_per_shard=4)
    assert verify_shards(out).ok
    runner = CliRunner()
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 0 and "0 problems" in res.output

    data = bytearray((out / "00000.tar").read_bytes())
    data[1000] ^= 0xFF                                            # corrupt bytes inside the first image
    (out / "00000.tar").write_bytes(bytes(data))
    (out / "00001.tar").unlink()
    sizes = json.loads((out / "sizes.json").read_text())
    sizes["00002.tar"] += 1
    (out / "sizes.json").write_text(json.dumps(sizes))
    report = verify_shards(out)
    text = "\n".join(report.problems)
    assert "00000.tar: sha256 differs" in text
    assert "00001.tar: missing" in text
    assert "00002.tar" in text and "sizes.json says" in text
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 1 and "00001.tar: missing" in res.output


def test_stats(planted, tmp_path):
    d, _ = planted
    s = corpus_stats(d)
    assert s["rows"] == 18 and s["successes"] == 17 and s["status"] == {"success": 17, "failed_to_download": 1}
    assert s["failure_reasons"] == {"HTTP 404": 1}
    assert s["text_length"]["caption"]["count"] == 17 and s["text_length"]["caption"]["min"] >= 10
    assert s["image_size"]["width"]["max"] == 256 and s["image_size"]["width"]["min"] == 200
    assert sum(s["image_size"]["min_side_histogram"].values()) == 17
    res = CliRunner().invoke(main, ["stats", str(d), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["rows"] == 18
    res = CliRunner().invoke(main, ["stats", str(d)])
    assert "18 rows" in res.output and "HTTP 404" in res.output
    # deleted parquets are refused, naming them; a folder of bare tars falls back to the samples' json
    for p in d.glob("*.parquet"):
        p.unlink()
    with pytest.raises(CurationError, match="00000.parquet"):
        corpus_stats(d)
    for p in d.glob("*_stats.json"):
        p.unlink()
    assert corpus_stats(d)["successes"] == 17


def test_cli_build_shards(planted, tmp_path):
    d, _ = planted
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(out),
                                    "--samples-per-shard", "6", "--shuffle", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert "12 samples of 18 rows in 2 shards" in res.output
    m = shards.read_manifest(out)
    assert m["total_samples"] == 12 and m["build"]["seed"] == 5 and m["command"]


def test_unreadable_source_tar_names_the_file(planted, tmp_path):
    d, _ = planted
    dedup_samples(d, tmp_path / "d.parquet", levels=("url",))
    (d / "00001.tar").write_bytes(b"\0garbage" * 64)
    with pytest.raises(CurationError, match="00001.tar"):
        build_shards(d, tmp_path / "out", keep_tables=[tmp_path / "d.parquet"], samples_per_shard=4)
    res = CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(tmp_path / "o2"),
                                    "--keep", str(tmp_path / "d.parquet")])
    assert res.exit_code != 0 and "00001.tar" in res.output
