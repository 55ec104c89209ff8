"""Training throughput: the full R2D2 objective vs the same encoders trained with the CLIP loss alone.

The ratio is the cost of the cross encoders (FGR on 3B pairs), the EMA teacher (TgD) and the masked
second student pass (FgD). Batches are synthetic tensors already on the device (data loading excluded);
each timed step is forward + backward + AdamW step + EMA update, as in ``models.train.loop``. The two
objectives alternate across repeats; medians are printed.

CPU (any machine; tiny config):
    .venv/bin/python perf/bench_train.py
GPU (one GPU, bf16 autocast; R2D2 ViT-B/16 = CLIP ViT-B/16 + RoBERTa-base + 2 x 6 cross layers):
    .venv/bin/python perf/bench_train.py --device cuda --config r2d2-vitb16 --batch-size 128 --steps 10
Published reference: CLIP ViT-B/16 trains at about 340 samples/s per A100 (open_clip, bf16).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from models.train.config import LossConfig  # noqa: E402
from models.train.loop import enable_gradient_checkpointing, param_groups  # noqa: E402
from models.train.objective import R2D2Objective  # noqa: E402
from models.train.pretrain import UNUSED_PREFIXES  # noqa: E402

CLIP_B16_A100 = 340.0


def make_batch(cfg, batch: int, text_len: int, device) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (batch, text_len), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(batch, text_len, dtype=torch.long)
    lengths = torch.randint(text_len // 2, text_len + 1, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return {"pixel_values": torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g).to(device),
            "input_ids": ids.to(device), "attention_mask": mask.to(device),
            "image_ids": torch.arange(batch).to(device)}


class Runner:
    """One objective with its optimizer; ``run(n)`` times n training steps."""

    def __init__(self, name: str, mode: str, args, device) -> None:
        torch.manual_seed(0)
        self.model = models.build_model(args.config).to(device).train()
        for n, p in self.model.named_parameters():
            if n.startswith(UNUSED_PREFIXES):
                p.requires_grad_(False)
        if args.grad_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.obj = R2D2Objective(self.model, LossConfig(queue_size=args.queue_size), mode=mode, mask_token_id=4,
                                 special_ids=[0, 2, 3, 4], patch_size=self.model.config.patch_size).to(device)
        self.opt = torch.optim.AdamW(param_groups(self.model, 0.02), lr=1e-5)
        self.batch = make_batch(self.model.config, args.batch_size, args.text_len, device)
        self.name, self.device, self.bf16 = name, device, device.type == "cuda"

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            out = self.obj(self.batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        self.obj.after_step()

    def run(self, n: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t


def main(argv: List[str] = None) -> Dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--config", default=None, help="model config (default: r2d2-tiny on CPU, r2d2-vitb16 on GPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="per device (default 32 CPU, 128 GPU)")
    ap.add_argument("--text-len", type=int, default=None, help="tokens per text (default 16 tiny, 64 otherwise)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--queue-size", type=int, default=4096)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.config = args.config or ("r2d2-vitb16" if device.type == "cuda" else "r2d2-tiny")
    args.batch_size = args.batch_size or (128 if device.type == "cuda" else 32)
    args.text_len = args.text_len or (16 if "tiny" in args.config else 64)
    runners = [Runner("clip", "clip", args, device), Runner("r2d2", "pretrain", args, device)]
    for r in runners:
        r.run(args.warmup)
    times: Dict[str, List[float]] = {r.name: [] for r in runners}
    for _ in range(args.repeats):
        for r in runners:
            times[r.name].append(r.run(args.steps))
    rate = {k: args.batch_size * args.steps / statistics.median(v) for k, v in times.items()}
    result: Dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "config": args.config, "batch_size": args.batch_size, "text_len": args.text_len,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "clip_samples_per_s": round(rate["clip"], 2), "r2d2_samples_per_s": round(rate["r2d2"], 2),
        "r2d2_over_clip": round(rate["r2d2"] / rate["clip"], 3),
        "repeats": args.repeats, "steps_per_repeat": args.steps,
    }
    if device.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        result["reference_clip_b16_a100"] = CLIP_B16_A100
    print(f"device {result['device']}, {args.config}, batch {args.batch_size} per device, {result['precision']}")
    print(f"  CLIP loss alone : {rate['clip']:9.1f} samples/s per device (median of {args.repeats})")
    print(f"  R2D2 full losses: {rate['r2d2']:9.1f} samples/s per device")
    print(f"  ratio R2D2/CLIP : {rate['r2d2'] / rate['clip']:.3f}  (cost of cross encoders + distillation)")
    if device.type == "cuda":
        print(f"  peak memory     : {result['max_memory_gib']} GiB (both models resident)")
        print(f"  reference       : CLIP ViT-B/16 about {CLIP_B16_A100:.0f} samples/s per A100")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
