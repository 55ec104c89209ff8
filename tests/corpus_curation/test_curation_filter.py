"""ccmb filter: every rule gives its reason, sizes come from the original image, bad input names the file."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from curation_helpers import jpeg, rand_image

from ccmb.cli import main
from ccmb.corpus.api import filter_samples, filter_table
from ccmb.corpus.steps.filter import FilterConfig, escape_regex
from ccmb.corpus.tables.schema import CurationError

GOOD = "一只可爱的小猫在草地上玩耍"


def _rows():
    img = jpeg(rand_image(1))
    return [
        dict(url="http://a/0.jpg", caption=GOOD, image=img),                                    # kept
        dict(url="http://a/1.jpg", caption=GOOD, image=img, original_width=150, original_height=400),  # too_small
        dict(url="http://a/2.jpg", caption=GOOD, image=img, original_width=1300, original_height=400),  # ratio 3.25
        dict(url="http://a/3.jpg", caption="猫", image=img),                                     # text_too_short
        dict(url="http://a/4.jpg", caption="长" * 600, image=img),                               # text_too_long
        dict(url="http://a/5.jpg", caption="A cute kitten playing on grass 猫", image=img),     # low_chinese_share
        dict(url="http://a/6.jpg", caption="赌博网站的精彩广告图片", image=img),                   # blocklist
        dict(url="http://a/7.jpg", caption=GOOD, image=None, error="HTTP 404"),                 # not_downloaded
        # stored (resized) image is small but the original was big: kept, sizes come from the original
        dict(url="http://a/8.jpg", caption=GOOD, image=img, width=100, height=100,
             original_width=800, original_height=600),
        dict(url="http://a/9.jpg", caption="  " + GOOD + "　", image=img),                       # kept (trimmed)
        dict(url="http://a/10.jpg", caption="BIG sale ＶＩＰ", title=None, image=img, content="SPAM here"),
    ]


EXPECTED = [None, "too_small", "aspect_ratio", "text_too_short", "text_too_long", "low_chinese_share",
            "blocklist", "not_downloaded", None, None, "low_chinese_share"]


def test_each_rule_gives_its_reason(make_download, tmp_path):
    d = make_download(_rows(), per_shard=4)
    block = tmp_path / "block.txt"
    block.write_text("# comment line\n赌博\n\nspam\n", encoding="utf-8")
    summary = filter_samples(d, tmp_path / "f.parquet", blocklist=block)
    table = pq.read_table(tmp_path / "f.parquet")
    assert table.column("reason").to_pylist() == EXPECTED
    assert table.column("keep").to_pylist() == [r is None for r in EXPECTED]
    assert summary.rows == len(EXPECTED) and summary.kept == 3
    assert summary.dropped["low_chinese_share"] == 2 and summary.dropped["blocklist"] == 1
    assert table.column("key").to_pylist() == sorted(table.column("key").to_pylist())


def test_blocklist_matches_any_text_case_insensitive(make_download):
    d = make_download(_rows(), per_shard=4)
    # row 10 has "SPAM" only in content; with the Chinese-share rule off, the blocklist catches it
    t = filter_table(d, FilterConfig(min_chinese_share=0, blocklist=["spam"]))
    assert t.column("reason").to_pylist()[10] == "blocklist"
    assert t.column("reason").to_pylist()[5] is None


def test_rules_can_be_switched_off(make_download):
    d = make_download(_rows(), per_shard=4)
    t = filter_table(d, FilterConfig(min_side=0, max_ratio=0, min_text_len=0, max_text_len=0,
                                     min_chinese_share=0))
    assert t.column("reason").to_pylist() == ["not_downloaded" if r == "not_downloaded" else None
                                              for r in EXPECTED]


def test_regex_escape_keeps_terms_literal(make_download):
    d = make_download([dict(url="http://a/0.jpg", caption="价格是1+1元的优惠", image=jpeg(rand_image(1))),
                       dict(url="http://a/1.jpg", caption="价格是11元的优惠活动", image=jpeg(rand_image(2)))])
    t = filter_table(d, FilterConfig(blocklist=["1+1"]))
    assert t.column("reason").to_pylist() == ["blocklist", None]
    assert escape_regex("a.b(c)") == r"a\.b\(c\)"


def test_cli_prints_counts_per_reason(make_download, tmp_path):
    d = make_download(_rows(), per_shard=4)
    out = tmp_path / "f.parquet"
    res = CliRunner().invoke(main, ["filter", "--input", str(d), "--output", str(out), "--min-side", "160"])
    assert res.exit_code == 0, res.output
    assert "rows 11, kept 4" in res.output  # no blocklist here; the 150 px image is still too small
    assert "aspect_ratio: 1" in res.output and "not_downloaded: 1" in res.output
    assert out.exists()


def test_bad_parquet_names_the_file(make_download, tmp_path):
    d = make_download(_rows(), per_shard=4)
    (d / "00001.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(CurationError, match="00001.parquet"):
        filter_table(d, FilterConfig())
    res = CliRunner().invoke(main, ["filter", "--input", str(d), "--output", str(tmp_path / "x.parquet")])
    assert res.exit_code != 0 and "00001.parquet" in res.output
    with pytest.raises(CurationError, match="no NNNNN.parquet"):
        filter_table(tmp_path, FilterConfig())


def test_cjk_count_equals_the_regex_count():
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from ccmb.corpus.steps.filter import CJK_CLASS, count_cjk

    rng = np.random.default_rng(0)
    edges = [0x20, 0x41, 0xE9, 0x7FF, 0x3000, 0x33FF, 0x3400, 0x3FFF, 0x4000, 0x4DBF, 0x4DC0, 0x4DFF, 0x4E00,
             0x4FFF, 0x5000, 0x9FFF, 0xA000, 0xFF01, 0x1F600, 0x20000]
    strs = ["".join(chr(int(c)) for c in rng.choice(edges, rng.integers(0, 12))) for _ in range(2000)]
    arr = pa.array(strs + [None, "", "猫"])
    for a in (arr, arr.slice(7, 1500), arr.slice(1990)):
        assert count_cjk(a).to_pylist() == pc.fill_null(pc.count_substring_regex(a, CJK_CLASS), 0).to_pylist()


def test_sha256_packing():
    import hashlib

    import pyarrow as pa

    from ccmb.corpus.primitives.columns import sha256_to_binary

    h = hashlib.sha256(b"x").hexdigest()
    out = sha256_to_binary(pa.array([h, h.upper(), None, "zz" * 32, "abc"])).to_pylist()
    assert out[0] == bytes.fromhex(h) and out[1] == out[0]
    assert out[2:] == [None, None, None]
    assert sha256_to_binary(pa.array([h, None])).to_pylist() == [bytes.fromhex(h), None]


def test_streamed_output_equals_the_table_and_is_sorted(make_download, tmp_path):
    d = make_download(_rows(), per_shard=4)
    # swap two shards' parquet files: rows then arrive out of key order and the output is re-sorted
    for a, b in ((d / "00000.parquet", d / "00002.parquet"), (d / "00000_stats.json", d / "00002_stats.json")):
        tmp = d / "swap"  # the stats files too: a parquet's row count must match its shard's _stats.json
        a.rename(tmp), b.rename(a), tmp.rename(b)
    filter_samples(d, tmp_path / "f.parquet")
    written = pq.read_table(tmp_path / "f.parquet")
    expected = filter_table(d, FilterConfig())
    assert written.equals(expected)
    assert written.column("key").to_pylist() == sorted(written.column("key").to_pylist())
