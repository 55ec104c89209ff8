"""`--output` of filter/dedup may be a table folder (Spark writes one; a rerun replaces it), never another folder."""
from __future__ import annotations

from click.testing import CliRunner

from ccmb.cli import main as cli
from ccmb.corpus.api import dedup_table
from ccmb.corpus.steps.levels import DedupConfig
from ccmb.corpus.tables.decisions import read_decisions
from ccmb.corpus.tables.writer import write_table as write_decisions


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_rerun_replaces_a_table_folder(planted_scale, tmp_path):
    out = tmp_path / "dedup.parquet"
    table = dedup_table(planted_scale, DedupConfig(levels=("url",)))
    write_decisions(out, table, kind="dedup", source=planted_scale, parts=3)  # as --engine spark leaves it
    assert out.is_dir()
    res = _run(["dedup", "--input", str(planted_scale), "--output", str(out), "--no-phash"])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    assert read_decisions(out).num_rows == table.num_rows
    res = _run(["filter", "--input", str(planted_scale), "--output", str(tmp_path / "f.parquet")])
    assert res.exit_code == 0, res.output


def test_a_folder_that_is_not_a_table_is_never_replaced(planted_scale, tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    for cmd in (["filter"], ["dedup", "--no-phash"]):
        res = CliRunner().invoke(cli, [*cmd, "--input", str(planted_scale), "--output", str(precious)])
        assert res.exit_code != 0
        assert "not a decision table" in res.output and "keep.txt" in res.output
        assert (precious / "keep.txt").read_text() == "mine"
    # the download folder itself, given by mistake
    res = CliRunner().invoke(cli, ["filter", "--input", str(planted_scale), "--output", str(planted_scale)])
    assert res.exit_code != 0 and any(p.suffix == ".tar" for p in planted_scale.iterdir())
