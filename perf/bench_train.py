"""Training throughput, in one run:

1. **Objective**: samples/s of the full R2D2 objective (GCPR + FGR + TgD + FgD) next to the same encoders
   trained with the CLIP loss alone, and the full objective with FgD's masked view made the old way
   (patches zeroed in pixel space: the ViT still sees every token) next to the default (FLIP-style: the
   dropped patch *tokens* never enter the student's ViT), and the full objective with the student seeing only
   FgD's masked input (``--student-view masked``: one student pass, read by every loss; in the breakdown its
   image pass is the "FgD masked image" row). Batches are synthetic tensors already on the
   device (data loading excluded); each timed step is forward + backward + AdamW step + EMA update, as in
   ``models.train.loop``; the runners alternate across repeats; medians are printed. Each step's matmul and
   convolution FLOPs (``torch.utils.flop_counter``) are printed beside it: CLIP's FLOPs over R2D2's is the
   samples/s ratio R2D2 would reach if its step ran at CLIP's FLOP rate.
2. **Data pipeline alone** (shard read, JPEG decode, random resized crop + flip + normalise, tokenise, batch),
   one process, one thread: ours (``models.train.data.ShardStream``) next to open_clip's webdataset pipeline
   shape (``WebDataset -> shuffle -> decode("pilrgb") -> to_tuple -> map_tuple(transform, tokenize) ->
   batched``) with the same transforms on the same shards. ``open_clip_torch`` itself is not installed (it
   pulls torchvision, which this project never installs), so its pipeline is rebuilt from webdataset here.

CPU (any machine; tiny config for the objective, 224-px images for the data pipeline):
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
from models.train.loop import clip_gradients, enable_gradient_checkpointing, make_optimizer  # noqa: E402
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

    def __init__(self, name: str, mode: str, args, device, drop_tokens: bool = True,
                 student_view: str = "full") -> None:
        torch.manual_seed(0)
        self.model = models.build_model(args.config).to(device).train()
        for n, p in self.model.named_parameters():
            if n.startswith(UNUSED_PREFIXES):
                p.requires_grad_(False)
        if args.grad_checkpointing:
            enable_gradient_checkpointing(self.model)
        losses = LossConfig(queue_size=args.queue_size, student_view=student_view)
        self.obj = R2D2Objective(self.model, losses, mode=mode, mask_token_id=4,
                                 special_ids=[0, 2, 3, 4], patch_size=self.model.config.patch_size).to(device)
        self.obj.drop_tokens = drop_tokens
        self.opt = make_optimizer(self.obj, 1e-5, 0.02)  # the trainer's optimizer (fused AdamW)
        self.trainable = [p for p in self.obj.parameters() if p.requires_grad]
        self.batch = make_batch(self.model.config, args.batch_size, args.text_len, device)
        self.name, self.device, self.bf16 = name, device, device.type == "cuda"

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            out = self.obj(self.batch)
        out["loss"].backward()
        clip_gradients(self.trainable, 1.0)  # the trainer's clipping, over the trainer's list
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


def step_flops(runner: Runner) -> float:
    """Matmul and convolution FLOPs of one training step of ``runner`` (forward + backward), counted by
    ``torch.utils.flop_counter`` (elementwise work is not counted). The step runs for real."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        runner.step()
    return float(counter.get_total_flops())


def step_breakdown(runner: Runner, steps: int, repeats: int) -> Dict[str, float]:
    """Median ms per training step of each part of ``runner``'s step (the same work as :meth:`Runner.step`):
    forward components timed by wrapping the objective's methods, then backward, clipping, AdamW and the
    EMA update. ``forward other`` is what no wrapper covers (masking, negative sampling, the queue)."""
    obj, model = runner.obj, runner.model
    cuda = runner.device.type == "cuda"
    spent: Dict[str, float] = {}

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(owner, attr: str, label: str) -> None:
        inner = getattr(owner, attr)

        def timed(*a, **kw):
            t = now()
            out = inner(*a, **kw)
            spent[label] = spent.get(label, 0.0) + now() - t
            return out
        owner.__dict__[attr] = timed

    parts = [(model, "encode_image", "student image (all calls)"), (model, "encode_text", "student text"),
             (obj, "_masked_image", "FgD masked image"), (obj.gcpr, "forward", "GCPR loss"),
             (obj.tgd, "forward", "TgD loss"), (obj.fgd, "forward", "FgD loss"), (obj, "_fgr", "FGR (all)"),
             (model, "itm_logits_pairs", "FGR cross encoders")]
    if obj.teacher is not None:
        parts += [(obj.teacher.model, "encode_image", "teacher image"),
                  (obj.teacher.model, "encode_text", "teacher text")]
    for owner, attr, label in parts:
        wrap(owner, attr, label)
    rows: Dict[str, List[float]] = {}
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    try:
        for _ in range(steps * repeats):
            spent.clear()
            t0 = now()
            runner.opt.zero_grad(set_to_none=True)
            with ctx:
                out = obj(runner.batch)
            t1 = now()
            out["loss"].backward()
            t2 = now()
            clip_gradients(runner.trainable, 1.0)
            t3 = now()
            runner.opt.step()
            t4 = now()
            obj.after_step()
            t5 = now()
            part = dict(spent)
            if "FgD masked image" in part:  # nested in the student image calls
                part["student image (all calls)"] = max(0.0, part.get("student image (all calls)", 0.0)
                                                        - part["FgD masked image"])
            if "FGR cross encoders" in part:
                part["FGR (all)"] -= part["FGR cross encoders"]
            part = {("student image" if k.startswith("student image") else
                     "FGR sampling, gathers, loss" if k == "FGR (all)" else k): v for k, v in part.items()}
            part["forward other"] = (t1 - t0) - sum(part.values())
            part.update({"forward": t1 - t0, "backward": t2 - t1, "gradient clipping": t3 - t2,
                         "AdamW": t4 - t3, "EMA + temperature clamp": t5 - t4, "step": t5 - t0})
            for k, v in part.items():
                rows.setdefault(k, []).append(v * 1000)
    finally:
        for owner, attr, _ in parts:
            owner.__dict__.pop(attr, None)
    return {k: round(statistics.median(v), 2) for k, v in rows.items()}


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
    ap.add_argument("--breakdown", action="store_true",
                    help="also print the ms per step of each part of a CLIP and an R2D2 step")
    ap.add_argument("--skip-data", action="store_true", help="skip the data-pipeline comparison")
    ap.add_argument("--skip-pixel-fgd", action="store_true",
                    help="skip the pixel-zeroing FgD variant (one model fewer in memory: ViT-B/16 on a small host)")
    ap.add_argument("--skip-objective", action="store_true", help="only the data-pipeline comparison")
    ap.add_argument("--fgd-config", default="r2d2-vitb16",
                    help="config whose masked FgD student image pass is timed (token drop vs pixel zeroing)")
    ap.add_argument("--fgd-batch-size", type=int, default=None, help="default 4 on CPU, 128 on GPU")
    ap.add_argument("--data-samples", type=int, default=512, help="samples in the synthetic shard set")
    ap.add_argument("--data-batches", type=int, default=12, help="batches of 32 timed per data repeat")
    ap.add_argument("--image-size", type=int, default=224, help="training image size of the data pipeline")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.config = args.config or ("r2d2-vitb16" if device.type == "cuda" else "r2d2-tiny")
    args.batch_size = args.batch_size or (128 if device.type == "cuda" else 32)
    args.text_len = args.text_len or (16 if "tiny" in args.config else 64)
    if args.skip_objective:
        result = {"data": bench_data(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return result
    runners = [Runner("clip", "clip", args, device), Runner("r2d2", "pretrain", args, device),
               Runner("r2d2_masked_view", "pretrain", args, device, student_view="masked")]
    if not args.skip_pixel_fgd:
        runners.insert(2, Runner("r2d2_pixel_fgd", "pretrain", args, device, drop_tokens=False))
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
        "patch_drop_ratio": LossConfig().patch_drop_ratio,
        "clip_samples_per_s": round(rate["clip"], 2), "r2d2_samples_per_s": round(rate["r2d2"], 2),
        "r2d2_pixel_fgd_samples_per_s": round(rate.get("r2d2_pixel_fgd", float("nan")), 2),
        "r2d2_over_clip": round(rate["r2d2"] / rate["clip"], 3),
        "r2d2_pixel_fgd_over_clip": round(rate.get("r2d2_pixel_fgd", float("nan")) / rate["clip"], 3),
        "r2d2_masked_view_samples_per_s": round(rate["r2d2_masked_view"], 2),
        "r2d2_masked_view_over_clip": round(rate["r2d2_masked_view"] / rate["clip"], 3),
        "repeats": args.repeats, "steps_per_repeat": args.steps,
    }
    if device.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        result["reference_clip_b16_a100"] = CLIP_B16_A100
    print(f"device {result['device']}, {args.config}, batch {args.batch_size} per device, {result['precision']}")
    print(f"  CLIP loss alone                 : {rate['clip']:9.1f} samples/s per device (median of {args.repeats})")
    print(f"  R2D2, FgD drops patch tokens    : {rate['r2d2']:9.1f} samples/s per device  "
          f"ratio to CLIP {rate['r2d2'] / rate['clip']:.3f}")
    if "r2d2_pixel_fgd" in rate:
        print(f"  R2D2, FgD zeroes patch pixels   : {rate['r2d2_pixel_fgd']:9.1f} samples/s per device  "
              f"ratio to CLIP {rate['r2d2_pixel_fgd'] / rate['clip']:.3f}")
    print(f"  R2D2, student sees masked input : {rate['r2d2_masked_view']:9.1f} samples/s per device  "
          f"ratio to CLIP {rate['r2d2_masked_view'] / rate['clip']:.3f}  (--student-view masked)")
    if "r2d2_pixel_fgd" in rate:
        print(f"  token dropping speeds the full objective up {rate['r2d2'] / rate['r2d2_pixel_fgd']:.2f}x "
              f"(patch_drop_ratio {LossConfig().patch_drop_ratio})")
    print(f"  the masked student view speeds the full objective up {rate['r2d2_masked_view'] / rate['r2d2']:.2f}x")
    if device.type == "cuda":
        print(f"  peak memory                     : {result['max_memory_gib']} GiB (all models resident)")
        print(f"  reference                       : CLIP ViT-B/16 about {CLIP_B16_A100:.0f} samples/s per A100")
    print(f"  ratio R2D2/CLIP (full objective, samples/s, median): {rate['r2d2'] / rate['clip']:.3f}")
    flops = {r.name: step_flops(r) for r in runners if r.name != "r2d2_pixel_fgd"}
    result["gflop_per_step"] = {k: round(v / 1e9, 4) for k, v in flops.items()}
    print("matmul/conv FLOPs per step (forward + backward, torch.utils.flop_counter; the samples/s ratio at CLIP's"
          " FLOP rate is CLIP's FLOPs over R2D2's):")
    for name, label in (("clip", "CLIP loss alone"), ("r2d2", "R2D2, default view"),
                        ("r2d2_masked_view", "R2D2, masked view")):
        at_equal_rate = flops["clip"] / flops[name]
        measured = rate[name] / rate["clip"]
        result[f"{name}_flop_ratio"] = round(at_equal_rate, 3)
        print(f"  {label:30s}: {flops[name] / 1e9:8.3f} GFLOP  FLOP ratio {at_equal_rate:.3f}  "
              f"measured ratio {measured:.3f}  (FLOP rate {measured / at_equal_rate:.2f}x CLIP's)")
    if args.breakdown:
        shown = [r for r in runners if r.name != "r2d2_pixel_fgd"]
        result["breakdown_ms"] = {r.name: step_breakdown(r, args.steps, args.repeats) for r in shown}
        ms = result["breakdown_ms"]
        print(f"ms per step, median of {args.steps * args.repeats} steps (components timed one by one):")
        print(f"  {'part':34s} {'CLIP':>8s} {'R2D2':>8s} {'masked view':>12s}")
        for k in ms["r2d2"]:
            print(f"  {k:34s} {ms['clip'].get(k, 0.0):8.2f} {ms['r2d2'][k]:8.2f} "
                  f"{ms['r2d2_masked_view'].get(k, 0.0):12.2f}")
    runners.clear()  # free the models before the next benchmark builds its own
    result["fgd_student_pass"] = bench_masked_pass(args, device)
    if not args.skip_data:
        result["data"] = bench_data(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def bench_masked_pass(args, device) -> Dict[str, object]:
    """FgD's masked student image pass alone (forward + backward of the ViT and projection) at
    ``--fgd-config``: patch tokens dropped (FLIP, what the trainer does) vs patches zeroed in pixel space
    (every token still computed), at ``LossConfig().patch_drop_ratio``."""
    from models.train.teacher import drop_patches, keep_patch_indices

    torch.manual_seed(0)
    model = models.build_model(args.fgd_config).to(device).train()
    cfg = model.config
    batch = args.fgd_batch_size or (128 if device.type == "cuda" else 4)
    ratio = LossConfig().patch_drop_ratio
    pix = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    g = torch.Generator().manual_seed(0)
    bf16 = device.type == "cuda"

    def step(tokens: bool) -> None:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            if tokens:
                emb = model.encode_image(pix, keep_patches=keep_patch_indices(batch, cfg.num_patches, ratio, g))
            else:
                emb = model.encode_image(drop_patches(pix, cfg.patch_size, ratio, g))
        emb.float().sum().backward()
        model.zero_grad(set_to_none=True)

    def timed(tokens: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            step(tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    step(True), step(False)
    times: Dict[str, List[float]] = {"tokens": [], "pixels": []}
    for _ in range(args.repeats):
        times["tokens"].append(timed(True))
        times["pixels"].append(timed(False))
    rate = {k: batch * args.steps / statistics.median(v) for k, v in times.items()}
    print(f"FgD masked student image pass alone ({args.fgd_config}, {cfg.num_patches} patches, batch {batch}, "
          f"drop {ratio:.0%}):")
    print(f"  patch tokens dropped (FLIP)    : {rate['tokens']:9.1f} samples/s")
    print(f"  patch pixels zeroed (before)   : {rate['pixels']:9.1f} samples/s")
    print(f"  speed-up of the masked pass    : {rate['tokens'] / rate['pixels']:.2f}x")
    return {"config": args.fgd_config, "batch_size": batch, "patch_drop_ratio": ratio,
            "tokens_samples_per_s": round(rate["tokens"], 2), "pixels_samples_per_s": round(rate["pixels"], 2),
            "speedup": round(rate["tokens"] / rate["pixels"], 3)}


def make_shard_set(folder: Path, n: int) -> Path:
    """``n`` synthetic 256-px JPEG samples in 4 shards of the ccmb format (with sizes.json)."""
    from ccmb import synthetic
    from ccmb.shards import ShardWriter, finalize_shard_set, make_key

    items = synthetic.sample_items(n, seed=0)
    per = (n + 3) // 4
    for s in range(4):
        with ShardWriter(folder, s, source="bench") as w:
            for i, item in enumerate(items[s * per:(s + 1) * per]):
                img = synthetic.jpeg_bytes(synthetic.render(item, 256, seed=s * per + i))
                w.write(make_key(s, i, per), img, item.title,
                        {"title": item.title, "content": item.content, "query": item.query})
    finalize_shard_set(folder, command="bench")
    return folder


def bench_data(args) -> Dict[str, object]:
    """Samples/s of the data pipeline alone, one process and one thread: ours vs open_clip's shape."""
    import random
    import tempfile

    import webdataset as wds
    from models.tokenizer import load_tokenizer, write_test_vocab
    from models.train.augment import TrainTransform
    from models.train.data import ShardStream, Tokenize, resolve_shards

    torch.set_num_threads(1)
    batch = 32
    with tempfile.TemporaryDirectory() as tmp:
        shards = resolve_shards(make_shard_set(Path(tmp) / "shards", args.data_samples))
        tokenizer = load_tokenizer(write_test_vocab(Path(tmp) / "tok"), max_length=64)
        tokenize = Tokenize(tokenizer, 64)
        transform = TrainTransform(args.image_size)

        def ours() -> int:
            stream = ShardStream(shards, batch, transform, tokenize, text_choice="txt", seed=0,
                                 shuffle_buffer=1000, resampled=True)
            n = 0
            for i, b in enumerate(stream):
                n += b["pixel_values"].shape[0]
                if i + 1 == args.data_batches:
                    return n
            return n

        rng = random.Random(0)

        def open_clip_shape() -> int:
            # open_clip's get_wds_dataset: shard sampling, tarfile_to_samples, shuffle, decode("pilrgb"),
            # rename/to_tuple("jpg;png", "txt"), map_tuple(preprocess, tokenizer), batched
            pipeline = wds.DataPipeline(
                wds.ResampledShards(shards), wds.tarfile_to_samples(), wds.shuffle(1000, initial=100),
                wds.decode("pilrgb"), wds.to_tuple("jpg;png;jpeg;webp", "txt"),
                wds.map_tuple(lambda img: transform(img, rng), lambda t: tokenize([t])["input_ids"][0]),
                wds.batched(batch, partial=False))  # default collation stacks both into tensors
            n = 0
            for i, (images, _) in enumerate(pipeline):
                n += images.shape[0]
                if i + 1 == args.data_batches:
                    return n
            return n

        rates: Dict[str, List[float]] = {"ours": [], "open_clip_shape": []}
        for fn in (ours, open_clip_shape):  # warm-up (page cache, imports)
            fn()
        for _ in range(args.repeats):
            for name, fn in (("ours", ours), ("open_clip_shape", open_clip_shape)):
                t = time.perf_counter()
                n = fn()
                rates[name].append(n / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"data pipeline alone ({args.image_size}-px crops, batch {batch}, 1 process, 1 thread, "
          f"median of {args.repeats}):")
    print(f"  ours (ShardStream)             : {med['ours']:9.1f} samples/s per core")
    print(f"  open_clip webdataset shape     : {med['open_clip_shape']:9.1f} samples/s per core")
    print(f"  ratio ours / open_clip shape   : {med['ours'] / med['open_clip_shape']:.3f}")
    return {"ours_samples_per_s_per_core": round(med["ours"], 1),
            "open_clip_shape_samples_per_s_per_core": round(med["open_clip_shape"], 1),
            "ratio": round(med["ours"] / med["open_clip_shape"], 3), "image_size": args.image_size}


if __name__ == "__main__":
    main()
