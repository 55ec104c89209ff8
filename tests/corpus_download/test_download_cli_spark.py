"""The ``ccmb download`` CLI (help, ``urls`` with CSV/parquet inputs) and the pyspark distributor (local mode)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main
from ccmb.corpus import download as dl
from dl_helpers import write_jsonl, zero_record

pytestmark = pytest.mark.timeout(240)


def test_help():
    runner = CliRunner()
    for args in (["download", "--help"], ["download", "zero", "--help"], ["download", "urls", "--help"]):
        res = runner.invoke(main, args)
        assert res.exit_code == 0, res.output
        for opt in ("--input", "--output", "--processes", "--threads", "--image-size", "--resize-mode", "--timeout",
                    "--retries", "--samples-per-shard", "--distributor", "--limit", "--retry-failed",
                    "--allow-file-urls", "--strict"):
            assert args[-2] == "download" or opt in res.output, (args, opt)
    res = runner.invoke(main, ["download", "urls", "--help"])
    assert "--url-col" in res.output and "--caption-col" in res.output
    res = runner.invoke(main, ["download", "zero", "--help"])
    assert "--caption-field" in res.output and "keep_ratio" in res.output


def test_cli_urls_csv_and_parquet_with_file_urls_and_limit(tmp_path, image_server):
    b = image_server.base
    csv_path = tmp_path / "wukong.csv"
    csv_path.write_text("URL,Caption\n" + "".join(f"{b}/img/{i}.jpg,描述{i}\n" for i in range(4))
                        + f"file://{tmp_path / 'local.jpg'},本地文件\n", encoding="utf-8")
    from dl_helpers import jpeg
    (tmp_path / "local.jpg").write_bytes(jpeg(7))
    pq.write_table(pa.Table.from_pylist([{"url": f"{b}/img/{10 + i}.jpg", "caption": f"说明{i}",
                                          "similarity": 0.3 + i / 10} for i in range(3)]), tmp_path / "laion.parquet")
    out = tmp_path / "out"
    base = ["download", "urls", "--allow-private", "-i", str(csv_path), "-i", str(tmp_path / "laion.parquet"), "-o", str(out),
            "--processes", "1", "--threads", "2", "--image-size", "32", "--samples-per-shard", "4", "--limit", "7",
            "--url-col", "url", "--caption-col", "caption"]
    res = CliRunner().invoke(main, base)
    assert res.exit_code == 0, res.output
    assert "successes       6" in res.output and "failed_input: unsupported URL scheme 'file'" in res.output
    rows = [r for p in sorted(out.glob("[0-9]*.parquet")) for r in shards.read_parquet(p).to_pylist()]
    assert len(rows) == 7  # --limit 7: the last parquet row is not read
    assert {r["caption"] for r in rows if r["status"] == "success"} == {"描述0", "描述1", "描述2", "描述3", "说明0", "说明1"}
    laion = [s for s in shards.iter_samples(out) if s.text == "说明1"][0]
    assert laion.meta["similarity"] == "0.4"  # other columns are kept
    second = sorted(shards.read_parquet(out / "00001.parquet").to_pylist(), key=lambda r: r["key"])
    assert [r["similarity"] for r in second] == [None, "0.3", "0.4"]  # rows in download order; sorted here

    # same output, other inputs: refused with a clear message
    res = CliRunner().invoke(main, base[:-6] + ["--limit", "5", "--url-col", "url"])
    assert res.exit_code != 0 and "other inputs or options" in res.output
    # --allow-file-urls accepts file:// (and --overwrite starts again)
    res = CliRunner().invoke(main, base + ["--allow-file-urls", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "successes       7" in res.output
    assert json.loads((out / "manifest.json").read_text())["total_samples"] == 7


@pytest.mark.spark
def test_pyspark_distributor_local_mode(tmp_path, image_server, spark):
    b = image_server.base
    src = write_jsonl(tmp_path / "zero.jsonl", [zero_record(i, f"{b}/img/{i}.jpg") for i in range(9)]
                      + [zero_record(9, f"{b}/404/9.jpg"), zero_record(10, "ftp://x/y.jpg")])
    summary = dl.download([src], tmp_path / "out", distributor="pyspark", allow_private=True, threads=2, image_size=32, timeout=2,
                          retries=0, samples_per_shard=4)
    assert summary.complete and summary.rows == 11 and summary.successes == 9
    assert summary.failures == {"failed_to_download: HTTP Error 404": 1,
                                "failed_input: unsupported URL scheme 'ftp'": 1}
    report = shards.verify_shard_set(tmp_path / "out")
    assert report.ok, report.problems
    # every shard was finished: counts and a manifest entry in its stats
    for name in shards.finished_shards(tmp_path / "out"):
        assert "ccmb" in json.loads((tmp_path / "out" / f"{name}_stats.json").read_text())
    assert spark.sparkContext._jsc is not None  # our session was used and is still alive
    state = json.loads((tmp_path / "out" / "_ccmb" / "state.json").read_text())
    assert state["host_groups"] == spark.sparkContext.defaultParallelism  # one host group per core, one task each
