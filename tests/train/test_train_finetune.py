"""Fine-tuning from the CLI on ccmb.datasets sets (ICR retrieval, ICM matching) and the local metrics."""
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_r2d2_sets, write_vocab  # noqa: E402

import models  # noqa: E402
from ccmb.cli import main  # noqa: E402
from models.train.finetune import epoch_batches  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    make_r2d2_sets(root / "data")
    vocab = write_vocab(root / "tok")
    torch.manual_seed(0)
    models.build_model("r2d2-tiny").save_pretrained(root / "init")
    return root, vocab


def run_finetune(root, vocab, out, task, dataset, *extra):
    return CliRunner().invoke(main, [
        "train", "finetune", "--task", task, "--dataset", dataset, "--root", str(root / "data"),
        "--init", str(root / "init"), "--tokenizer", str(vocab), "--output", str(out), "--batch-size", "8",
        "--lr", "1e-3", "--warmup-steps", "2", "--train-vision", "--num-workers", "0", "--log-every", "2",
        *extra])


def check_best(out, metric):
    evals = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval" in r]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == metric
    assert best["value"] == max(r["eval"][metric] for r in evals)
    assert best["epoch"] == next(r["epoch"] for r in evals if r["eval"][metric] == best["value"])
    assert (out / "best" / "model.safetensors").is_file()
    models.load_model(out / "best")
    return evals


def test_finetune_retrieval(setup, tmp_path):
    root, vocab = setup
    out = tmp_path / "icr"
    res = run_finetune(root, vocab, out, "retrieval", "icr", "--epochs", "3")
    assert res.exit_code == 0, res.output + repr(res.exception)
    evals = check_best(out, "MR")
    assert [r["epoch"] for r in evals] == [0, 1, 2]
    assert {"t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "MR"} <= set(evals[0]["eval"])
    assert evals[0]["eval"]["images"] == 8 and evals[0]["eval"]["texts"] == 16  # the val split
    logs = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "gcpr" in r]
    assert "fgr" in logs[0] and "tgd" not in logs[0]  # recipe: GCPR + FGR
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["weight_decay"] == 0.05 and cfg["warmup_steps"] == 2 and cfg["lr"] == 1e-3


def test_finetune_matching_recipe_and_frozen_vision(setup, tmp_path):
    root, vocab = setup
    out = tmp_path / "icm"
    res = run_finetune(root, vocab, out, "matching", "icm", "--epochs", "2", "--freeze-vision")
    assert res.exit_code == 0, res.output + repr(res.exception)
    evals = check_best(out, "AUC")
    assert evals[0]["eval"]["pairs"] == 16
    init = models.load_model(root / "init")
    tuned = models.load_model(out / "model")
    same = all(torch.equal(a, b) for a, b in zip(init.visual_encoder.parameters(), tuned.visual_encoder.parameters()))
    assert same  # vision frozen
    assert not torch.equal(init.itm_head.weight, tuned.itm_head.weight)
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["select_metric"] == "AUC" and cfg["lr"] == 1e-3 and cfg["freeze_vision"]


def test_finetune_refuses_test_split_and_wrong_task(setup, tmp_path):
    root, vocab = setup
    res = run_finetune(root, vocab, tmp_path / "x", "retrieval", "icr", "--val-split", "test")
    assert res.exit_code != 0 and "never on test" in res.output
    res = run_finetune(root, vocab, tmp_path / "y", "retrieval", "icm")
    assert res.exit_code != 0 and "matching" in res.output


def test_epoch_batches_equal_per_rank():
    b0 = epoch_batches(19, 4, 0, 0, 0, 2)
    b1 = epoch_batches(19, 4, 0, 0, 1, 2)
    assert len(b0) == len(b1) == 2 and all(len(b) == 4 for b in b0 + b1)
    assert not set(sum(b0, [])) & set(sum(b1, []))
    assert epoch_batches(19, 4, 1, 0, 0, 2) != b0
    assert len(epoch_batches(3, 4, 0, 0, 0, 1)[0]) == 4  # tiny set repeats to one batch


def test_recipe_defaults():
    from models.train.config import TrainConfig, finetune_defaults

    r, m = finetune_defaults("retrieval"), finetune_defaults("matching")
    assert (r.lr, r.weight_decay, r.warmup_steps, r.freeze_vision, r.batch_size) == (1e-5, 0.05, 500, True, 32)
    assert m.lr == 3e-6 and m.freeze_vision
    assert r.losses.tgd == 0 and r.losses.fgd == 0 and r.losses.gcpr > 0 and r.losses.fgr > 0
    back = TrainConfig.from_dict(r.to_dict())
    assert back == r
    with pytest.raises(ValueError, match="unknown fine-tuning task"):
        finetune_defaults("captioning")


def test_pretrain_with_zero_shot_evaluation(setup, tmp_path):
    from train_helpers import make_shards

    root, vocab = setup
    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=8, size=32)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards), "--tokenizer", str(vocab),
        "--output", str(out), "--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--queue-size", "8",
        "--eval-dataset", "icr", "--eval-root", str(root / "data")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    evals = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["epoch"] for r in evals] == [0, 1] and all("MR" in r["eval"] for r in evals)


def test_finetune_from_a_run_folder_needs_no_tokenizer(setup, tmp_path):
    """A trainer output folder carries its vocab.txt: fine-tuning from it needs no --tokenizer."""
    from train_helpers import make_shards

    root, vocab = setup
    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=8, size=32)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards), "--tokenizer", str(vocab),
        "--output", str(run), "--steps", "1", "--batch-size", "4", "--num-workers", "0", "--queue-size", "8"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    res = CliRunner().invoke(main, [
        "train", "finetune", "--task", "matching", "--dataset", "icm", "--root", str(root / "data"),
        "--init", str(run / "model"), "--output", str(tmp_path / "ft"), "--steps", "1", "--batch-size", "4",
        "--num-workers", "0", "--no-eval"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (tmp_path / "ft" / "model" / "vocab.txt").read_bytes() == vocab.read_bytes()
