"""``ccmb build-shards --blocklist``: a takedown list (MD5/SHA-256 hashes, URLs, domains) applied to an
existing download folder drops exactly the listed rows, counted by reason in the summary, the CLI output and
the manifest, on both engines; the list is part of the build's settings."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main
from ccmb.corpus.api import build_shards
from ccmb.corpus.tables.schema import CurationError
from curation_helpers import CAPTIONS, jpeg, rand_image, write_download

URLS = ["http://img.example.com/0.jpg", "http://img.example.com/1.jpg", "http://img.example.com/2.jpg",
        "http://Img.Example.com:80/3.jpg#frag", "http://img.example.com/4.jpg", "http://a.bad.example/5.jpg",
        "http://bad.example/6.jpg", "http://notbad.example/7.jpg", "http://img.example.com/8.jpg",
        "http://img.example.com/9.jpg", "http://img.example.com/10.jpg"]


@pytest.fixture
def folder(tmp_path):
    """11 distinct downloaded rows (the default filter and dedup keep them all) and one failure, over 3 tars."""
    images = [jpeg(rand_image(100 + i)) for i in range(len(URLS))]
    rows = [{"url": u, "caption": CAPTIONS[i], "image": images[i]} for i, u in enumerate(URLS)]
    rows.append({"url": "http://bad.example/dead.jpg", "caption": "下载失败的一行"})
    return write_download(tmp_path / "dl", rows, per_shard=5), images


def _keys_by_url(d):
    t = pa.concat_tables(pq.read_table(p, columns=["key", "url"]) for p in sorted(d.glob("*.parquet")))
    return dict(zip(t.column("url").to_pylist(), t.column("key").to_pylist()))


def _kept(out):
    return sorted(s.meta["source_key"] for s in shards.iter_samples(out))


def _lists(tmp_path, images):
    md5 = tmp_path / "md5.txt"
    md5.write_text("# takedown of two images by MD5 and one by SHA-256\n"
                   f"{hashlib.md5(images[0]).hexdigest()}\nmd5:{hashlib.md5(images[8]).hexdigest().upper()}\n"
                   f"{hashlib.sha256(images[9]).hexdigest()}\n{hashlib.md5(b'not in the corpus').hexdigest()}\n")
    urls = tmp_path / "urls.txt"
    urls.write_text("http://img.example.com/1.jpg\nHTTP://IMG.EXAMPLE.COM/3.jpg\nhttps://img.example.com/4.jpg\n")
    domains = tmp_path / "domains.txt"
    domains.write_text("bad.example\n")
    return {"hash": (md5, {"blocklist_md5": 2, "blocklist_sha256": 1}, [URLS[0], URLS[8], URLS[9]]),
            # 4.jpg is listed as https: another URL, kept
            "url": (urls, {"blocklist_url": 2}, [URLS[1], URLS[3]]),
            # the failed row on bad.example stays not_downloaded; notbad.example is another domain
            "domain": (domains, {"blocklist_domain": 2}, [URLS[5], URLS[6]])}


@pytest.mark.parametrize("kind", ["hash", "url", "domain"])
def test_each_list_drops_exactly_the_planted_rows(folder, tmp_path, kind):
    d, images = folder
    path, counts, urls = _lists(tmp_path, images)[kind]
    keys = _keys_by_url(d)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(out), "--blocklist", str(path),
                                    "--samples-per-shard", "4"])
    assert res.exit_code == 0, res.output
    everything = sorted(k for u, k in keys.items() if u != "http://bad.example/dead.jpg")
    assert _kept(out) == sorted(set(everything) - {keys[u] for u in urls})
    for reason, n in counts.items():
        assert f"dropped {reason}: {n}" in res.output
    assert "dropped not_downloaded: 1" in res.output
    assert f"blocklist {path}" in res.output and f"dropped {sum(counts.values())} rows" in res.output
    manifest = shards.read_manifest(out)
    assert manifest["dropped"] == {**counts, "not_downloaded": 1}
    record = manifest["provenance"]["blocklist"]
    assert record["dropped"] == counts and record["files"] == [str(path)] and len(record["sha256"]) == 64
    assert manifest["build"]["blocklist_sha256"] == record["sha256"]


@pytest.mark.spark
def test_lists_combine_with_keep_tables_and_engines_agree(folder, tmp_path, spark):
    """All three lists at once with a --keep table (which drops a row a list also drops: the list's reason
    wins) on the in-process engine and on Spark: the same shards, counts and provenance."""
    d, images = folder
    lists = _lists(tmp_path, images)
    keys = _keys_by_url(d)
    files = [lists[k][0] for k in ("hash", "url", "domain")]
    from ccmb.corpus.api import filter_samples
    filter_samples(d, tmp_path / "filter.parquet", min_side=0, blocklist=[CAPTIONS[5][:4], CAPTIONS[2][:4]])
    got = {}
    for engine in ("local", "spark"):
        s = build_shards(d, tmp_path / engine, keep_tables=[tmp_path / "filter.parquet"], blocklist=files,
                         samples_per_shard=3, shuffle=True, seed=4, engine=engine,
                         spark=spark if engine == "spark" else None)
        got[engine] = (s.dropped, {k: v["sha256"] for k, v in shards.read_manifest(tmp_path / engine)["shards"].items()},
                       shards.read_manifest(tmp_path / engine)["provenance"]["blocklist"])
    assert got["local"] == got["spark"]
    assert got["local"][0] == {"blocklist_md5": 2, "blocklist_url": 2, "blocklist_domain": 2, "blocklist_sha256": 1,
                               "blocklist": 1, "not_downloaded": 1}
    dropped = {keys[u] for k in lists for u in lists[k][2]} | {keys[URLS[2]]}
    assert _kept(tmp_path / "local") == sorted(set(keys.values()) - dropped - {keys["http://bad.example/dead.jpg"]})


def test_another_list_is_refused_on_rerun_the_same_resumes(folder, tmp_path):
    d, images = folder
    lists = _lists(tmp_path, images)
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["build-shards", "--input", str(d), "--output", str(out), "--samples-per-shard", "4"]
    assert runner.invoke(main, args + ["--blocklist", str(lists["url"][0])]).exit_code == 0
    again = runner.invoke(main, args + ["--blocklist", str(lists["url"][0])])
    assert again.exit_code == 0 and "0 written, 3 already done" in again.output, again.output
    other = runner.invoke(main, args + ["--blocklist", str(lists["domain"][0])])
    assert other.exit_code == 1 and "other settings" in other.output and "blocklist_sha256" in other.output
    none = runner.invoke(main, args)
    assert none.exit_code == 1 and "other settings" in none.output


def test_folder_without_md5_column(folder, tmp_path):
    """A folder downloaded before ccmb wrote MD5s: an MD5 list is refused naming the folder and parquet
    (nothing is written); URL and domain lists still apply."""
    d, images = folder
    lists = _lists(tmp_path, images)
    first = sorted(d.glob("*.parquet"))[1]
    t = pq.read_table(first)
    pq.write_table(t.drop_columns(["md5"]), first)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(out),
                                    "--blocklist", str(lists["hash"][0])])
    assert res.exit_code == 1 and str(d) in res.output and first.name in res.output and "no md5 column" in res.output
    assert not out.exists()
    with pytest.raises(CurationError, match="no md5 column"):
        build_shards(d, out, blocklist=[lists["hash"][0]])
    s = build_shards(d, out, blocklist=[lists["domain"][0]], samples_per_shard=4)
    assert s.dropped["blocklist_domain"] == 2


def test_bad_list_line_is_named(folder, tmp_path):
    d, _ = folder
    bad = tmp_path / "bad.txt"
    bad.write_text("bad.example\nftp://x.example/a.jpg\n")
    res = CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(tmp_path / "o"),
                                    "--blocklist", str(bad)])
    assert res.exit_code == 1 and f"{bad}:2" in res.output


def test_url_fast_path_agrees_with_normalize_url():
    """URLs the vectorised step matches without normalising are ones normalize_url leaves unchanged, and its
    hosts are host_of's (random URLs from pieces: case, ports, dots, user info, fragments, empty queries,
    non-ASCII and control characters); blocked() gives the same answer as normalising every row, for URLs and
    domains."""
    import random

    import pyarrow.compute as pc

    from ccmb import blocklist as bl

    rng = random.Random(1)
    pieces = ["http://", "https://", "HTTP://", "a.com", "A.com", "a.com.", ":80", ":8080", "/", "/p", "?", "?q=1",
              "#f", "@", " ", "\t", "x", "..", "/%7E", "?#", "[::1]", "\u3000", "\u00e9", "\x00", "\x7f", "\\", "//", "u@", "b.org", "B.Org."]
    urls = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 7))) for _ in range(100000)]
    fast = pc.match_substring_regex(pa.array(urls), bl._NORMAL_URL_RE).to_pylist()
    assert sum(fast) >= 10
    assert [u for u, f in zip(urls, fast) if f and bl.normalize_url(u) != u] == []
    hosts = bl.url_hosts_of(pa.array(urls)).to_pylist()
    assert [(u, h) for u, h in zip(urls, hosts) if h != bl.host_of(u)] == []
    listed = frozenset(bl.normalize_url(u) for u in rng.sample(urls, 2000) if u.lower().startswith("http"))
    got = bl.blocked(pa.table({"url": urls}), bl.Blocklist(urls=listed), codes=True).to_pylist()
    want = ["blocklist_url" if bl.normalize_url(u) in listed else None for u in urls]
    assert got == want and got.count("blocklist_url") > 1000
    domains = frozenset({"a.com", "b.org", "x"})
    got = bl.blocked(pa.table({"url": urls}), bl.Blocklist(domains=domains), codes=True).to_pylist()
    want = ["blocklist_domain" if bl.Blocklist(domains=domains).match_url(u) else None for u in urls]
    assert got == want and got.count("blocklist_domain") > 1000
