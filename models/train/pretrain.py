"""Pre-training on a ccmb shard set: :func:`pretrain` (the API behind ``ccmb train pretrain``)."""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn

from ccmb import atomic, storage
from ccmb.shards import MANIFEST_FILE

from .config import TrainConfig
from .data import ShardStream, Tokenize, make_loader, resolve_shards, shard_sizes
from .augment import TrainTransform
from .distributed import DistInfo, init_distributed
from .loop import EvaluateFn, TrainResult, enable_gradient_checkpointing, freeze_vision, run_training
from .objective import R2D2Objective
from .teacher import special_token_ids
from ccmb.types import PathLike

logger = logging.getLogger(__name__)


#: Parameters R2D2 never uses (BERT's pooler, CLIP's post_layernorm): kept in checkpoints, not trained.
UNUSED_PREFIXES = ("text_encoder.pooler.", "visual_encoder.post_layernorm.",
                   "visual_encoder.vision_model.post_layernorm.")


def build_student(config: Any, init_vision: Optional[PathLike] = None, init_text: Optional[PathLike] = None,
                  init: Optional[PathLike] = None) -> nn.Module:
    """The model to train: from a checkpoint dir (``init``), from Hugging Face CLIP + BERT directories
    (``init_vision`` and ``init_text`` together), or randomly initialised from ``config``."""
    import models

    if init is not None:
        return models.load_model(init).train()
    if (init_vision is None) != (init_text is None):
        raise ValueError("--init-vision and --init-text go together (both encoders are initialised)")
    if init_vision is not None:
        return models.init_from_hf(config, init_vision, init_text).train()
    return models.build_model(config).train()


def prepare_model(model: nn.Module, cfg: TrainConfig, tokenizer) -> None:
    """Freeze vision / enable gradient checkpointing as configured; check the tokenizer fits."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}")
    for name, p in model.named_parameters():
        if name.startswith(UNUSED_PREFIXES):
            p.requires_grad_(False)  # never in a loss: DDP would wait for their gradients
    if cfg.freeze_vision:
        n = freeze_vision(model)
        logger.info("vision encoder frozen (%d parameters)", n)
    if cfg.grad_checkpointing:
        enable_gradient_checkpointing(model)


def tokenizer_files(source: PathLike) -> Dict[str, Path]:
    """The tokenizer files to copy into saved model folders (``vocab.txt``; ``tokenizer.json`` and
    ``tokenizer_config.json`` / ``special_tokens_map.json`` when the source folder has them), so
    ``ccmb-bench run --model RUN_DIR`` finds the tokenizer without ``--tokenizer``."""
    src = Path(source)
    if src.is_file():
        return {"vocab.txt": src}
    names = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    return {n: src / n for n in names if (src / n).is_file()}


PROVENANCE_FILE = "data_provenance.json"


def shard_provenance(paths: List[str]) -> Optional[Dict[str, Any]]:
    """``{"shard_sets": [{"path", "provenance"}]}`` from the ``manifest.json`` of every shard folder among
    ``paths`` that records a ``provenance`` (``ccmb build-shards``); None when none does."""
    sets = []
    for folder in sorted({str(storage.parent(p)) for p in paths}):
        manifest = storage.join(folder, MANIFEST_FILE)
        try:
            data = json.loads(storage.read_bytes(manifest).decode("utf-8"))
        except (FileNotFoundError, IsADirectoryError):
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{manifest}: unreadable manifest ({exc})") from exc
        if isinstance(data, dict) and isinstance(data.get("provenance"), dict):
            where = folder if storage.is_url(folder) else str(Path(folder).resolve())
            sets.append({"path": where, "provenance": data["provenance"]})
    return {"shard_sets": sets} if sets else None


def write_run_files(run_dir: Path, cfg: TrainConfig, args: Dict[str, Any], info: DistInfo) -> None:
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run_dir / "train_config.json", cfg.to_dict())
        atomic.write_json(run_dir / "run_args.json", dict(args, world_size=info.world_size))


def pretrain(config: Any, shards: Union[PathLike, list], output: PathLike, cfg: TrainConfig, *,
             tokenizer_path: Optional[PathLike] = None, init_vision: Optional[PathLike] = None,
             init_text: Optional[PathLike] = None, init: Optional[PathLike] = None,
             resume: Optional[str] = None, device: Optional[str] = None, objective: str = "r2d2",
             evaluate_fn: Optional[EvaluateFn] = None,
             on_log: Optional[Callable[[Dict[str, Any]], None]] = None) -> TrainResult:
    """Pre-train an R2D2/PRD2 model on ``shards`` into the run folder ``output``.

    ``config``: a model config name/JSON path (``r2d2-tiny``, ``r2d2-vitb16``...). ``objective``: ``r2d2``
    (the losses of ``cfg.losses``) or ``clip`` (InfoNCE alone: the baseline). Works in one process or
    under torchrun (one process per GPU). Returns a :class:`TrainResult`.
    """
    from models.tokenizer import load_tokenizer

    info = init_distributed(device)
    run_dir = Path(output)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in every rerun
    model = build_student(config, init_vision, init_text, init)
    tok_src = tokenizer_path or init_text
    if tok_src is None and init is not None and (Path(init) / "vocab.txt").is_file():
        tok_src = Path(init) / "vocab.txt"  # a trainer output folder carries its tokenizer
    if tok_src is None:
        raise ValueError("a tokenizer is needed: pass --tokenizer (vocab.txt or a directory), --init-text, or an "
                         "--init model folder that holds vocab.txt")
    max_len = cfg.max_text_len or model.config.max_text_len
    tokenizer = load_tokenizer(tok_src, max_length=max_len)
    prepare_model(model, cfg, tokenizer)
    paths = resolve_shards(shards)
    sizes = shard_sizes(paths)
    total_samples = sum(sizes.values())
    global_micro = cfg.batch_size * info.world_size
    accum = max(1, cfg.grad_accum)
    if total_samples < global_micro:
        raise ValueError(f"{shards}: {total_samples} samples in sizes.json, fewer than one global batch "
                         f"({cfg.batch_size} x {info.world_size} processes)")
    steps_per_epoch = max(1, total_samples // (global_micro * accum))
    if cfg.steps:
        total_steps = int(cfg.steps)
    elif cfg.epochs:
        total_steps = int(cfg.epochs) * steps_per_epoch
    else:
        raise ValueError("give the run length: --steps N or --epochs N")
    if info.is_main:
        logger.info("%d shards, %d samples: %d steps per virtual epoch of global batch %d; %d steps",
                    len(paths), total_samples, steps_per_epoch, global_micro * accum, total_steps)
    stream = ShardStream(paths, cfg.batch_size, TrainTransform(model.config.image_size),
                         Tokenize(tokenizer, max_len), text_choice=cfg.text_choice, seed=cfg.seed,
                         shuffle_buffer=cfg.shuffle_buffer, resampled=cfg.resampled,
                         rank=info.rank, world_size=info.world_size)

    def epoch_iter(epoch: int, micro_done: int):
        stream.set_epoch(epoch)
        stream.set_start(micro_done)
        loader = make_loader(stream, cfg.num_workers, pin_memory=info.device.type == "cuda")
        return itertools.islice(iter(loader), steps_per_epoch * accum - micro_done)

    obj = R2D2Objective(model, cfg.losses, mode="clip" if objective == "clip" else "pretrain",
                        mask_token_id=tokenizer.mask_token_id, special_ids=special_token_ids(tokenizer),
                        patch_size=model.config.patch_size, seed=cfg.seed)
    if hasattr(obj, "cls") and init_text is not None and not resume:
        from models.loading import init_mlm_head_from_hf

        if not init_mlm_head_from_hf(obj.cls, init_text):
            logger.info("%s has no MLM head (cls.predictions.*): the MLM head starts random", init_text)
    write_run_files(run_dir, cfg, {"command": "pretrain", "config": str(config), "shards": str(shards),
                                   "objective": objective, "init_vision": str(init_vision or ""),
                                   "init_text": str(init_text or ""), "tokenizer": str(tok_src),
                                   "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}, info)
    provenance = shard_provenance(paths)
    model_json = {PROVENANCE_FILE: provenance} if provenance else None
    if provenance and info.is_main:
        atomic.write_json(run_dir / PROVENANCE_FILE, provenance)
    return run_training(obj, cfg, run_dir, info, epoch_iter, steps_per_epoch, total_steps,
                        cfg.batch_size, evaluate_fn=evaluate_fn, resume=resume, on_log=on_log,
                        model_files=tokenizer_files(tok_src), model_json=model_json)
