"""Kill a pre-training run (SIGKILL) after a checkpoint; ``--resume latest`` continues from the saved step
with the same batches, losses and final weights as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shards, write_vocab  # noqa: E402

import models  # noqa: E402
from ccmb.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STEPS = 30


def args(shards, vocab, out):
    return ["train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards), "--tokenizer", str(vocab),
            "--output", str(out), "--steps", str(STEPS), "--batch-size", "4", "--log-every", "1",
            "--save-every", "3", "--num-workers", "2", "--queue-size", "16", "--warmup-steps", "3"]


def read_log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_kill_then_resume_latest(tmp_path):
    shards = make_shards(tmp_path / "shards", n_shards=3, per_shard=8, size=32)
    vocab = write_vocab(tmp_path / "tok")
    ref, killed = tmp_path / "ref", tmp_path / "killed"

    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ccmb"), *args(shards, vocab, killed)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 180
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = int(latest.read_text().strip().split("_")[1])
    assert 0 < saved < STEPS

    res = CliRunner().invoke(main, args(shards, vocab, ref))  # the uninterrupted reference
    assert res.exit_code == 0, res.output + repr(res.exception)
    res = CliRunner().invoke(main, args(shards, vocab, killed) + ["--resume", "latest"])
    assert res.exit_code == 0, res.output + repr(res.exception)

    reference = {r["step"]: r for r in read_log(ref)}
    resumed = read_log(killed)[-(STEPS - saved):]
    assert [r["step"] for r in resumed] == list(range(saved + 1, STEPS + 1))
    for r in resumed:
        want = reference[r["step"]]
        assert r["batch"] == want["batch"], r["step"]  # same data order
        for k in ("gcpr", "fgr", "tgd", "fgd", "lr"):
            assert r[k] == pytest.approx(want[k], rel=1e-4, abs=1e-5), (r["step"], k)
    a, b = models.load_model(ref / "model"), models.load_model(killed / "model")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), n
