"""Corrupt checkpoints (issue 17): every load error names the file; ``--resume latest`` falls back to the newest
intact checkpoint and says which one it skipped and why; a failed checkpoint write leaves no temporary folder;
``models.load_model`` names a truncated ``.safetensors``, an empty ``.pth`` and a refused pickle."""
import json
import logging
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shards, write_vocab  # noqa: E402

import models  # noqa: E402
from ccmb.cli import main  # noqa: E402
from models.loading import CheckpointError  # noqa: E402
from models.train import checkpoint as ckpt_module  # noqa: E402
from models.train.checkpoint import (CKPT_DIR, MODEL_FILE, OPTIM_FILE, STATE_FILE, load_checkpoint,  # noqa: E402
                                     save_checkpoint)
from models.train.config import LossConfig, TrainConfig  # noqa: E402
from models.train.pretrain import pretrain  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 (copied per test before damaging it)."""
    root = tmp_path_factory.mktemp("ck")
    shards = make_shards(root / "shards", n_shards=1, per_shard=8, size=32)
    vocab = write_vocab(root / "tok")
    cfg = TrainConfig(losses=LossConfig(queue_size=8), steps=4, batch_size=4, log_every=1, save_every=2,
                      num_workers=0, shuffle_buffer=4)
    pretrain("r2d2-tiny", shards, root / "run", cfg, tokenizer_path=vocab)
    return shards, vocab, root / "run", cfg


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def resume(run, out, steps=6):
    shards, vocab, _, cfg = run
    return pretrain("r2d2-tiny", shards, out, cfg.override(steps=steps), tokenizer_path=vocab, resume="latest")


@pytest.mark.parametrize("victim", [MODEL_FILE, OPTIM_FILE, STATE_FILE])
def test_resume_skips_a_truncated_latest_checkpoint(run, tmp_path, caplog, victim):
    out = copy_run(run[2], tmp_path / "run")
    bad = out / CKPT_DIR / "step_00000004" / victim
    truncate(bad)
    with caplog.at_level(logging.WARNING):
        result = resume(run, out)
    assert result.steps == 6
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-4:] == [3, 4, 5, 6]  # resumed at step 2, not 4
    text = caplog.text
    assert "step_00000004" in text and str(bad) in text and "resumed from step_00000002" in text


def test_resume_with_no_intact_checkpoint_names_every_file(run, tmp_path):
    out = copy_run(run[2], tmp_path / "run")
    for step in ("step_00000002", "step_00000004"):
        truncate(out / CKPT_DIR / step / MODEL_FILE)
    with pytest.raises(CheckpointError) as err:
        resume(run, out)
    msg = str(err.value)
    assert "no intact checkpoint" in msg
    for step in ("step_00000002", "step_00000004"):
        assert str(out / CKPT_DIR / step / MODEL_FILE) in msg


def test_cli_resume_error_is_a_message_not_a_traceback(run, tmp_path):
    shards, vocab, src, _ = run
    out = copy_run(src, tmp_path / "run")
    for step in ("step_00000002", "step_00000004"):
        (out / CKPT_DIR / step / STATE_FILE).write_text('{"step": 2, "epo')
    res = CliRunner().invoke(main, ["train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards),
                                    "--tokenizer", str(vocab), "--output", str(out), "--steps", "6",
                                    "--batch-size", "4", "--num-workers", "0", "--queue-size", "8",
                                    "--resume", "latest"])
    assert res.exit_code == 1
    assert "Error:" in res.output and "Traceback" not in res.output
    assert str(out / CKPT_DIR / "step_00000004" / STATE_FILE) in res.output and "invalid JSON" in res.output


def test_load_errors_name_the_file(run, tmp_path):
    out = copy_run(run[2], tmp_path / "run")
    ck = out / CKPT_DIR / "step_00000004"
    model = models.build_model("r2d2-tiny")
    (ck / STATE_FILE).write_text("{")
    with pytest.raises(CheckpointError, match=str(ck / STATE_FILE)):
        load_checkpoint(ck, model)
    (ck / STATE_FILE).write_text('{"step": 4}')
    (ck / OPTIM_FILE).write_bytes(b"")
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match=str(ck / OPTIM_FILE)):
        load_checkpoint(ck, model, opt)


def test_failed_checkpoint_write_leaves_no_temporary_folder(run, tmp_path, monkeypatch):
    out = copy_run(run[2], tmp_path / "run")
    model = models.build_model("r2d2-tiny")
    opt = torch.optim.AdamW(model.parameters())

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt_module.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(out, 6, model, opt, None, {"epoch": 0})
    root = out / CKPT_DIR
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    assert (root / "latest").read_text().strip() == "step_00000004"
    monkeypatch.undo()
    # overwriting an existing step that then fails keeps the old folder intact
    monkeypatch.setattr(ckpt_module.torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(out, 4, model, opt, None, {"epoch": 0})
    assert (root / "step_00000004" / MODEL_FILE).is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_load_model_names_truncated_and_refused_files(run, tmp_path):
    model_dir = copy_run(run[2] / "model", tmp_path / "model")
    truncate(model_dir / MODEL_FILE, 50)
    with pytest.raises(CheckpointError, match=f"{model_dir / MODEL_FILE}.*truncated or corrupt"):
        models.load_model(model_dir)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file") as err:
        models.load_model("r2d2-tiny", empty)
    assert str(empty) in str(err.value)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError, match="refused") as err:
        models.load_model("r2d2-tiny", evil)
    assert str(evil) in str(err.value)
    torch.save({"model": {"x": torch.zeros(2)}}, tmp_path / "ok.pth")
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes((tmp_path / "ok.pth").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        models.load_model("r2d2-tiny", trunc)
    assert str(trunc) in str(err.value) and err.value.args[0].split(": ")[-1].strip()
