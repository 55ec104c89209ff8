"""`ccmb train` writes only into run folders it made: the trainer replaces model/, best/ and old checkpoints,
so a user's folder is refused before anything is imported or written (issue 23)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ccmb.cli import main
from ccmb.cli.train import _claim_run
from ccmb.outdir import OWNER_FILE, OutputFolderError


def _fake_shard_set(folder):
    folder.mkdir()
    (folder / "00000.tar").write_bytes(b"")
    (folder / "sizes.json").write_text(json.dumps({"00000.tar": 0}), encoding="utf-8")
    return folder


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_users_folder_is_refused_and_kept(tmp_path, command):
    work = tmp_path / "thesis"
    (work / "model").mkdir(parents=True)
    (work / "thesis.txt").write_text("three years", encoding="utf-8")
    (work / "model" / "notes.md").write_text("mine", encoding="utf-8")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    if command == "pretrain":
        args = ["train", "pretrain", "--config", "r2d2-tiny", "--shards", str(_fake_shard_set(tmp_path / "s")),
                "--tokenizer", str(vocab), "--output", str(work)]
    else:
        init = tmp_path / "init.pth"
        init.write_bytes(b"")
        args = ["train", "finetune", "--task", "retrieval", "--dataset", "icr", "--root", str(tmp_path),
                "--init", str(init), "--config", "r2d2-tiny", "--tokenizer", str(vocab), "--output", str(work)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert str(work) in result.output and "not empty" in result.output
    assert (work / "thesis.txt").read_text(encoding="utf-8") == "three years"
    assert (work / "model" / "notes.md").read_text(encoding="utf-8") == "mine"
    assert not (work / OWNER_FILE).exists()


def test_new_empty_and_own_run_folders_are_accepted_and_locked(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    new = tmp_path / "runs" / "a"
    with _claim_run(str(new)):
        assert json.loads((new / OWNER_FILE).read_text(encoding="utf-8"))["kind"] == "training run"
        with pytest.raises(OutputFolderError, match="another run is writing"):
            with _claim_run(str(new)):
                pass
    with _claim_run(str(new)):  # a resume of our own run
        pass
    older = tmp_path / "older"  # a run folder of a ccmb without owner markers
    older.mkdir()
    (older / "train_config.json").write_text("{}", encoding="utf-8")
    with _claim_run(str(older)):
        assert (older / OWNER_FILE).is_file()
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(b"")
    (shards / ".ccmb-owner.json").write_text(json.dumps({"kind": "shard set"}), encoding="utf-8")
    with pytest.raises(OutputFolderError, match="shard set"):
        _claim_run(str(shards))


def test_only_the_main_rank_claims(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    folder = tmp_path / "run"
    with _claim_run(str(folder)):
        pass
    assert not folder.exists()  # rank 0 claims it; the others wait for it in the process group
