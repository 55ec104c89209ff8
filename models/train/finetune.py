"""Fine-tuning on a downstream set: :func:`finetune` (the API behind ``ccmb train finetune``).

* ``retrieval`` (ICR, IQR, Flickr30k-CNA, ...): every (text, positive image) pair of the train split is a
  sample; GCPR (image index as the image id: texts of one image are soft positives of each other) + FGR.
* ``matching`` (ICM, IQM): labelled (image, text) pairs train the two match heads (cross-entropy).

Defaults follow the released recipes (:func:`models.train.config.finetune_defaults`). The model is
evaluated after every epoch by ``evaluate_fn(model, epoch)`` on the *validation* split; the best epoch's
weights go to ``RUN_DIR/best`` (never chosen on a test split).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .augment import TrainTransform
from .config import TrainConfig
from .data import Tokenize, mix_seed
from .distributed import DistInfo, init_distributed
from .loop import EvaluateFn, TrainResult, run_training
from .objective import R2D2Objective
from .pretrain import prepare_model, tokenizer_files, write_run_files
from .teacher import special_token_ids
from ccmb.types import PathLike

logger = logging.getLogger(__name__)

FINETUNE_TASKS = ("retrieval", "matching")


class PairSamples(Dataset):
    """(image index, text, image id, label) samples of a RetrievalData or MatchingData object."""

    def __init__(self, data: Any, task: str, transform: Callable, seed: int = 0) -> None:
        if task not in FINETUNE_TASKS:
            raise ValueError(f"unknown task {task!r}: use one of {FINETUNE_TASKS}")
        self.data, self.task, self.transform, self.seed = data, task, transform, seed
        self.epoch = 0
        if task == "retrieval":
            if not hasattr(data, "text_to_images"):
                raise TypeError(f"{getattr(data, 'name', data)}: retrieval fine-tuning needs RetrievalData")
            self.items = [(i, data.texts[t], i, 1) for t, imgs in enumerate(data.text_to_images) for i in imgs]
        else:
            if not hasattr(data, "labels") or not hasattr(data, "pair_images"):
                raise TypeError(f"{getattr(data, 'name', data)}: matching fine-tuning needs MatchingData")
            self.items = [(i, t, i, int(y)) for i, t, y in zip(data.pair_images, data.pair_texts, data.labels)]
        if not self.items:
            raise ValueError(f"{getattr(data, 'name', '?')}/{getattr(data, 'split', '?')}: no training pairs")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Dict[str, Any]:
        img_index, text, image_id, label = self.items[k]
        rng = random.Random(mix_seed(self.seed, self.epoch, k))
        return {"pixel_values": self.transform(self.data.load_image(img_index), rng), "text": text,
                "image_id": image_id, "label": label, "key": str(k)}


class CollatePairs:
    """Stacks images, tokenises texts (in the workers)."""

    def __init__(self, tokenize: Callable[[Sequence[str]], Dict[str, torch.Tensor]]) -> None:
        self.tokenize = tokenize

    def __call__(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
                 "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
                 "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
                 "keys": [it["key"] for it in items]}
        batch.update(self.tokenize([it["text"] for it in items]))
        return batch


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> List[List[int]]:
    """This rank's batches of one epoch: a seeded permutation cut into equal global batches (the tail is
    dropped so every rank runs the same number of steps; a set smaller than one global batch repeats)."""
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, "epoch", epoch) % (2 ** 62))
    perm = torch.randperm(n, generator=g).tolist()
    global_batch = batch_size * world
    while len(perm) < global_batch:
        perm = perm + perm
    usable = (len(perm) // global_batch) * global_batch
    perm = perm[:usable]
    return [perm[s + rank * batch_size: s + (rank + 1) * batch_size] for s in range(0, usable, global_batch)]


def load_finetune_model(init: PathLike, config: Optional[Any] = None) -> nn.Module:
    """A checkpoint folder (``config.json`` + ``model.safetensors``), or an official ``.pth`` with ``config``."""
    import models

    init = Path(init)
    if init.is_dir():
        return models.load_model(init).train()
    if config is None:
        raise ValueError(f"{init}: a checkpoint file needs --config (the model config it was trained with)")
    return models.load_model(config, init).train()


def finetune(task: str, train_data: Any, init: PathLike, output: PathLike, cfg: TrainConfig, *,
             tokenizer_path: PathLike, config: Optional[Any] = None, device: Optional[str] = None,
             evaluate_fn: Optional[EvaluateFn] = None, resume: Optional[str] = None,
             on_log: Optional[Callable[[Dict[str, Any]], None]] = None) -> TrainResult:
    """Fine-tune the model at ``init`` for ``task`` on ``train_data`` (from ``ccmb.datasets.load_dataset``).

    ``evaluate_fn(model, epoch)`` scores the validation split each epoch; ``cfg.select_metric`` names the
    metric that chooses ``RUN_DIR/best``. Returns a :class:`TrainResult`.
    """
    from models.tokenizer import load_tokenizer

    info: DistInfo = init_distributed(device)
    model = load_finetune_model(init, config)
    max_len = cfg.max_text_len or model.config.max_text_len
    tokenizer = load_tokenizer(tokenizer_path, max_length=max_len)
    prepare_model(model, cfg, tokenizer)
    samples = PairSamples(train_data, task, TrainTransform(model.config.image_size), seed=cfg.seed)
    accum = max(1, cfg.grad_accum)
    micro_per_epoch = len(epoch_batches(len(samples), cfg.batch_size, 0, cfg.seed, info.rank, info.world_size))
    steps_per_epoch = max(1, micro_per_epoch // accum)
    total_steps = int(cfg.steps) if cfg.steps else int(cfg.epochs or 1) * steps_per_epoch
    collate = CollatePairs(Tokenize(tokenizer, max_len))

    def epoch_iter(epoch: int, micro_done: int):
        samples.epoch = epoch
        batches = epoch_batches(len(samples), cfg.batch_size, epoch, cfg.seed, info.rank, info.world_size)
        batches = batches[micro_done: steps_per_epoch * accum]
        kw: Dict[str, Any] = {"prefetch_factor": 2} if cfg.num_workers > 0 else {}
        return iter(DataLoader(samples, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers,
                               pin_memory=info.device.type == "cuda", **kw))

    mode = "pretrain" if task == "retrieval" else "match"
    obj = R2D2Objective(model, cfg.losses, mode=mode, mask_token_id=tokenizer.mask_token_id,
                        special_ids=special_token_ids(tokenizer), patch_size=model.config.patch_size,
                        seed=cfg.seed)
    if info.is_main:
        logger.info("fine-tuning %s on %s/%s: %d pairs, %d steps per epoch, %d steps", task,
                    getattr(train_data, "name", "?"), getattr(train_data, "split", "?"), len(samples),
                    steps_per_epoch, total_steps)
    write_run_files(Path(output), cfg, {"command": "finetune", "task": task, "init": str(init),
                                        "dataset": getattr(train_data, "name", ""),
                                        "split": getattr(train_data, "split", ""),
                                        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}, info)
    return run_training(obj, cfg, Path(output), info, epoch_iter, steps_per_epoch, total_steps, cfg.batch_size,
                        evaluate_fn=evaluate_fn, resume=resume, on_log=on_log,
                        model_files=tokenizer_files(tokenizer_path))
