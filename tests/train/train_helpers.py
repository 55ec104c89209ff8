"""Shared helpers of the trainer tests: a tiny synthetic shard set, a vocab, a tiny config."""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import List, Tuple

from PIL import Image, ImageDraw

from ccmb.shards import ShardWriter, finalize_shard_set, make_key

COLORS = {"红": (220, 40, 40), "绿": (40, 170, 60), "蓝": (40, 80, 220), "黄": (235, 210, 40),
          "紫": (150, 60, 190), "青": (40, 200, 220), "黑": (20, 20, 20), "白": (245, 245, 245)}
SHAPES = ("圆", "方")


def concepts() -> List[Tuple[str, str]]:
    """Eight colours of one large square: distinct enough for a tiny ViT to learn in ~100 steps."""
    return [(c, "方") for c in COLORS]


def draw(color: str, shape: str, size: int = 48, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (128, 128, 128))
    d = ImageDraw.Draw(img)
    if shape == "圆":  # a small disc in the middle
        r = size * rng.uniform(0.28, 0.32)
        c = size / 2 + rng.uniform(-2, 2)
        d.ellipse([c - r, c - r, c + r, c + r], fill=COLORS[color])
    else:  # a large square
        m = rng.randint(2, 5)
        d.rectangle([m, m, size - m, size - m], fill=COLORS[color])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_shards(root: Path, n_shards: int = 2, per_shard: int = 16, size: int = 48) -> Path:
    """A finished shard set of coloured shapes with title/content/query texts naming colour and shape."""
    root.mkdir(parents=True, exist_ok=True)
    items = concepts()
    k = 0
    for s in range(n_shards):
        with ShardWriter(root, s, source="test") as w:
            for i in range(per_shard):
                color, shape = items[k % len(items)]
                img = draw(color, shape, size, seed=k)
                title = f"{color}色{shape}形"
                w.write(make_key(s, i, per_shard), img, title,
                        {"title": title, "content": f"一个{color}色的{shape}形", "query": f"{color}{shape}",
                         "image_key": f"{color}{shape}"})
                k += 1
    finalize_shard_set(root, command="test")
    return root


def write_vocab(root: Path) -> Path:
    from models.tokenizer import write_test_vocab

    return write_test_vocab(root, extra_chars="".join(COLORS) + "".join(SHAPES) + "色形一个的")


def make_r2d2_sets(root: Path, renders: int = 2, size: int = 40) -> Path:
    """ICR (retrieval) and ICM (matching) in the official layout: train and val splits, shared image folder."""
    import json

    images = root / "IQR_IQM_ICR_ICM_images"
    images.mkdir(parents=True, exist_ok=True)
    items = concepts()
    for split, offset in (("train", 0), ("val", 1000)):
        itr, itm = [], []
        for r in range(renders if split == "train" else 1):
            for n, (color, shape) in enumerate(items):
                name = f"{split}_{r}_{n}.jpg"
                (images / name).write_bytes(draw(color, shape, size, seed=offset + 100 * r + n))
                path = f"images/{name}"
                itr.append({"text": f"{color}色{shape}形", "image_path": path})
                itr.append({"text": f"一个{color}色的{shape}形", "image_path": path})
                wrong_color, wrong_shape = items[(n + 3) % len(items)]
                itm.append({"text": f"{color}色{shape}形", "image_path": path, "label": 1})
                itm.append({"text": f"{wrong_color}色{wrong_shape}形", "image_path": path, "label": 0})
        for folder, file, rows in (("ICR", f"long_itr_{split}.json", itr), ("ICM", f"long_itm_{split}.json", itm)):
            d = root / folder / split
            d.mkdir(parents=True, exist_ok=True)
            (d / file).write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in rows) + "\n",
                                  encoding="utf-8")
    return root


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gcpr_ddp_worker(rank: int, world: int, port: int, workdir: str) -> None:
    """One rank of the DDP check: the tiny model's GCPR on this rank's half of the batch."""
    import os

    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import models
    from models.train.config import LossConfig
    from models.train.distributed import cleanup_distributed, init_distributed
    from models.train.objective import R2D2Objective
    from torch.nn.parallel import DistributedDataParallel as DDP

    info = init_distributed("cpu")
    blob = torch.load(Path(workdir) / "inputs.pt", weights_only=True)
    model = models.build_model("r2d2-tiny")
    model.load_state_dict(blob["state"])
    model.eval()  # no dropout: both runs see the same function
    obj = R2D2Objective(model, LossConfig(), mode="clip")
    ddp = DDP(obj, find_unused_parameters=True)
    b = blob["pixel_values"].shape[0] // world
    part = slice(rank * b, (rank + 1) * b)
    out = ddp({"pixel_values": blob["pixel_values"][part], "input_ids": blob["input_ids"][part],
               "attention_mask": blob["attention_mask"][part], "image_ids": blob["image_ids"][part]})
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": out["gcpr"].detach(), "grads": grads, "world": info.world_size},
               Path(workdir) / f"rank{rank}.pt")
    del ddp, out  # free DDP's reducer BEFORE the process group: the other order can deadlock in gloo
    cleanup_distributed()


def hardest_negatives(sims, pos, generator=None):
    """Deterministic stand-in for FGR's sampler: the most similar non-positive column."""

    return sims.float().masked_fill(pos, float("-inf")).argmax(dim=1)


def fgr_ddp_worker(rank: int, world: int, port: int, workdir: str) -> None:
    """One rank of the FGR check: this rank's half of the batch, hard negatives from the global batch."""
    import os

    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import models
    from models.train import objective as objective_module
    from models.train.config import LossConfig
    from models.train.distributed import cleanup_distributed, init_distributed
    from models.train.objective import R2D2Objective
    from torch.nn.parallel import DistributedDataParallel as DDP

    objective_module.sample_hard_negatives = hardest_negatives
    info = init_distributed("cpu")
    blob = torch.load(Path(workdir) / "inputs.pt", weights_only=True)
    model = models.build_model("r2d2-tiny")
    model.load_state_dict(blob["state"])
    model.eval()  # no dropout: both runs see the same function
    obj = R2D2Objective(model, LossConfig(gcpr=0, tgd=0, fgd=0), mode="pretrain")
    ddp = DDP(obj, find_unused_parameters=True)
    b = blob["pixel_values"].shape[0] // world
    part = slice(rank * b, (rank + 1) * b)
    out = ddp({"pixel_values": blob["pixel_values"][part], "input_ids": blob["input_ids"][part],
               "attention_mask": blob["attention_mask"][part], "image_ids": blob["image_ids"][part]})
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": out["fgr"].detach(), "grads": grads, "world": info.world_size},
               Path(workdir) / f"rank{rank}.pt")
    del ddp, out
    cleanup_distributed()
