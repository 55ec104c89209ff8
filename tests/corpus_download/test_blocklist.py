"""--blocklist: the list file, the pure Arrow step (for build-shards), and a download that honours it."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest
from click.testing import CliRunner

from ccmb import blocklist as bl
from ccmb import shards
from ccmb.cli import main
from ccmb.corpus import download as dl
from dl_helpers import jpeg, write_jsonl, zero_record

pytestmark = pytest.mark.timeout(240)


def _list(tmp_path, text):
    p = tmp_path / "takedown.txt"
    p.write_text(text, encoding="utf-8")
    return bl.Blocklist.load(p)


def test_list_entries_and_errors(tmp_path):
    b = _list(tmp_path, "# takedown 2026-01\n" + "A" * 32 + "\nsha256:" + "b" * 64 + "  # a stored image\n"
              "https://Img.Example.com:443/a/1.jpg#frag\n*.bad.example\nexample.org.\ndomain:localnet\n\n")
    assert b.md5 == {"a" * 32} and b.sha256 == {"b" * 64}
    assert b.urls == {"https://img.example.com/a/1.jpg"} and b.domains == {"bad.example", "example.org", "localnet"}
    assert len(b) == 6 and b.describe()["domains"] == 3 and len(b.digest) == 64
    assert b.match_url("https://img.example.com/a/1.jpg") == "blocklisted (url)"
    assert b.match_url("http://cdn.x.bad.example/p.jpg") == "blocklisted (domain bad.example of the url)"
    assert b.match_url("http://notbad.example/p.jpg") is None and b.match_url("http://example.org:8080/x")
    assert b.match_hashes(md5="A" * 32) == "blocklisted (md5 of the image)"
    assert b.match_bytes(b"x", "downloaded image") is None
    for bad in ("md5:abc", "ftp://x/y", "not a domain", "sha256:" + "a" * 32):
        with pytest.raises(bl.BlocklistError, match=r"takedown.txt:1: not an MD5"):
            _list(tmp_path, bad + "\n")
    with pytest.raises(bl.BlocklistError, match="cannot read"):
        bl.Blocklist.load(tmp_path / "missing.txt")


def test_the_arrow_step_reports_a_reason_per_row(tmp_path):
    stored = b"stored image"
    b = _list(tmp_path, hashlib.md5(stored).hexdigest() + "\n" + hashlib.sha256(b"other").hexdigest()
              + "\nhttp://h.example/x.jpg\nbad.example\n")
    batch = pa.record_batch({
        "key": ["0", "1", "2", "3", "4", "5", "6"],
        "url": ["http://ok.example/1.jpg", "http://h.example/x.jpg", "http://a.bad.example/2.jpg",
                "http://ok.example/3.jpg", "http://ok.example/4.jpg", None, "http://ok.example/6.jpg"],
        "page_url": [None, None, None, "https://www.bad.example/page", None, None, None],
        "md5": [None, None, None, None, hashlib.md5(stored).hexdigest().upper(), None, None],
        "sha256": [None, None, None, None, None, None, hashlib.sha256(b"other").hexdigest()],
    })
    reasons = bl.blocked(batch, b).to_pylist()
    assert reasons == [None, "blocklisted (url)", "blocklisted (domain bad.example of the url)",
                       "blocklisted (domain bad.example of the page_url)", "blocklisted (md5 of the image)", None,
                       "blocklisted (sha256 of the image)"]
    kept, counts = bl.drop_blocked(pa.Table.from_batches([batch]), b)
    assert kept.column("key").to_pylist() == ["0", "5"] and sum(counts.values()) == 5
    assert bl.blocked(pa.record_batch({"title": ["x"]}), b).to_pylist() == [None]  # no matching columns: pure no-op


def test_download_honours_the_blocklist(tmp_path, image_server, small_opts):
    b = image_server.base
    recs = [zero_record(i, f"{b}/img/{i}.jpg") for i in range(6)]
    recs[4]["Url"] = "http://www.blocked.invalid/page/4"  # the page's domain is listed
    src = write_jsonl(tmp_path / "zero.jsonl", recs)
    first = dl.download([src], tmp_path / "plain", **small_opts)
    assert first.successes == 6
    stored = {s.meta["url"]: s.meta for s in shards.iter_samples(tmp_path / "plain")}
    meta5 = stored[f"{b}/img/5.jpg"]
    assert meta5["original_md5"] == hashlib.md5(jpeg(5)).hexdigest() and len(meta5["sha256"]) == 64
    listed = tmp_path / "takedown.txt"
    listed.write_text(f"{b}/img/1.jpg\nblocked.invalid\n{hashlib.md5(jpeg(2)).hexdigest()}\n{meta5['sha256']}\n",
                      encoding="utf-8")
    n = len(image_server.requests)
    res = CliRunner().invoke(main, ["download", "zero", "-i", str(src), "-o", str(tmp_path / "screened"),
                                    "--allow-private", "--processes", "1", "--threads", "4", "--image-size", "32",
                                    "--retries", "0", "--samples-per-shard", "10", "--blocklist", str(listed)])
    assert res.exit_code == 0, res.output
    requested = image_server.requests[n:]
    assert "/img/1.jpg" not in requested and "/img/4.jpg" not in requested  # never asked for
    rows = {r["url"]: r for p in sorted((tmp_path / "screened").glob("[0-9]*.parquet"))
            for r in shards.read_parquet(p).to_pylist()}
    assert rows[f"{b}/img/1.jpg"]["error_message"] == "blocklisted (url)"
    assert rows[f"{b}/img/4.jpg"]["error_message"] == "blocklisted (domain blocked.invalid of the page_url)"
    assert rows[f"{b}/img/2.jpg"]["error_message"] == "blocklisted (md5 of the downloaded image)"
    assert rows[f"{b}/img/5.jpg"]["error_message"] == "blocklisted (sha256 of the stored image)"
    assert rows[f"{b}/img/5.jpg"]["sha256"] is None  # nothing of a refused image is kept
    assert {r["status"] for u, r in rows.items() if u.endswith(("/0.jpg", "/3.jpg"))} == {"success"}
    assert "blocklist 4" in res.output
    samples = list(shards.iter_samples(tmp_path / "screened"))
    assert sorted(s.meta["url"] for s in samples) == [f"{b}/img/0.jpg", f"{b}/img/3.jpg"]
    assert all(s.meta["md5"] == hashlib.md5(s.image).hexdigest() for s in samples)
