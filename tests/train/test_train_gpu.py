"""On a CUDA machine: a few bf16 pre-training steps of the full objective and of the benchmark."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shards, write_vocab  # noqa: E402

from models.train.config import LossConfig, TrainConfig  # noqa: E402
from models.train.pretrain import pretrain  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
def test_bf16_pretrain_steps_on_cuda(tmp_path):
    shards = make_shards(tmp_path / "shards", n_shards=2, per_shard=8, size=32)
    vocab = write_vocab(tmp_path / "tok")
    cfg = TrainConfig(losses=LossConfig(queue_size=16), steps=4, batch_size=8, log_every=1, save_every=2,
                      num_workers=1, grad_checkpointing=True)
    result = pretrain("r2d2-tiny", shards, tmp_path / "run", cfg, tokenizer_path=vocab, device="cuda")
    assert result.steps == 4
    for k in ("gcpr", "fgr", "tgd", "fgd"):
        assert math.isfinite(result.last_log[k])
    out = subprocess.run([sys.executable, "perf/bench_train.py", "--device", "cuda", "--config", "r2d2-tiny",
                          "--repeats", "1", "--steps", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio R2D2/CLIP" in out.stdout
