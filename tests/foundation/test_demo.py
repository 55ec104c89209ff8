"""`make demo`'s command, shrunk: every stage runs for real on loopback data and hands on to the next; its
transcript replays in a fresh folder; it never writes into a folder it did not make."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccmb import outdir
from ccmb.cli.demo import DEMO_NAMES, claim_workdir


def _demo(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ccmb", "demo", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.txt").write_text("three years of work", encoding="utf-8")
    (path / "sub").mkdir()
    (path / "sub" / "a.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    return path


def _intact(path: Path) -> bool:
    return ((path / "thesis.txt").read_text(encoding="utf-8") == "three years of work"
            and (path / "sub" / "a.csv").read_text(encoding="utf-8") == "a,b\n1,2\n"
            and sorted(p.name for p in path.iterdir()) == ["sub", "thesis.txt"])


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    work = _user_folder(tmp_path / "mywork")
    for args, cwd in (((["--workdir", work]), None), ((["--workdir", "."]), work)):
        res = _demo(*args, "--images", 80, "--steps", 4, cwd=cwd)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "not made by ccmb demo" in lines[0], lines
        assert "Traceback" not in res.stderr and not res.stdout.strip()
        assert _intact(work)


def test_demo_rejects_numbers_out_of_range(tmp_path):
    for option, value in (("--images", 5), ("--steps", 0), ("--mismatches", -1), ("--seed", -3)):
        res = _demo("--workdir", tmp_path / "d", option, value)
        assert res.returncode == 2 and f"Invalid value for '{option}'" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "d").exists()


def test_workdir_rules(tmp_path):
    own = tmp_path / "own"
    claim_workdir(own)
    (own / "web").mkdir()
    (own / "leaderboard.md").write_text("old", encoding="utf-8")
    assert claim_workdir(own) == own and sorted(p.name for p in own.iterdir()) == [outdir.OWNER_FILE]
    legacy = tmp_path / "legacy"  # an older demo's folder (no marker): only names the demo writes
    (legacy / "web").mkdir(parents=True)
    (legacy / "commands.sh").write_text("ccmb demo\n", encoding="utf-8")
    claim_workdir(legacy)
    assert sorted(p.name for p in legacy.iterdir()) == [outdir.OWNER_FILE]
    mixed = tmp_path / "mixed"  # the demo's names and a user's file: not ours
    (mixed / "web").mkdir(parents=True)
    (mixed / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(outdir.OutputFolderError, match="mixed"):
        claim_workdir(mixed)
    assert (mixed / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert {"web", "data", "commands.sh"} <= DEMO_NAMES


def test_serve_points_records_at_its_port_and_passes_the_exit_code(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "x.jpg").write_bytes(b"image bytes")
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"ImageUrl": "http://127.0.0.1:0/x.jpg"}) + "\n"
                       + json.dumps({"ImageUrl": "ftp://example.org/a.jpg"}) + "\n", encoding="utf-8")
    probe = ("import json, sys, urllib.request; u = json.loads(open(sys.argv[1]).readline())['ImageUrl']; "
             "assert urllib.request.urlopen(u, timeout=10).read() == b'image bytes'; sys.exit(3)")
    res = _demo("serve", web, "--records", records, "--", sys.executable, "-c", probe, records)
    assert res.returncode == 3, res.stderr
    lines = records.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith('{"ImageUrl": "http://127.0.0.1:') and ":0/" not in lines[0]
    assert "ftp://example.org/a.jpg" in lines[1]


@pytest.mark.slow
def test_demo_end_to_end_and_its_transcript_replays(tmp_path):
    work = tmp_path / "demo"
    res = _demo("--workdir", work, "--images", 80, "--steps", 4)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for step in ("ccmb demo prepare", "ccmb download zero", "ccmb decontaminate", "ccmb build-shards", "ccmb verify",
                 "ccmb train pretrain", "cp -R run/model r2d2-tiny-demo", "ccmb-bench run", "ccmb-bench leaderboard"):
        assert f"$ {step}" in res.stdout or f"-- {step}" in res.stdout, step
    assert "ccmb_bench" not in res.stdout  # real console commands, never the module name
    assert "too few for the tiny model to learn anything" in res.stdout  # 4 steps: it says so
    script = (work / "commands.sh").read_text(encoding="utf-8")
    commands = [line for line in script.splitlines() if line and not line.startswith(("#", "set ", "export "))]
    assert len(commands) == 18 and commands[0].startswith("ccmb demo prepare")
    assert "cp -R run/model r2d2-tiny-demo" in commands and any("save_pretrained" in c for c in commands)
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
    summary = json.loads((work / "download" / "_ccmb" / "summary.json").read_text())
    planted = 11 + 20  # copies (ccmb.cli.demo._plant_copies) + mismatched pairs (--mismatches), all downloaded
    assert summary["rows"] == 82 + planted and summary["successes"] == 80 + planted and summary["failed"] == 2
    assert summary["failures"] == {"failed_input: unsupported URL scheme 'ftp'": 1,
                                   "failed_to_download: HTTP Error 404": 1}

    # the transcript replays in an empty folder, with the console commands alone
    replay = tmp_path / "replay"
    replay.mkdir()
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    out = subprocess.run(["bash", str(work / "commands.sh")], cwd=replay, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("shards/manifest.json", "leaderboard.md"):
        assert (replay / name).is_file(), name
    manifest = [json.loads((d / "shards" / "manifest.json").read_text()) for d in (work, replay)]
    assert manifest[0]["total_samples"] == manifest[1]["total_samples"] > 0
    assert (replay / "leaderboard.md").read_text(encoding="utf-8") == (work / "leaderboard.md").read_text(
        encoding="utf-8")  # the same seeds, the same commands: the same numbers
