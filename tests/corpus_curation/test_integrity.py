"""Damaged download folders: every consumer notices (issue 17 items 2 and 11).

``ccmb verify`` checks each tar's parquet (readable, schema, keys and values against the tar, counts against
``_stats.json``) and reports unsafe member names; ``ccmb stats`` and ``ccmb build-shards`` refuse a missing
or damaged parquet, naming it, instead of falling back to the tars or dropping that shard's rows."""
from __future__ import annotations

import io
import tarfile

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main
from ccmb.corpus.api import build_shards
from ccmb.corpus.stats import corpus_stats
from ccmb.corpus.tables.schema import CurationError
from ccmb.corpus.verify import verify_shards


@pytest.fixture
def download(planted):
    """The planted download folder finalized like ``ccmb download`` leaves it (sizes.json, manifest.json)."""
    d, _ = planted
    shards.finalize_shard_set(d)
    return d


def _problems(d) -> str:
    return "\n".join(verify_shards(d, decode_images=False).problems)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_intact_download_folder_verifies_and_counts(download):
    assert verify_shards(download).ok
    s = corpus_stats(download)
    assert (s["rows"], s["successes"]) == (18, 17)


def test_truncated_parquet(download, tmp_path):
    p = download / "00001.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert "00001.parquet: unreadable parquet" in _problems(download)
    with pytest.raises(CurationError, match="00001.parquet"):   # was: a silent fall-back to the tars
        corpus_stats(download)
    res = _cli("stats", download)
    assert res.exit_code != 0 and "00001.parquet" in res.output
    res = _cli("build-shards", "--input", download, "--output", tmp_path / "out")
    assert res.exit_code != 0 and "00001.parquet" in res.output


def test_deleted_parquet(download, tmp_path):
    (download / "00002.parquet").unlink()
    assert "00002.parquet: missing" in _problems(download)
    res = _cli("verify", download)
    assert res.exit_code == 1 and "00002.parquet" in res.output
    with pytest.raises(CurationError, match="00002.parquet"):
        corpus_stats(download)
    with pytest.raises(CurationError, match="00002.parquet"):  # was: exit 0, that shard's samples dropped
        build_shards(download, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def _rewrite(path, table):
    pq.write_table(table, path)


def test_parquet_with_a_row_removed(download):
    p = download / "00000.parquet"
    t = pq.read_table(p)
    _rewrite(p, t.slice(1))
    text = _problems(download)
    assert "00000.parquet: 5 rows, 00000_stats.json says 6" in text
    with pytest.raises(CurationError, match="00000_stats.json says 6"):
        corpus_stats(download)


def test_parquet_with_an_edited_value(download):
    p = download / "00000.parquet"
    t = pq.read_table(p)
    captions = t.column("caption").to_pylist()
    captions[2] = "被人改过的标题"
    _rewrite(p, t.set_column(t.column_names.index("caption"), "caption", [captions]))
    text = _problems(download)
    assert "00000.parquet: values differ from the samples' .json members: 000002.caption" in text
    assert "00000.parquet: sha256 differs from 00000_stats.json" in text


def test_parquet_with_a_sample_marked_failed(download):
    p = download / "00000.parquet"
    t = pq.read_table(p)
    status = t.column("status").to_pylist()
    status[0] = "failed_to_download"
    _rewrite(p, t.set_column(t.column_names.index("status"), "status", [status]))
    text = _problems(download)
    assert "samples of 00000.tar without a success row: 000000" in text
    assert "5 success rows, 00000_stats.json says 6" in text


def test_parquet_without_shard_columns(download, tmp_path):
    p = download / "00001.parquet"
    _rewrite(p, pq.read_table(p).drop(["status"]))
    assert "00001.parquet: not a shard parquet: no 'status' column" in _problems(download)
    with pytest.raises(CurationError, match="no 'status' column"):
        build_shards(download, tmp_path / "out")


def test_parquet_whose_keys_do_not_match_the_tar(download):
    p = download / "00001.parquet"
    t = pq.read_table(p)
    keys = pc.utf8_replace_slice(t.column("key"), 0, 1, "9")
    _rewrite(p, t.set_column(t.column_names.index("key"), "key", keys))
    text = _problems(download)
    assert "00001.parquet: success rows without a sample in 00001.tar: 900010" in text
    assert "samples of 00001.tar without a success row: 000010" in text


def test_unsafe_member_names_are_reported(download):
    tar = download / "00000.tar"
    with tarfile.open(tar, "a") as t:
        for name in ("../escape.jpg", "/etc/abs.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("000009.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    shards.finalize_shard_set(download)  # checksums up to date: only the names are wrong
    text = _problems(download)
    assert "00000.tar: member '../escape.jpg': '..' in the path" in text
    assert "00000.tar: member '/etc/abs.txt': absolute path" in text
    assert "00000.tar: member '000009.jpg': link to '/etc/passwd'" in text


def test_bare_tar_folder_still_reads_from_the_tars(download):
    for p in list(download.glob("*.parquet")) + list(download.glob("*_stats.json")):
        p.unlink()
    s = corpus_stats(download)
    assert s["source"] == "tar" and s["successes"] == 17
    assert verify_shards(download, decode_images=False).ok


def test_edited_parquet_reports_every_consequence(download):
    p = download / "00000.parquet"
    _rewrite(p, pq.read_table(p).slice(0, 4))          # the last two rows cut off
    text = _problems(download)
    assert "00000.parquet: 4 rows, 00000_stats.json says 6" in text
    assert "samples of 00000.tar without a success row: 000004, 000005" in text
    (download / "00001_stats.json").write_text("{", encoding="utf-8")
    assert "00001_stats.json: unreadable" in _problems(download)


def test_stats_refuses_a_parquet_whose_statuses_were_edited(download):
    p = download / "00002.parquet"
    t = pq.read_table(p)
    status = ["success"] * t.num_rows                   # the failed row now claims success
    _rewrite(p, t.set_column(t.column_names.index("status"), "status", [status]))
    with pytest.raises(CurationError, match="00002.parquet: 6 success rows, 00002_stats.json says 5"):
        corpus_stats(download)


def test_an_unfinished_shard_is_named_as_such(download):
    (download / "00001_stats.json").unlink()
    p = download / "00001.parquet"
    p.write_bytes(p.read_bytes()[:100])               # a writer still at work (or killed)
    with pytest.raises(CurationError, match="00001.parquet: unreadable parquet.*an unfinished shard"):
        corpus_stats(download)
