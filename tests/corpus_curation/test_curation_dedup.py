"""ccmb dedup: each level with planted duplicates, the keep rule, switches, LSH never all pairs."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from curation_helpers import jpeg, rand_image
from PIL import Image

from ccmb.cli import main
from ccmb.corpus.primitives import groups, minhash
from ccmb.corpus.api import dedup_samples, dedup_table
from ccmb.corpus.steps.levels import DedupConfig
from ccmb.corpus.primitives.phash import hamming, phash_bytes
from ccmb.corpus.tables.schema import CurationError
from ccmb.corpus.primitives.urlnorm import normalize_urls


def _by_key(table: pa.Table):
    return {r["key"]: r for r in table.to_pylist()}


def test_every_level_catches_its_planted_duplicates(planted, tmp_path):
    d, k = planted
    summary = dedup_samples(d, tmp_path / "d.parquet")
    rows = _by_key(pq.read_table(tmp_path / "d.parquet"))
    expect = {"url_https": ("duplicate_url", "orig0"), "url_utm": ("duplicate_url", "orig0"),
              "same_bytes": ("duplicate_sha256", "orig1"), "resized": ("duplicate_phash", "orig2"),
              "caption_dup": ("duplicate_caption", "orig3"), "failed": ("not_downloaded", None)}
    for label, (reason, of) in expect.items():
        row = rows[k[label]]
        assert (row["reason"], row["duplicate_of"]) == (reason, k[of] if of else None), label
        assert row["keep"] is False
    kept = {key for key, r in rows.items() if r["keep"]}
    assert kept == {k[f"orig{i}"] for i in range(8)} | {k[f"other{i}"] for i in range(4)}
    assert summary.rows == 18 and summary.kept == 12
    # every duplicate points at a kept sample with a lower key
    for key, r in rows.items():
        if r["duplicate_of"]:
            assert rows[r["duplicate_of"]]["keep"] and r["duplicate_of"] < key


def test_levels_are_switchable(planted):
    d, k = planted
    t = _by_key(dedup_table(d, DedupConfig(levels=("sha256", "caption"))))
    assert t[k["url_https"]]["keep"] and t[k["resized"]]["keep"]          # url and phash off
    assert t[k["same_bytes"]]["reason"] == "duplicate_sha256"
    assert t[k["caption_dup"]]["reason"] == "duplicate_caption"
    # without the sha256 level, the same bytes are still caught by the pHash level (distance 0)
    t = _by_key(dedup_table(d, DedupConfig(levels=("phash",))))
    assert t[k["same_bytes"]]["reason"] == "duplicate_phash"
    assert t[k["same_bytes"]]["duplicate_of"] == k["orig1"]
    with pytest.raises(ValueError, match="unknown dedup levels"):
        DedupConfig(levels=("bogus",))


def test_keep_tables_exclude_filtered_samples(planted, tmp_path):
    d, k = planted
    from ccmb.corpus.api import filter_samples

    # orig0 is filtered out (blocklist on its caption): its URL duplicates are then kept, the lowest of them
    filter_samples(d, tmp_path / "f.parquet", blocklist=["故宫"])
    t = _by_key(dedup_table(d, DedupConfig(levels=("url",)), keep_tables=[tmp_path / "f.parquet"]))
    assert t[k["orig0"]]["reason"] == "blocklist"
    assert t[k["url_https"]]["keep"] is True
    assert (t[k["url_utm"]]["reason"], t[k["url_utm"]]["duplicate_of"]) == ("duplicate_url", k["url_https"])


def test_url_normalisation():
    urls = ["http://Img.Example.com/a/b.jpg", "https://img.example.com/a/b.jpg/",
            " https://IMG.example.com:443/a/b.jpg?utm_source=x&utm_medium=y#frag",
            "http://img.example.com:80/a/b.jpg?spm=1.2&fbclid=abc"]
    assert set(normalize_urls(urls).to_pylist()) == {"//img.example.com/a/b.jpg"}
    other = normalize_urls(["http://img.example.com/A/b.jpg", "http://img.example.com/a/b.jpg?x=1&utm_x=2&y=3",
                            "", None, "not a url"]).to_pylist()
    assert other == ["//img.example.com/A/b.jpg", "//img.example.com/a/b.jpg?x=1&y=3", None, None, "not a url"]


def test_phash_is_robust_to_resizing_and_separates_images():
    base = rand_image(7, (320, 240))
    h = phash_bytes([jpeg(base), jpeg(base.resize((160, 120), Image.Resampling.LANCZOS), 70),
                     jpeg(base.resize((640, 480))), jpeg(rand_image(8, (320, 240)))])
    d = hamming(np.repeat(h[:1], 3), h[1:])
    assert d[0] <= 4 and d[1] <= 4 and d[2] > 12
    assert h.dtype == np.uint64


def test_band_pairs_are_only_same_bucket_pairs():
    rng = np.random.default_rng(0)
    col = rng.integers(0, 50, size=2000)
    pairs = set()
    for a, b in groups.band_pairs(col):
        assert np.all(col[a] == col[b])
        pairs.update(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    counts = np.bincount(col)
    assert len(pairs) == int((counts * (counts - 1) // 2).sum())   # every same-bucket pair, once
    assert len(pairs) < 2000 * 1999 // 2 / 10                        # far fewer than all pairs


def test_phash_grouping_recall_is_exact_within_threshold():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, size=200, dtype=np.uint64)
    near = base ^ (np.uint64(1) << rng.integers(0, 64, size=200).astype(np.uint64))      # 1 bit off
    far = base ^ np.uint64(0xFFFF_FFFF_0000_0000)                                        # 32 bits off
    values = np.concatenate([base, near, far])
    reps = groups.component_reps(*_phash_nodes(values, threshold=4))
    assert np.all(reps[200:400] == np.arange(200)) and np.all(reps[:200] == np.arange(200))
    assert np.all(reps[400:] != reps[:200])


def _phash_nodes(values, threshold):
    rows = np.arange(len(values))
    uniq, node = groups.unique_nodes(values, rows, len(values))
    edges = groups.candidate_edges(groups.phash_bands(uniq, threshold + 1),
                                   lambda a, b: hamming(uniq[a], uniq[b]) <= threshold)
    return node, len(uniq), edges


def test_minhash_similarity_tracks_jaccard():
    texts = [t.as_py() for t in minhash.normalize_texts(
        ["北京故宫博物院秋天的红墙与金色银杏", "北京故宫博物院秋天的红墙与金色银杏！", "上海外滩夜景灯火辉煌", "", None, "猫"])]
    sig, valid = minhash.signatures(texts)
    assert valid.tolist() == [True, True, True, False, False, True]
    assert texts[0] == texts[1]                       # punctuation is normalised away
    sim = minhash.similarity(sig, np.array([0, 0]), np.array([1, 2]))
    assert sim[0] == 1.0 and sim[1] < 0.2
    a = "今天天气很好我们一起去公园散步吧好不好"
    sig2, _ = minhash.signatures([a, a[:-1] + "呀"], minhash.MinHashParams(num_perm=256, bands=32))
    s = minhash.similarity(sig2, np.array([0]), np.array([1]))[0]
    assert 0.75 < s < 1.0                             # true Jaccard of 3-grams: 16/18


def test_unreadable_tar_names_the_file(planted, tmp_path):
    d, _ = planted
    (d / "00001.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(Exception, match="00001.tar"):
        dedup_table(d, DedupConfig(levels=("phash",)))
    res = CliRunner().invoke(main, ["dedup", "--input", str(d), "--output", str(tmp_path / "x.parquet")])
    assert res.exit_code != 0 and "00001.tar" in res.output


def test_missing_tar_names_the_file(planted):
    d, _ = planted
    (d / "00002.tar").unlink()
    with pytest.raises(Exception, match="00002.tar"):
        dedup_table(d, DedupConfig(levels=("phash",)))


def test_duplicate_keys_are_an_error(make_download, tmp_path):
    d = make_download([dict(url="http://a/0.jpg", caption="一二三四", image=jpeg(rand_image(1)))])
    import shutil

    shutil.copy(d / "00000.parquet", d / "00001.parquet")
    with pytest.raises(CurationError, match="not unique"):
        dedup_table(d, DedupConfig(levels=("url",)))


def test_cli_switches(planted, tmp_path):
    d, k = planted
    out = tmp_path / "d.parquet"
    res = CliRunner().invoke(main, ["dedup", "--input", str(d), "--output", str(out), "--no-phash", "--no-caption"])
    assert res.exit_code == 0, res.output
    assert "duplicate_url: 2" in res.output and "duplicate_sha256: 1" in res.output
    assert "duplicate_phash" not in res.output


def test_keep_tables_are_matched_by_key_never_by_position(planted, tmp_path):
    """A table re-sorted with pyarrow (and a key missing) decides the same rows as the original, by key."""
    d, k = planted
    from ccmb.corpus.api import filter_table
    from ccmb.corpus.steps.filter import FilterConfig
    from ccmb.corpus.tables.writer import write_table

    full = filter_table(d, FilterConfig(blocklist=["故宫"]))
    write_table(tmp_path / "full.parquet", full, kind="filter", source=d)
    meta = pq.read_metadata(tmp_path / "full.parquet").metadata
    # reversed rows, the first key missing, the original's metadata kept (as a user's pyarrow rewrite does)
    part = full.slice(1).take(pa.array(list(range(full.num_rows - 2, -1, -1))))
    pq.write_table(part.replace_schema_metadata(meta), tmp_path / "part.parquet")
    assert pq.read_table(tmp_path / "part.parquet").column("key").to_pylist() != sorted(part.column("key").to_pylist())
    a = {r["key"]: r["reason"] for r in dedup_table(d, DedupConfig(levels=("url",)),
                                                    keep_tables=[tmp_path / "full.parquet"]).to_pylist()}
    b = {r["key"]: r["reason"] for r in dedup_table(d, DedupConfig(levels=("url",)),
                                                    keep_tables=[tmp_path / "part.parquet"]).to_pylist()}
    first = full.column("key")[0].as_py()
    assert b.pop(first) == "not_in:part.parquet" and a.pop(first) == "blocklist"
    assert a == b and "duplicate_url" in a.values()


def test_equal_values_group_exactly_even_if_every_bucket_hash_collides(monkeypatch):
    """The exact levels group by value within a partition (pyarrow's exact grouping): even if every value fell
    into one bucket (all hashes equal), every row points at the lowest key of its value."""
    import pyarrow as pa

    from ccmb.corpus.steps import exact

    rng = np.random.default_rng(0)
    pool = [f"//a.com/{i}" for i in range(100)] + ["猫" * 40]
    keys = [f"{i:06d}" for i in range(3000)]
    vals = [pool[i] if i < len(pool) else None for i in rng.integers(0, len(pool) + 3, 3000)]
    order = rng.permutation(3000)  # any row order
    t = pa.table({"key": pa.array(keys).take(pa.array(order)), "v": pa.array(vals).take(pa.array(order))})
    got = exact._first_of_value("duplicate_url", exact._valued("v", t))
    first = {}
    want = {}
    for k, v in zip(keys, vals):
        if v is not None:
            rep = first.setdefault(v, k)
            if rep != k:
                want[k] = rep
    assert dict(zip(got.column("key").to_pylist(), got.column("duplicate_of").to_pylist())) == want


def test_url_normal_form_keeps_parameters_that_only_start_like_tracking_ones():
    from ccmb.corpus.primitives.urlnorm import normalize_urls

    got = normalize_urls([
        "https://img.x.cn/p.jpg?spmid=7", "https://img.x.cn/p.jpg?id=7",
        "http://IMG.x.cn/p.jpg?id=2&utm_a=1&utm_b=2&z=1", "https://img.x.cn/p.jpg?a=1&spm=2&b=3",
        "https://img.x.cn/p.jpg?utm_source=a&spm=b", "https://b.cn/v?spm_id_from=333&x=1",
    ]).to_pylist()
    assert got == ["//img.x.cn/p.jpg?spmid=7", "//img.x.cn/p.jpg?id=7", "//img.x.cn/p.jpg?id=2&z=1",
                   "//img.x.cn/p.jpg?a=1&b=3", "//img.x.cn/p.jpg", "//b.cn/v?spm_id_from=333&x=1"]
