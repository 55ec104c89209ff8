"""`make demo`'s command, shrunk: every stage runs for real on loopback data and hands on to the next."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    work = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "ccmb", "demo", "--workdir", str(work), "--images", "80",
                          "--steps", "4"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for step in ("ccmb download zero", "ccmb decontaminate", "ccmb build-shards", "ccmb verify", "ccmb train pretrain",
                 "ccmb_bench run", "ccmb_bench leaderboard"):
        assert step in res.stdout
    commands = (work / "commands.sh").read_text().splitlines()
    assert len(commands) == 15  # + ccmb score, stats --scores, filter --scores, dedup --semantic
    assert (work / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "low_agreement: dropped" in res.stdout
    assert "other samples dropped: 0 (only what was planted)" in res.stdout  # curation drops only planted copies
    assert (work / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(work / "leaderboard.csv", encoding="utf-8")))
    assert {r["model"] for r in rows} == {"r2d2-tiny-demo", "r2d2-tiny-untrained"}
    assert {(r["dataset"], r["setting"]) for r in rows} >= {
        ("icr", "pre-trained"), ("icr", "random-init"), ("icm", "pre-trained"), ("icm", "random-init")}
    html = (work / "leaderboard.html").read_text(encoding="utf-8")
    assert "icr" in html and "<script" in html and "http" not in html.split("<body", 1)[0].lower().replace(
        "http-equiv", "")
    # the two bad rows of the input are accounted for, not lost
    import json

    summary = json.loads((work / "download" / "_ccmb" / "summary.json").read_text())
    planted = 11 + 20  # copies (ccmb.cli.demo._plant_copies) + mismatched pairs (--mismatches), all downloaded
    assert summary["rows"] == 82 + planted and summary["successes"] == 80 + planted and summary["failed"] == 2
    assert summary["failures"] == {"failed_input: unsupported URL scheme 'ftp'": 1,
                                   "failed_to_download: HTTP Error 404": 1}
