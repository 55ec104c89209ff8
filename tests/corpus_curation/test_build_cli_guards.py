"""CLI guards of build-shards and verify (issue 23 item 2, issue 24 item 5): a download in which every row failed
gives no shard set (exit 1, one line with the drop counts); a rerun with another seed is refused naming the
first run's settings; ``ccmb verify`` reports each problem once."""
from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main
from curation_helpers import CAPTIONS, jpeg, rand_image, write_download


def _errors(output):
    return [ln for ln in output.splitlines() if ln.startswith("Error")]  # (progress bars aside)


def test_build_shards_of_a_download_where_every_row_failed(tmp_path):
    d = write_download(tmp_path / "dl", [{"url": f"http://dead.example/{i}.jpg", "caption": CAPTIONS[i],
                                          "status": "failed_to_download", "error": "offline"} for i in range(6)],
                       per_shard=4)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(out)])
    assert res.exit_code == 1, res.output
    errors = _errors(res.output)
    assert len(errors) == 1 and "0 samples" in errors[0] and "not_downloaded 6" in errors[0] \
        and "--allow-empty" in errors[0], res.output
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))
    res = CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(tmp_path / "empty"),
                                    "--allow-empty"])
    assert res.exit_code == 0 and shards.read_manifest(tmp_path / "empty")["total_samples"] == 0, res.output


def _small(tmp_path, n=6):
    rows = [{"url": f"http://a.example/{i}.jpg", "caption": CAPTIONS[i], "image": jpeg(rand_image(40 + i))}
            for i in range(n)]
    return write_download(tmp_path / "dl", rows, per_shard=4)


def test_a_second_run_with_another_seed_is_refused_naming_the_first(tmp_path):
    d = _small(tmp_path)
    out = tmp_path / "out"
    args = ["build-shards", "--input", str(d), "--output", str(out), "--samples-per-shard", "2", "--shuffle"]
    first = CliRunner().invoke(main, args + ["--seed", "1"])
    assert first.exit_code == 0, first.output
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    second = CliRunner().invoke(main, args + ["--seed", "2"])
    assert second.exit_code == 1
    errors = _errors(second.output)
    assert len(errors) == 1 and "other settings" in errors[0] and "'seed': 1" in errors[0] \
        and "'shuffle': True" in errors[0], second.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before


def test_verify_prints_each_problem_once(tmp_path):
    d = _small(tmp_path)
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["build-shards", "--input", str(d), "--output", str(out),
                                     "--samples-per-shard", "3"]).exit_code == 0
    tar = out / "00001.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 3] ^= 0x01
    tar.write_bytes(bytes(data))
    done = subprocess.run([sys.executable, "-m", "ccmb", "verify", str(out), "--no-images"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    both = done.stdout + done.stderr
    assert both.count("00001.tar: sha256 differs from manifest.json") == 1, both
    assert "1 problems" in done.stdout


def test_decision_tables_are_checked_through_the_cli(tmp_path):
    """Issue 24 item 5 on the command line: a re-sorted table is joined by key (the same shards); a key listed
    twice with different decisions, and a same-size bit flip in a part of a partitioned table, are refused
    naming the file (exit 1, no traceback, no shard set)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ccmb.corpus.api import filter_table
    from ccmb.corpus.steps.filter import FilterConfig
    from ccmb.corpus.tables import decisions
    from ccmb.corpus.tables.writer import write_table

    d = _small(tmp_path, n=8)
    table = filter_table(d, FilterConfig(min_side=0, blocklist=[CAPTIONS[3][:4]]))
    write_table(tmp_path / "f.parquet", table, kind="filter", source=d)
    t = pq.read_table(tmp_path / "f.parquet")
    order = pa.compute.sort_indices(t, sort_keys=[("keep", "ascending"), ("key", "descending")])
    pq.write_table(t.take(order), tmp_path / "resorted.parquet")
    runner = CliRunner()

    def build(table_path, out):
        return runner.invoke(main, ["build-shards", "--input", str(d), "--output", str(tmp_path / out),
                                    "--keep", str(table_path), "--samples-per-shard", "3"])

    a, b = build(tmp_path / "f.parquet", "a"), build(tmp_path / "resorted.parquet", "b")
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    shas = [{k: v["sha256"] for k, v in shards.read_manifest(tmp_path / o)["shards"].items()} for o in "ab"]
    assert shas[0] == shas[1] and "dropped blocklist: 1" in a.output

    row = t.slice(0, 1)
    keep = not row.column("keep")[0].as_py()
    flipped = row.set_column(row.column_names.index("keep"), "keep", pa.array([keep]))
    flipped = flipped.set_column(flipped.column_names.index("reason"), "reason",
                                 pa.array([None if keep else "too_small"], pa.string()))
    pq.write_table(pa.concat_tables([t, flipped]), tmp_path / "conflict.parquet")
    res = build(tmp_path / "conflict.parquet", "c")
    key = row.column("key")[0].as_py()
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"conflict.parquet: key '{key}' is listed 2 times with different decisions" in res.output, res.output
    assert not (tmp_path / "c" / "manifest.json").exists()

    write_table(tmp_path / "parts.parquet", table, kind="filter", source=d, parts=3)
    victim = decisions.part_files(tmp_path / "parts.parquet")[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    victim.write_bytes(bytes(data))
    res = build(tmp_path / "parts.parquet", "p")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{victim.name}: SHA-256" in res.output and "differs from _ccmb_table.json" in res.output, res.output
    assert not (tmp_path / "p" / "manifest.json").exists()
