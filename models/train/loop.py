"""The training loop shared by pre-training and fine-tuning.

AdamW (no weight decay on biases, norms and the temperature), linear warm-up then cosine, gradient
accumulation (DDP ``no_sync`` on the inner micro-batches), clipping, bf16 autocast on GPU, checkpoints
every ``save_every`` steps with ``resume`` (falling back to the newest intact checkpoint), a log record at
the first step and every ``log_every`` steps (each loss, lr, temperature, samples/s, samples/s per device,
ETA) to ``on_log`` and ``RUN_DIR/log.jsonl``, and an evaluation
callback ``evaluate_fn(model, epoch) -> {metric: value}`` at the end of every epoch (rank 0), whose
``select_metric`` picks the best checkpoint ``RUN_DIR/best/``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from models.loading import CheckpointError

from .checkpoint import (load_checkpoint, load_newest_intact, resolve_checkpoint, resume_candidates,
                         save_checkpoint, save_model_dir_atomic)
from .config import TrainConfig
from .data import mix_seed
from .distributed import DistInfo, all_reduce_mean, barrier
from .objective import R2D2Objective
from .schedule import build_scheduler

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
BEST_DIR = "best"
FINAL_DIR = "model"

EpochIter = Callable[[int, int], Iterator[Dict[str, Any]]]
EvaluateFn = Callable[[nn.Module, int], Dict[str, float]]


@dataclass
class TrainResult:
    """What a run did: steps, the last logged record, evaluations, the best metric and where it is."""

    steps: int = 0
    last_log: Dict[str, Any] = field(default_factory=dict)
    evaluations: List[Dict[str, Any]] = field(default_factory=list)
    best_metric: Optional[float] = None
    best_dir: Optional[str] = None
    final_dir: Optional[str] = None
    history: List[Dict[str, Any]] = field(default_factory=list)


def freeze_vision(model: nn.Module) -> int:
    """Freeze ``model.visual_encoder`` (the projection stays trainable); returns the frozen count."""
    n = 0
    for p in model.visual_encoder.parameters():
        p.requires_grad_(False)
        n += p.numel()
    return n


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing in both transformers encoders (transformers' own implementation)."""
    done = False
    for name in ("visual_encoder", "text_encoder"):
        sub = getattr(model, name, None)
        if sub is None:
            continue
        if hasattr(sub, "activation_checkpointing_enable"):  # transformers >= 5
            sub.activation_checkpointing_enable({"use_reentrant": False})
            done = True
        elif hasattr(sub, "gradient_checkpointing_enable"):
            sub.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            done = True
    if not done:
        raise ValueError("this model has no encoder that supports gradient checkpointing")


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Weight decay on matrices only: biases, norms and the temperature get none."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("temp") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(module: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.98),
                   eps: float = 1e-6) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` of ``module`` (the objective: the model's parameters, then its own
    heads such as MLM's), fused (one kernel for all parameters: ~10x less optimizer time than the per-tensor
    loop on CPU, where torch does not pick it by default), falling back to the multi-tensor implementation."""
    groups = param_groups(module, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=betas, eps=eps, foreach=True)


def clip_gradients(parameters: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """:func:`torch.nn.utils.clip_grad_norm_` (2-norm) with the same result, cheaper on CPU: the norms in one
    ``_foreach_norm`` over a list built once per call, and on CPU no multiply when nothing is clipped (torch
    multiplies every gradient by exactly 1.0 then; reading the norm is no device sync on CPU). Returns the
    total norm before clipping. Gradients on several devices or dtypes fall back to torch's function."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    first = grads[0]
    if any(g.device != first.device or g.dtype != first.dtype for g in grads):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    coef = float(max_norm) / (total + 1e-6)
    if first.device.type == "cpu":
        if not float(coef) >= 1.0:  # also a non-finite norm, as torch
            torch._foreach_mul_(grads, coef)
    else:  # no host sync on accelerators: multiply by the clamped coefficient as torch does
        torch._foreach_mul_(grads, torch.clamp(coef, max=1.0))
    return total


def batch_digest(keys: List[str]) -> str:
    """Short hash of a batch's sample keys (the data order, in logs)."""
    return hashlib.sha1("\n".join(map(str, keys)).encode()).hexdigest()[:12]


def _autocast(cfg: TrainConfig, device: torch.device):
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision {cfg.precision!r}: use auto, bf16 or fp32")
    if bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def run_training(objective: R2D2Objective, cfg: TrainConfig, run_dir: Path, info: DistInfo,
                 epoch_iter: EpochIter, steps_per_epoch: int, total_steps: int,
                 samples_per_micro: int, evaluate_fn: Optional[EvaluateFn] = None,
                 resume: Optional[str] = None, on_log: Optional[Callable[[Dict[str, Any]], None]] = None,
                 extra_state: Optional[Dict[str, Any]] = None,
                 model_files: Optional[Dict[str, Path]] = None,
                 model_json: Optional[Dict[str, Any]] = None) -> TrainResult:
    """Train ``objective`` for ``total_steps`` optimizer steps.

    ``epoch_iter(epoch, micro_batches_done)`` yields the micro-batches of one epoch from the given offset
    (``steps_per_epoch * grad_accum`` of them). ``samples_per_micro`` is the per-process micro-batch size.
    ``model_files`` (``{name: source file}``, e.g. the tokenizer's ``vocab.txt``) and ``model_json``
    (``{name: object}``, e.g. ``data_provenance.json``) are written into every saved model folder
    (``RUN_DIR/model``, ``RUN_DIR/best``), so such a folder is self-contained for ``ccmb-bench run``.
    """
    run_dir = Path(run_dir)
    model = objective.model
    device = info.device
    objective.to(device)
    objective.train()
    optimizer = make_optimizer(objective, cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.eps)
    scheduler = build_scheduler(optimizer, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    step, epoch, step_in_epoch = 0, 0, 0
    result = TrainResult()
    best_metric: Optional[float] = None
    if resume:
        candidates = resume_candidates(run_dir) if resume == "latest" else [resolve_checkpoint(run_dir, resume)]

        def load(path: Path) -> Dict[str, Any]:
            return load_checkpoint(path, model, optimizer, scheduler, objective.teacher_state(), map_location=device)

        ckpt, state, skipped = load_newest_intact(run_dir, candidates, load)
        if skipped and ckpt is None:
            raise CheckpointError(f"--resume {resume}: no intact checkpoint in {run_dir}; "
                                  + "; ".join(f"{p.name}: {why}" for p, why in skipped))
        if ckpt is None:
            if info.is_main:
                logger.warning("--resume %s: %s has no checkpoint yet; starting from step 0", resume, run_dir)
        else:
            if skipped and info.is_main:
                logger.warning("resumed from %s after skipping %d corrupt checkpoint(s): %s", ckpt.name,
                               len(skipped), "; ".join(f"{p.name} ({why})" for p, why in skipped))
            step, epoch, step_in_epoch = int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"])
            best_metric = state.get("best_metric")
            for k, want in (("world_size", info.world_size), ("num_workers", cfg.num_workers),
                            ("batch_size", cfg.batch_size), ("grad_accum", cfg.grad_accum)):
                if k in state and state[k] != want:
                    logger.warning("resuming with %s=%s (checkpoint had %s): the data order differs "
                                   "from the interrupted run", k, want, state[k])
            if info.is_main:
                logger.info("resumed from %s at step %d (epoch %d, step %d of it)", ckpt, step, epoch,
                            step_in_epoch)
    wrapped: nn.Module = objective
    if info.distributed:
        wrapped = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                      broadcast_buffers=False, find_unused_parameters=not objective.uses_all_parameters)
    autocast = _autocast(cfg, device)
    trainable = [p for p in objective.parameters() if p.requires_grad]
    log_path = run_dir / LOG_FILE
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    def emit(record: Dict[str, Any]) -> None:
        if not info.is_main:
            return
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        (on_log or (lambda r: logger.info("%s", r)))(record)

    def checkpoint_state() -> Dict[str, Any]:
        return dict(extra_state or {}, epoch=epoch, step_in_epoch=step_in_epoch, world_size=info.world_size,
                    num_workers=cfg.num_workers, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                    seed=cfg.seed, best_metric=best_metric, train_config=cfg.to_dict())

    def save(at: int) -> None:
        if info.is_main:
            save_checkpoint(run_dir, at, model, optimizer, scheduler, checkpoint_state(),
                            objective.teacher_state(), cfg.keep_last)
        barrier()

    accum = max(1, cfg.grad_accum)
    skipped, skipped_total = 0, 0  # undecodable samples dropped by the pipeline (all ranks, this process)
    sums: Dict[str, float] = {}
    n_sums = 0
    t_last, step_last = time.perf_counter(), step
    step_start = step
    per = "GPU" if device.type == "cuda" else "device"
    last_digest = ""
    while step < total_steps:
        micro_done = step_in_epoch * accum
        it = epoch_iter(epoch, micro_done)
        micro = 0
        save_due = False
        for batch in it:
            if micro == 0:
                optimizer.zero_grad(set_to_none=True)
                torch.manual_seed(mix_seed(cfg.seed, info.rank, step) % (2 ** 63))
                objective.step = step
            micro += 1
            last = micro == accum
            sync = contextlib.nullcontext() if (last or not isinstance(wrapped, DDP)) else wrapped.no_sync()
            batch = _to_device(batch, device)
            with sync:
                with autocast():
                    out = wrapped(batch)
                (out["loss"] / accum).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            skipped += int(batch.get("skipped", 0))
            n_sums += 1
            if "keys" in batch and info.is_main:
                last_digest = batch_digest(batch["keys"])
            if not last:
                continue
            micro = 0
            grad_norm = None
            if cfg.clip_grad and cfg.clip_grad > 0:
                grad_norm = float(clip_gradients(trainable, cfg.clip_grad))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            objective.after_step()
            step += 1
            step_in_epoch += 1
            if step % cfg.log_every == 0 or step == total_steps or step == step_start + 1:
                elapsed = max(1e-9, time.perf_counter() - t_last)
                samples = (step - step_last) * accum * samples_per_micro * info.world_size
                record: Dict[str, Any] = {"step": step, "epoch": epoch}
                for k, v in sums.items():
                    record[k] = round(all_reduce_mean(v / max(1, n_sums), device), 6)
                temp = getattr(model, "temp", None)
                skipped_total += int(round(all_reduce_mean(skipped, device) * info.world_size))
                record["skipped_samples"] = skipped_total
                skipped = 0
                # ETA from the latest interval's pace (the first step also pays the start-up: workers, warm-up)
                eta = elapsed / max(1, step - step_last) * (total_steps - step)
                record.update(lr=lr, temp=float(temp.detach()) if temp is not None else None,
                              grad_norm=grad_norm, samples_per_s=round(samples / elapsed, 2),
                              samples_per_s_per_device=round(samples / elapsed / info.world_size, 2),
                              device_kind=per, total_steps=total_steps, eta_s=round(eta, 1),
                              batch=last_digest)
                if not all(math.isfinite(record[k]) for k in sums):
                    raise FloatingPointError(f"non-finite loss at step {step}: {record}")
                emit(record)
                result.last_log = record
                result.history.append(record)
                sums, n_sums = {}, 0
                t_last, step_last = time.perf_counter(), step
            due = bool(cfg.save_every) and step % cfg.save_every == 0 and step < total_steps
            if step_in_epoch >= steps_per_epoch or step >= total_steps:
                save_due = due  # saved after the epoch's evaluation, with the next epoch's state
                break
            if due:
                save(step)
        else:  # the iterator ran dry before the epoch's steps (finite fine-tuning data)
            if micro:
                logger.warning("epoch %d ended inside an accumulation window; %d micro-batches dropped",
                               epoch, micro)
            if step_in_epoch == 0:
                raise RuntimeError(f"epoch {epoch} yielded no batches")
            if step < total_steps:
                step_in_epoch = steps_per_epoch  # count the short epoch as complete
        if step_in_epoch >= steps_per_epoch:
            metrics = _evaluate(evaluate_fn, model, epoch, info)
            if metrics is not None:
                record = {"step": step, "epoch": epoch, "eval": metrics}
                emit(record)
                result.evaluations.append(record)
                best_metric = _maybe_best(metrics, cfg, best_metric, model, run_dir, info, epoch, step, result,
                                          model_files, model_json)
            epoch += 1
            step_in_epoch = 0
        if save_due:
            save(step)
    save(step)
    if info.is_main:
        final = run_dir / FINAL_DIR
        save_model_dir_atomic(model, final, model_files, model_json)
        result.final_dir = str(final)
    barrier()
    result.steps = step
    result.best_metric = best_metric
    if best_metric is not None:
        result.best_dir = str(run_dir / BEST_DIR)
    return result


def _evaluate(evaluate_fn: Optional[EvaluateFn], model: nn.Module, epoch: int,
              info: DistInfo) -> Optional[Dict[str, float]]:
    if evaluate_fn is None:
        return None
    metrics = None
    if info.is_main:
        was = model.training
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in evaluate_fn(model, epoch).items()}
        model.train(was)
    barrier()
    return metrics


def _maybe_best(metrics: Dict[str, float], cfg: TrainConfig, best: Optional[float], model: nn.Module,
                run_dir: Path, info: DistInfo, epoch: int, step: int, result: TrainResult,
                model_files: Optional[Dict[str, Path]] = None,
                model_json: Optional[Dict[str, Any]] = None) -> Optional[float]:
    """Keep ``RUN_DIR/best`` = the model with the highest ``select_metric`` on validation so far."""
    key = cfg.select_metric
    if not key:
        return best
    if key not in metrics:
        raise KeyError(f"select metric {key!r} not among the evaluation's metrics {sorted(metrics)}")
    value = metrics[key]
    if best is not None and value <= best:
        return best
    if info.is_main:
        best = {"epoch": epoch, "step": step, "metric": key, "value": value, "metrics": metrics}
        save_model_dir_atomic(model, run_dir / BEST_DIR, model_files, dict(model_json or {}, **{"best.json": best}))
        logger.info("new best %s = %.4f at epoch %d", key, value, epoch)
    barrier()
    return value
