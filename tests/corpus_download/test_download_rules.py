"""Issue 23, download side, and the output folder: a wrong kind of input refused from its first rows, numeric options
checked by click, every option that changes stored bytes in the resume fingerprint, the folder claimed and locked,
--ignore-robots recorded, --contact checked."""
from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from ccmb import outdir
from ccmb.cli import main
from ccmb.corpus import download as dl
from dl_helpers import write_jsonl, zero_record

pytestmark = pytest.mark.timeout(240)
FAST = ["--processes", "1", "--threads", "2", "--image-size", "32", "--retries", "0", "--samples-per-shard", "4",
        "--allow-private"]


def test_an_input_that_is_not_zero_metadata_is_refused_at_once(tmp_path):
    icr = write_jsonl(tmp_path / "icr_val.jsonl", [{"text": f"一只猫{i}", "image_path": f"images/{i}.jpg"}
                                                   for i in range(3)])
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["download", "zero", "-i", str(icr), "-o", str(tmp_path / "out")] + FAST)
    assert time.monotonic() - t0 < 5
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        f"Error: {icr}: not Zero metadata: no ImageUrl; fields found: text, image_path (first 3 rows)"]
    assert not (tmp_path / "out").exists()  # nothing was started, not even the folder
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("link,caption\nhttp://x/1.jpg,a\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["download", "urls", "-i", str(csv_path), "-o", str(tmp_path / "o2")] + FAST)
    assert res.exit_code == 1 and "not a URL list: no column 'url'; fields found: link, caption" in res.output
    # rows that are merely broken are counted per row, not refused as a file (only the first rows are looked at)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("{broken\n" + json.dumps(zero_record(1, "ftp://x/1.jpg")) + "\n", encoding="utf-8")
    from ccmb.corpus import ingest

    ingest.check_inputs([mixed], ingest.Layout(mode="zero"))


@pytest.mark.parametrize("option,value", [("--threads", "0"), ("--threads", "-5"), ("--retries", "-1"),
                                          ("--image-size", "0"), ("--processes", "0"), ("--encode-quality", "0"),
                                          ("--samples-per-shard", "1"), ("--host-rate", "0"), ("--timeout", "0"),
                                          ("--host-concurrency", "0"), ("--limit", "0"), ("--host-groups", "-1")])
def test_invalid_numbers_are_refused_by_click(tmp_path, option, value):
    src = write_jsonl(tmp_path / "z.jsonl", [zero_record(0, "http://127.0.0.1:9/a.jpg")])
    res = CliRunner().invoke(main, ["download", "zero", "-i", str(src), "-o", str(tmp_path / "o"), option, value])
    assert res.exit_code == 2 and f"Invalid value for '{option}'" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    with pytest.raises(ValueError, match="threads must be an integer"):
        dl.download([src], tmp_path / "api", threads=0)


def test_options_that_change_stored_bytes_join_the_fingerprint(tmp_path, image_server):
    src = write_jsonl(tmp_path / "z.jsonl", [zero_record(i, f"{image_server.base}/img/{i}.jpg") for i in range(4)])
    out = tmp_path / "out"
    base = ["download", "zero", "-i", str(src), "-o", str(out)] + FAST
    assert CliRunner().invoke(main, base).exit_code == 0
    for extra in (["--image-size", "48"], ["--resize-mode", "center_crop"], ["--encode-quality", "80"],
                  ["--host-groups", "0"]):
        res = CliRunner().invoke(main, base + extra)
        assert res.exit_code == 1 and "holds a download of other inputs or options" in res.output, extra
    res = CliRunner().invoke(main, base + ["--host-rate", "3", "--timeout", "7"])  # pacing and limits may change
    assert res.exit_code == 0 and "0 new images" in res.output


def test_the_output_folder_is_claimed_and_locked(tmp_path, image_server):
    src = write_jsonl(tmp_path / "z.jsonl", [zero_record(i, f"{image_server.base}/img/{i}.jpg") for i in range(2)])
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    res = CliRunner().invoke(main, ["download", "zero", "-i", str(src), "-o", str(mine)] + FAST)
    assert res.exit_code == 1 and "is not empty and was not made by ccmb download" in res.output
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    out = tmp_path / "out"
    with outdir.FolderLock(out, "ccmb download zero -i other"):  # a download running in this folder
        res = CliRunner().invoke(main, ["download", "zero", "-i", str(src), "-o", str(out)] + FAST)
    assert res.exit_code == 1 and "another run is writing this folder" in res.output
    assert "ccmb download zero -i other" in res.output
    res = CliRunner().invoke(main, ["download", "zero", "-i", str(src), "-o", str(out)] + FAST)
    assert res.exit_code == 0, res.output
    assert outdir.owner(out)["kind"] == "download"
    # a download folder from before the owner marker is recognised and resumed
    (out / outdir.OWNER_FILE).unlink()
    res = CliRunner().invoke(main, ["download", "zero", "-i", str(src), "-o", str(out)] + FAST)
    assert res.exit_code == 0 and "0 new images" in res.output and outdir.owner(out)["kind"] == "download"
    # --overwrite empties only a download folder
    res = CliRunner().invoke(main, ["download", "zero", "-i", str(src), "-o", str(out), "--overwrite"] + FAST)
    assert res.exit_code == 0 and "2 new images" in res.output


def test_ignore_robots_is_loud_and_recorded_and_contact_is_checked(tmp_path, image_server, caplog):
    src = write_jsonl(tmp_path / "z.jsonl", [zero_record(i, f"{image_server.base}/img/{i}.jpg") for i in range(2)])
    n = len(image_server.requests)
    summary = dl.download([src], tmp_path / "out", processes=1, threads=2, image_size=32, samples_per_shard=4,
                          allow_private=True, ignore_robots=True)
    assert summary.successes == 2 and "/robots.txt" not in image_server.requests[n:]
    assert "--ignore-robots: robots.txt is NOT read" in caplog.text
    state = json.loads((tmp_path / "out" / "_ccmb" / "state.json").read_text())
    assert state["runs"][-1]["policy"]["robots_txt"] is False and summary.policy["robots_txt"] is False
    assert "IGNORED (--ignore-robots)" in summary.report()
    for bad in ("me at home", "javascript:alert(1)", "a@b", "http://x.org/\r\nX-Evil: 1"):
        with pytest.raises(ValueError, match="--contact must be an http"):
            dl.download([src], tmp_path / "c", contact=bad)
