"""``ccmb download`` end to end with the fault server: every limit ends as a counted failure with its reason."""
from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest
from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main
from ccmb.corpus import download as dl
from dl_helpers import write_jsonl, zero_record

pytestmark = pytest.mark.timeout(240)


def _rows(out):
    return pa.concat_tables([shards.read_parquet(p) for p in sorted(out.glob("[0-9]*.parquet"))]).to_pylist()


def test_limits_and_bad_lines_are_counted_failures(tmp_path, image_server):
    b = image_server.base
    good = [zero_record(i, f"{b}/img/{i}.jpg") for i in range(4)]
    bad = {
        "trickle": zero_record(10, f"{b}/trickle/1.jpg"),
        "huge": zero_record(11, f"{b}/huge/1.jpg"),
        "hugelen": zero_record(12, f"{b}/hugelen/1.jpg"),
        "ftp": zero_record(13, f"{b}/redir/ftp/1"),
        "file": zero_record(14, f"{b}/redir/file/1"),
        "data": zero_record(15, f"{b}/redir/data/1"),
        "short": zero_record(16, f"{b}/short/1.jpg"),
        "gzipbomb": zero_record(17, f"{b}/gzipbomb/1.jpg"),
        "redirected": zero_record(18, f"{b}/redir/img/18"),
    }
    src = write_jsonl(tmp_path / "zero.jsonl", good + list(bad.values()))
    with open(src, "a", encoding="utf-8") as fh:
        fh.write("[" * 1000 + "]" * 1000 + "\n")  # 2 KB: json.loads raises RecursionError on it
        fh.write(json.dumps(zero_record(19, f"{b}/img/19.jpg", Title="x" * 1_100_000)) + "\n")  # over 1 MB
    n_rows = len(good) + len(bad) + 2
    image_server.trickle_s = 0.5
    assert image_server.gzip_bomb  # built before the timed run (compressing 64 MB takes a moment)
    t0 = time.monotonic()
    summary = dl.download([src], tmp_path / "out", allow_private=True, processes=1, threads=12, image_size=32, timeout=2, retries=0,
                          samples_per_shard=10, max_bytes=1 << 20)
    elapsed = time.monotonic() - t0
    rows = _rows(tmp_path / "out")
    assert len(rows) == n_rows == summary.rows and summary.complete
    by_url = {r["url"]: r for r in rows if r["url"]}

    def reason(key):
        r = by_url[bad[key]["ImageUrl"]]
        return f'{r["status"]}: {r["error_message"]}'

    assert reason("trickle").startswith("failed_to_download: deadline exceeded (2s per request)")
    assert reason("huge").startswith("failed_to_download: response larger than --max-bytes")
    assert reason("hugelen").startswith("failed_to_download: response larger than --max-bytes (Content-Length")
    for key in ("ftp", "file", "data"):
        assert reason(key).startswith("failed_to_download: redirect to non-http(s) URL"), key
    assert reason("short").startswith("failed_to_download: truncated response")
    assert reason("gzipbomb").startswith("failed_to_resize")  # stored compressed: not an image, never inflated
    assert reason("redirected") == "success: None"
    assert summary.successes == len(good) + 1
    failures = summary.failures
    assert failures["failed_to_download: deadline exceeded"] == 1
    assert failures["failed_to_download: response larger than --max-bytes"] == 2
    assert failures["failed_to_download: redirect to non-http(s) URL"] == 3
    assert failures["failed_input: malformed JSON"] == 2
    # the bad lines are located failures, listed by file:line in the summary and in _ccmb/refused_input.tsv
    refused = {r["error_message"] for r in rows if r["status"] == "failed_input"}
    assert f"malformed JSON: nested deeper than 64 levels ({src}:{len(good) + len(bad) + 1})" in refused
    assert f"malformed JSON: line longer than 1000000 bytes ({src}:{n_rows})" in refused
    report = summary.report()
    assert f"{src}:{len(good) + len(bad) + 1}: malformed JSON: nested deeper than 64 levels" in report
    assert "refused_input.tsv" in report and "first 2 of 2" in report
    listed = (tmp_path / "out" / "_ccmb" / "refused_input.tsv").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in listed] == [f"{src}:{n_rows - 1}", f"{src}:{n_rows}"]
    # the trickling row was held ~2 s, not len(jpeg) * 0.5 s; the whole run stays short
    assert elapsed < 90


def test_cli_private_addresses_are_refused_by_default_and_zero_successes_fail(tmp_path, image_server):
    b = image_server.base
    src = write_jsonl(tmp_path / "zero.jsonl", [zero_record(i, f"{b}/img/{i}.jpg") for i in range(3)])
    base = ["download", "zero", "-i", str(src), "--processes", "1", "--threads", "2", "--image-size", "32",
            "--timeout", "3", "--retries", "0", "--samples-per-shard", "4"]
    n = len(image_server.requests)
    res = CliRunner().invoke(main, base + ["-o", str(tmp_path / "deny")])
    assert len(image_server.requests) == n  # not even robots.txt was asked of the loopback server
    assert res.exit_code == 1, res.output
    assert "successes       0" in res.output and "failed_to_download: private address refused" in res.output
    assert "private_address 3" in res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: no image was downloaded (3 rows failed; top reasons: failed_to_download: private "
                           "address refused (3))"), last
    assert (tmp_path / "deny" / "_ccmb" / "summary.json").exists()  # the summary is still written
    assert not (tmp_path / "deny" / "manifest.json").exists()  # an empty shard set is not finalized
    res = CliRunner().invoke(main, base + ["-o", str(tmp_path / "small"), "--allow-private", "--max-bytes", "100"])
    assert res.exit_code == 1, res.output
    assert "3  failed_to_download: response larger than --max-bytes" in res.output
    res = CliRunner().invoke(main, base + ["-o", str(tmp_path / "small"), "--allow-private"])  # resumable: same
    assert res.exit_code != 0 and "other inputs or options" not in res.output
    res = CliRunner().invoke(main, ["download", "zero", "--help"])
    assert "--allow-private" in res.output and "--max-bytes" in res.output and "--contact" in res.output
