"""The shard format: writer -> reader round trip, atomicity, sizes.json/manifest.json."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from ccmb import shards as fmt


def jpeg(color=(200, 30, 30), size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def write_demo_shard(out: Path, index: int = 0, n: int = 3) -> list:
    keys = []
    with fmt.ShardWriter(out, index, source="unit-test") as w:
        for i in range(n):
            key = fmt.make_key(index, i, 100)
            meta = {"url": f"http://127.0.0.1/{key}.jpg", "title": f"标题{i}：小猫在草地上",
                    "content": "周围的文字" * (i + 1), "query": "可爱的猫", "image_key": f"ik{i}",
                    "width": 24, "height": 16}
            w.write(key, jpeg((10 * i, 20, 30)), meta["title"], meta)
            keys.append(key)
        w.write_failure({"key": fmt.make_key(index, n, 100), "url": "http://127.0.0.1/404"},
                        "failed_to_download", "HTTP 404")
    return keys


def test_keys_are_digits_and_unique():
    keys = {fmt.make_key(s, i, 10000) for s in range(3) for i in range(0, 10000, 997)}
    assert all(k.isdigit() for k in keys)
    assert len(keys) == 3 * len(range(0, 10000, 997))
    assert fmt.make_key(12, 7, 10000) == "000120007"
    with pytest.raises(ValueError):
        fmt.check_key("12.3")
    with pytest.raises(ValueError):
        fmt.make_key(0, 100, 100)


def test_round_trip_with_chinese_text_and_missing_optional_fields(tmp_path):
    with fmt.ShardWriter(tmp_path, 0) as w:
        w.write("000000", jpeg(), "一只橘猫睡在沙发上", {"title": "一只橘猫睡在沙发上", "query": "橘猫"})
        w.write("000001", jpeg((0, 0, 255)), "蓝色", {})  # no optional metadata at all
    samples = list(fmt.iter_samples(tmp_path))
    assert [s.key for s in samples] == ["000000", "000001"]
    assert samples[0].text == "一只橘猫睡在沙发上"
    assert samples[0].meta["query"] == "橘猫"
    assert samples[0].texts() == {"title": "一只橘猫睡在沙发上", "query": "橘猫"}
    assert samples[1].meta["key"] == "000001" and "title" not in samples[1].meta
    assert samples[1].meta["sha256"] == fmt.sha256_bytes(samples[1].image)
    Image.open(io.BytesIO(samples[1].image)).verify()
    table = fmt.read_parquet(tmp_path / "00000.parquet")
    assert table.schema.names[: len(fmt.PARQUET_SCHEMA)] == fmt.PARQUET_SCHEMA.names
    rows = table.to_pylist()
    assert rows[1]["title"] is None and rows[0]["status"] == "success"
    stats = json.loads((tmp_path / "00000_stats.json").read_text())
    assert stats["successes"] == 2 and stats["count"] == 2


def test_failures_are_parquet_rows_only(tmp_path):
    keys = write_demo_shard(tmp_path)
    table = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    assert len(table) == len(keys) + 1
    failed = [r for r in table if r["status"] != "success"]
    assert failed == [dict(failed[0], status="failed_to_download", error_message="HTTP 404")]
    assert [s.key for s in fmt.iter_samples(tmp_path)] == keys
    stats = json.loads((tmp_path / "00000_stats.json").read_text())
    assert stats["status_dict"] == {"HTTP 404": 1} and stats["failed_to_download"] == 1


def test_tar_is_readable_by_webdataset(tmp_path):
    import webdataset as wds

    keys = write_demo_shard(tmp_path)
    ds = wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False)
    got = [(s["__key__"], json.loads(s["json"])["title"], s["txt"].decode()) for s in ds]
    assert [g[0] for g in got] == keys
    assert all(title == txt for _, title, txt in got)


def test_writer_error_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with fmt.ShardWriter(tmp_path, 3) as w:
            w.write("000300", jpeg(), "x", {})
            raise RuntimeError("boom")
    assert not any(p.name.startswith("00003") for p in tmp_path.iterdir())


def test_killed_writer_leaves_no_tar(tmp_path):
    """SIGKILL in the middle of a shard: no NNNNN.tar (and no stats) may exist afterwards."""
    script = textwrap.dedent(f"""
        import io, sys, time
        from PIL import Image
        from ccmb import shards as fmt
        buf = io.BytesIO(); Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
        with fmt.ShardWriter({str(tmp_path)!r}, 0) as w:
            for i in range(1000):
                w.write(fmt.make_key(0, i, 10000), buf.getvalue(), "文本", {{}})
                if i == 50:
                    print("half", flush=True)
                    time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "00000.tar" not in names and "00000_stats.json" not in names
    assert any(n.startswith(".00000.tar.tmp-") for n in names), names  # the partial temp file
    assert fmt.finished_shards(tmp_path) == []
    assert fmt.list_shards(tmp_path) == []
    from ccmb import atomic

    assert atomic.remove_stale_temporaries(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_sizes_and_manifest_agree_with_tars(tmp_path):
    expected = {}
    for index, n in [(0, 3), (1, 5), (2, 1)]:
        write_demo_shard(tmp_path, index, n)
        expected[f"{fmt.shard_name(index)}.tar"] = n
    assert fmt.finished_shards(tmp_path) == ["00000", "00001", "00002"]
    manifest = fmt.finalize_shard_set(tmp_path, command="ccmb test")
    assert fmt.read_sizes(tmp_path) == expected
    assert manifest["total_samples"] == sum(expected.values()) == fmt.read_manifest(tmp_path)["total_samples"]
    for name, entry in manifest["shards"].items():
        assert entry["samples"] == expected[name] == fmt.count_tar_samples(tmp_path / name)
        assert entry["sha256"] == fmt.sha256_file(tmp_path / name)
        assert entry["bytes"] == (tmp_path / name).stat().st_size
    assert manifest["command"] == "ccmb test" and manifest["ccmb_version"]
    report = fmt.verify_shard_set(tmp_path)
    assert report.ok, report.problems
    assert report.samples == 9 and report.shards_checked == 3


def test_verify_reports_every_problem(tmp_path):
    write_demo_shard(tmp_path, 0, 3)
    write_demo_shard(tmp_path, 1, 2)
    fmt.finalize_shard_set(tmp_path)
    # corrupt shard 0 (flip a byte in its first image), delete shard 1, add an unlisted shard
    data = bytearray((tmp_path / "00000.tar").read_bytes())
    data[1024] ^= 0xFF
    (tmp_path / "00000.tar").write_bytes(bytes(data))
    (tmp_path / "00001.tar").unlink()
    write_demo_shard(tmp_path, 2, 1)
    report = fmt.verify_shard_set(tmp_path)
    text = "\n".join(report.problems)
    assert not report.ok
    assert "00000.tar: sha256 differs" in text
    assert "00001.tar: missing" in text
    assert "00002.tar: not listed" in text


def test_brace_patterns_and_lists(tmp_path):
    for i in range(3):
        write_demo_shard(tmp_path, i, 1)
    pattern = str(tmp_path / "{00000..00002}.tar")
    assert [p.name for p in fmt.list_shards(pattern)] == ["00000.tar", "00001.tar", "00002.tar"]
    assert len(list(fmt.iter_samples(pattern))) == 3
    with pytest.raises(FileNotFoundError):
        fmt.list_shards(tmp_path / "nope")


def test_reader_names_bad_tar(tmp_path):
    bad = tmp_path / "00000.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(fmt.ShardFormatError, match="00000.tar"):
        list(fmt.iter_tar_samples(bad))


def test_reader_rejects_sample_without_image(tmp_path):
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("000.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(fmt.ShardFormatError, match="no image"):
        list(fmt.iter_tar_samples(path))


def test_atomic_files_get_normal_permissions(tmp_path):
    from ccmb import atomic

    atomic.write_json(tmp_path / "r.json", {"a": 1})
    old = os.umask(0o022)
    os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~old


def test_read_parquet_columns_and_bad_file(tmp_path):
    write_demo_shard(tmp_path, 0, 2)
    t = fmt.read_parquet(tmp_path / "00000.parquet", columns=["key", "status", "original_width"])
    assert t.column_names == ["key", "original_width", "status"]
    assert t.column("status").to_pylist() == ["success", "success", "failed_to_download"]
    assert t.column("original_width").null_count == 3
    bad = tmp_path / "00001.parquet"
    bad.write_bytes(b"PAR1 nope")
    with pytest.raises(fmt.ShardFormatError, match="00001.parquet"):
        fmt.read_parquet(bad)


def test_fixed_mtime_gives_identical_tars(tmp_path):
    digests = []
    for run in ("a", "b"):
        with fmt.ShardWriter(tmp_path / run, 0, mtime=0) as w:
            w.write("000", jpeg(), "同一个", {"title": "同一个"})
        digests.append(fmt.sha256_file(tmp_path / run / "00000.tar"))
    assert digests[0] == digests[1]
