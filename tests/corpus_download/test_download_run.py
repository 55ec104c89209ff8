"""``ccmb download`` end to end against a loopback HTTP server: bad cases, accounting, retry-failed."""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from ccmb import shards
from ccmb.corpus import download as dl
from dl_helpers import write_jsonl, zero_record

pytestmark = pytest.mark.timeout(240)


def _parquet_rows(out):
    return pa.concat_tables([shards.read_parquet(p) for p in sorted(out.glob("[0-9]*.parquet"))]).to_pylist()


def test_every_bad_case_is_a_counted_failure(tmp_path, image_server, refused_url, small_opts):
    b = image_server.base
    first_request = len(image_server.user_agents)  # the server is shared by the session's tests
    good = [zero_record(i, f"{b}/img/{i}.jpg") for i in range(8)]
    bad = {
        "404": zero_record(100, f"{b}/404/1.jpg"),
        "500": zero_record(101, f"{b}/500/1.jpg"),
        "timeout": zero_record(102, f"{b}/slow/1.jpg"),
        "loop": zero_record(103, f"{b}/loop/1"),
        "refused": zero_record(104, refused_url),
        "text": zero_record(105, f"{b}/text/1.jpg"),
        "truncated": zero_record(106, f"{b}/truncated/1.jpg"),
        "bomb": zero_record(107, f"{b}/bomb/1.png"),
        "noai": zero_record(108, f"{b}/noai/1.jpg"),
        "ftp": zero_record(109, "ftp://127.0.0.1/x.jpg"),
        "file": zero_record(110, "file:///etc/hostname"),
        "missing": zero_record(111, None),
        "dup": zero_record(3, f"{b}/img/99.jpg"),
    }
    src = write_jsonl(tmp_path / "zero.jsonl", good + list(bad.values()))
    with open(src, "ab") as fh:
        fh.write(b'{"ImageUrl": "' + f"{b}/img/50.jpg".encode() + b'", "Title": "\xe4\xb8 broken utf8"}\n')
        fh.write(b'{"ImageUrl": truncated json\n')
    image_server.slow_s = 3.0  # > timeout=2
    try:
        summary = dl.download([src], tmp_path / "out", **small_opts)
    finally:
        image_server.slow_s = 0.5
    out = tmp_path / "out"
    n_rows = len(good) + len(bad) + 2

    # every input row is accounted for, once, in the parquet files
    rows = _parquet_rows(out)
    assert len(rows) == n_rows == summary.rows == summary.input_rows and summary.complete
    assert len({r["key"] for r in rows}) == n_rows
    by_url = {r["url"]: r for r in rows if r["url"]}
    status = Counter(r["status"] for r in rows)
    assert status["success"] == len(good) == summary.successes

    def reason(key):
        r = by_url[bad[key]["ImageUrl"]]
        assert r["status"] != "success", key
        return f'{r["status"]}: {r["error_message"]}'

    assert "HTTP Error 404" in reason("404") and "HTTP Error 500" in reason("500")
    assert "deadline exceeded" in reason("timeout")
    assert "redirect loop" in reason("loop")
    assert "Connection refused" in reason("refused")
    assert reason("text").startswith("failed_to_resize") and reason("truncated").startswith("failed_to_resize")
    assert reason("bomb").startswith("failed_to_resize: image too large: 17000x17000")  # refused from its header
    assert "X-Robots-Tag" in reason("noai")
    assert reason("ftp").startswith("failed_input: unsupported URL scheme 'ftp'")
    assert "--allow-file-urls" in reason("file")
    assert reason("dup").startswith("failed_input: duplicate ImageKey")
    input_errors = {r["error_message"].split(" (")[0].split(":")[0]: r for r in rows
                    if r["status"] == "failed_input"}
    assert {"malformed JSON", "missing ImageUrl", "non-UTF-8 text"} <= set(input_errors)
    assert f"{src}:{n_rows - 1})" in input_errors["non-UTF-8 text"]["error_message"]  # named by file:line
    assert f"{src}:{n_rows})" in input_errors["malformed JSON"]["error_message"]
    assert input_errors["non-UTF-8 text"]["url"] == f"{b}/img/50.jpg"  # refused, but the row keeps its URL
    # the summary counts failures by reason
    assert summary.failures["failed_to_download: redirect loop"] == 1
    assert summary.failures["failed_input: malformed JSON"] == 1
    assert summary.failed == n_rows - len(good) and summary.failure_rate > 0.3

    # the output is a valid ccmb shard set, read by the foundation's readers
    report = shards.verify_shard_set(out)
    assert report.ok, report.problems
    # every shard's _stats.json records its parquet's checksum, which verify checks
    for stats_file in sorted(out.glob("*_stats.json")):
        entry = json.loads(stats_file.read_text())["ccmb"]["parquet"]
        parquet = out / stats_file.name.replace("_stats.json", ".parquet")
        assert entry["sha256"] == shards.sha256_file(parquet) and entry["bytes"] == parquet.stat().st_size
    samples = list(shards.iter_samples(out))
    assert len(samples) == len(good)
    s = min(samples, key=lambda x: x.key)  # tars hold samples in download order
    assert s.text == s.meta["title"] == "标题0" and s.meta["query"] == "查询0" and s.meta["image_key"] == "key-00000"
    assert s.meta["sha256"] == shards.sha256_bytes(s.image) and s.meta["source"] == str(src)
    assert min(s.meta["width"], s.meta["height"]) == small_opts["image_size"]  # keep_ratio
    assert not any(k.startswith("ccmb_") for k in s.meta)
    assert json.loads((out / "sizes.json").read_text()) == {f"{n}.tar": c for n, c in
                                                             [("00000", 8), ("00001", 0), ("00002", 0)]}
    # the user agent names ccmb; only the loopback server was contacted (file:// and ftp:// never)
    agents = image_server.user_agents[first_request:]
    assert agents and all("ccmb/" in ua for ua in agents)
    assert not any("etc" in r for r in image_server.requests)

    # the same command again is a no-op resume: nothing downloaded, same shard set
    before = json.loads((out / "manifest.json").read_text())["shards"]
    n_requests = len(image_server.requests)
    again = dl.download([src], out, **small_opts)
    assert again.new_successes == 0 and again.rows == n_rows
    assert len(image_server.requests) == n_requests
    assert json.loads((out / "manifest.json").read_text())["shards"] == before


def _second_try_with_the_flaky_urls_up(image_server, src, out, small_opts):
    """``--retry-failed`` while the server's flaky URLs answer (they failed in the first run)."""
    image_server.flaky_ok = True
    try:
        return dl.download([src], out, retry_failed_rows=True, **small_opts)
    finally:
        image_server.flaky_ok = False


def test_retry_failed_merges_successes_under_original_keys(tmp_path, image_server, small_opts):
    b = image_server.base
    recs = [zero_record(i, f"{b}/img/{i}.jpg") if i % 3 else zero_record(i, f"{b}/flaky/{i}.jpg")
            for i in range(14)]
    recs.append(zero_record(14, f"{b}/404/14.jpg"))
    src = write_jsonl(tmp_path / "zero.jsonl", recs)
    out = tmp_path / "out"
    image_server.flaky_ok = False
    first = dl.download([src], out, **small_opts)
    flaky_keys = {r["key"] for r in _parquet_rows(out) if "/flaky/" in r["url"]}
    assert len(flaky_keys) == 5 and first.successes == 9
    assert all(r["status"] == "failed_to_download" for r in _parquet_rows(out) if r["key"] in flaky_keys)

    second = _second_try_with_the_flaky_urls_up(image_server, src, out, small_opts)
    assert second.retried == 6 and second.recovered == 5 and second.successes == 14
    rows = _parquet_rows(out)
    assert len(rows) == 15 and len({r["key"] for r in rows}) == 15
    by_key = {r["key"]: r for r in rows}
    assert all(by_key[k]["status"] == "success" and "/flaky/" in by_key[k]["url"] for k in flaky_keys)
    assert by_key[max(by_key)]["status"] == "failed_to_download"  # the 404 stays failed
    samples = {s.key: s for s in shards.iter_samples(out)}
    assert len(samples) == 14 and flaky_keys <= set(samples)
    for k in flaky_keys:  # merged under the original key, with that row's metadata
        assert samples[k].meta["key"] == k and samples[k].meta["url"] == by_key[k]["url"]
        assert samples[k].text == by_key[k]["title"]
    report = shards.verify_shard_set(out)
    assert report.ok, report.problems
    assert not (out / "_ccmb" / "retry").exists()


def test_retry_failed_on_object_storage_merges_in_place(tmp_path, image_server, small_opts, s3_url):
    """``--retry-failed`` on an s3:// output: img2dataset's second tries run in a local temporary folder, the
    affected shards are rewritten on S3 (published whole), and the set verifies."""
    from ccmb import storage

    b = image_server.base
    recs = [zero_record(i, f"{b}/img/{i}.jpg") if i % 3 else zero_record(i, f"{b}/flaky/{i}.jpg") for i in range(8)]
    src = write_jsonl(tmp_path / "zero.jsonl", recs)
    out = storage.join(s3_url, "download")
    image_server.flaky_ok = False
    first = dl.download([src], out, **small_opts)
    assert first.successes == 5
    second = _second_try_with_the_flaky_urls_up(image_server, src, out, small_opts)
    assert second.retried == 3 and second.recovered == 3 and second.successes == 8
    samples = {s.key: s for s in shards.iter_samples(out)}
    assert len(samples) == 8 and all(s.meta["key"] == k for k, s in samples.items())
    report = shards.verify_shard_set(out)
    assert report.ok, report.problems
    names = storage.listdir(out)
    assert not [n for n in names if storage.TMP_MARK in n] and "retry" not in storage.listdir(storage.join(out, "_ccmb"))
    assert storage.remove_stale_temporaries(out) == 0  # no unfinished upload left behind


def test_download_workers_leave_nothing_in_the_temp_dir(tmp_path, image_server, small_opts, monkeypatch):
    """Workers end with ``os._exit``; wandb's import-time staging folders (img2dataset imports wandb) used to stay
    behind in the temp dir, two per worker and run."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # read by the spawned workers' tempfile
    src = write_jsonl(tmp_path / "zero.jsonl", [zero_record(i, f"{image_server.base}/img/{i}.jpg") for i in range(4)])
    summary = dl.download([src], tmp_path / "out", **{**small_opts, "processes": 2, "samples_per_shard": 2})
    assert summary.successes == 4
    assert sorted(p.name for p in temp.iterdir()) == []
