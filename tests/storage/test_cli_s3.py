"""The corpus commands take s3:// URLs wherever they take a folder or table (the S3 server on 127.0.0.1):
filter, dedup, build-shards, stats and verify, and a missing input URL is refused naming it."""
from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus_curation"))
from curation_helpers import build_planted  # noqa: E402

from ccmb import shards, storage  # noqa: E402
from ccmb.cli import main  # noqa: E402


def test_corpus_commands_on_s3_urls(s3_url, tmp_path):
    local, _ = build_planted(tmp_path / "dl")
    dl = storage.join(s3_url, "dl")
    for p in sorted(Path(local).iterdir()):
        storage.write_bytes(storage.join(dl, p.name), p.read_bytes())
    f, d, out = (storage.join(s3_url, n) for n in ("f.parquet", "d.parquet", "out"))
    runner = CliRunner()

    def ok(*args):
        res = runner.invoke(main, list(args))
        assert res.exit_code == 0, res.output + repr(res.exception)
        return res.output

    assert "rows 18, kept 17" in ok("filter", "--input", dl, "--output", f, "--min-side", "16")
    assert "kept 12" in ok("dedup", "--input", dl, "--output", d, "--keep", f)
    assert f"12 samples of 18 rows in 3 shards at {out}" in ok(
        "build-shards", "--input", dl, "--output", out, "--keep", f, "--keep", d, "--samples-per-shard", "5")
    assert "manifest: {'total_samples': 12" in ok("stats", out)
    assert "3 shards, 12 samples, 0 problems" in ok("verify", out)
    assert shards.read_sizes(out) == {"00000.tar": 5, "00001.tar": 5, "00002.tar": 2}

    missing = storage.join(s3_url, "nope")
    res = runner.invoke(main, ["filter", "--input", missing, "--output", storage.join(s3_url, "x.parquet")])
    assert res.exit_code == 2 and f"{missing}: does not exist" in res.output
