"""Two CPU processes (gloo, 127.0.0.1) give the same GCPR loss and gradients as one process on the
doubled batch; a 2-process torchrun of the CLI runs the full R2D2 objective with gradient accumulation
(DDP no_sync on the inner micro-batch)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import (fgr_ddp_worker, free_port, gcpr_ddp_worker, hardest_negatives, make_shards,  # noqa: E402
                           write_vocab)

import models  # noqa: E402
from models.train.config import LossConfig  # noqa: E402
from models.train.objective import R2D2Objective  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_gcpr_equals_single_process_on_doubled_batch(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny").eval()
    n = 8
    ids = torch.randint(5, 200, (n, 10))
    mask = torch.ones(n, 10, dtype=torch.long)
    mask[::3, 7:] = 0
    blob = {"state": model.state_dict(), "pixel_values": torch.randn(n, 3, 32, 32), "input_ids": ids,
            "attention_mask": mask, "image_ids": torch.tensor([0, 1, 2, 3, 3, 5, 6, 0])}  # shared images too
    torch.save(blob, tmp_path / "inputs.pt")
    mp.spawn(gcpr_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    obj = R2D2Objective(model, LossConfig(), mode="clip")
    out = obj({k: blob[k] for k in ("pixel_values", "input_ids", "attention_mask", "image_ids")})
    out["loss"].backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["world"] == 2
        assert got["loss"].item() == pytest.approx(out["gcpr"].item(), abs=1e-5)
        assert set(got["grads"]) == set(single)
        for name, g in single.items():
            assert torch.allclose(got["grads"][name], g, atol=2e-5, rtol=1e-3), name


@pytest.mark.slow
def test_ddp_fgr_negatives_from_other_ranks_pass_gradient_back(tmp_path, monkeypatch):
    """FGR with global hard negatives on 2 gloo processes = one process on the doubled batch (the mean of
    the two ranks' losses, every gradient): the hidden states of negatives drawn from the other rank send
    their gradient back to it (gather with gradient). Negatives are the deterministic hardest ones."""
    from models.train import objective as objective_module

    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny").eval()
    n = 8
    ids = torch.randint(5, 200, (n, 10))
    mask = torch.ones(n, 10, dtype=torch.long)
    mask[::3, 7:] = 0
    blob = {"state": model.state_dict(), "pixel_values": torch.randn(n, 3, 32, 32), "input_ids": ids,
            "attention_mask": mask, "image_ids": torch.tensor([0, 1, 2, 3, 3, 5, 6, 0])}
    torch.save(blob, tmp_path / "inputs.pt")
    mp.spawn(fgr_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    monkeypatch.setattr(objective_module, "sample_hard_negatives", hardest_negatives)
    obj = R2D2Objective(model, LossConfig(gcpr=0, tgd=0, fgd=0), mode="pretrain")
    out = obj({k: blob[k] for k in ("pixel_values", "input_ids", "attention_mask", "image_ids")})
    out["loss"].backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # each rank's loss covers its own rows; their mean is the single-process loss
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(out["fgr"].item(), abs=1e-5)
    for got in ranks:
        assert set(got["grads"]) == set(single)
        for name, g in single.items():
            assert torch.allclose(got["grads"][name], g, atol=2e-5, rtol=1e-3), name


@pytest.mark.slow
@pytest.mark.parametrize("view", ["full", "masked"])
def test_torchrun_two_processes_full_objective(tmp_path, view):
    make_shards(tmp_path / "shards", n_shards=3, per_shard=8, size=32)
    vocab = write_vocab(tmp_path / "tok")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(Path(sys.executable).parent / "ccmb"), "train", "pretrain",
           "--config", "r2d2-tiny", "--shards", str(tmp_path / "shards"), "--tokenizer", str(vocab),
           "--output", str(out), "--steps", "3", "--batch-size", "4", "--log-every", "1", "--num-workers", "1",
           "--queue-size", "16", "--device", "cpu", "--grad-accum", "2", "--student-view", view]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]  # rank 0 alone writes the log
    assert {"gcpr", "fgr", "tgd", "fgd"} <= set(logs[-1])
    assert logs[-1]["samples_per_s"] == pytest.approx(2 * logs[-1]["samples_per_s_per_device"], rel=0.01)
    assert json.loads((out / "run_args.json").read_text())["world_size"] == 2
    assert (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "train_config.json").read_text())["losses"]["student_view"] == view
