"""Checkpoints: ``RUN_DIR/checkpoints/step_NNNNNNNN/`` written atomically (temporary folder + rename).

A checkpoint folder holds::

    model.safetensors     the student's weights (safetensors; plus config.json when the model has one)
    teacher.safetensors   EMA teacher weights and feature queues (when distillation is on)
    optimizer.pt          optimizer + scheduler state (tensors and numbers only: loads with weights_only)
    trainer_state.json    step, epoch, step in epoch, world size, workers, seed, the training config

``RUN_DIR/checkpoints/latest`` names the newest folder; ``--resume latest`` reads it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ccmb import atomic

logger = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
TEACHER_FILE = "teacher.safetensors"
OPTIM_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"


def state_to_safetensors(module: nn.Module, path: Path) -> None:
    """Save a module's state_dict as safetensors (shared tensors copied, so tied weights save)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(tensors, str(path))


def load_safetensors_into(module: nn.Module, path: Path, strict: bool = True) -> None:
    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise RuntimeError(f"{path}: state does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def save_model_dir(model: nn.Module, directory: Path) -> None:
    """The model's own ``save_pretrained`` (safetensors + config.json) when it has one, else a bare
    ``model.safetensors``."""
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(directory))
        if not (directory / MODEL_FILE).exists():  # a save_pretrained with another file name
            state_to_safetensors(model, directory / MODEL_FILE)
    else:
        state_to_safetensors(model, directory / MODEL_FILE)


def save_checkpoint(run_dir: Union[str, Path], step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, state: Dict[str, Any],
                    teacher: Optional[nn.Module] = None, keep_last: int = 3) -> Path:
    """Write ``step_{step:08d}`` atomically, point ``latest`` at it, keep the ``keep_last`` newest."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model_dir(model, tmp)
    if teacher is not None:
        state_to_safetensors(teacher, tmp / TEACHER_FILE)
    torch.save({"optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None}, tmp / OPTIM_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(dict(state, step=step), indent=1, sort_keys=True),
                                  encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic.write_text(root / LATEST, name + "\n")
    if keep_last > 0:
        olds = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
        for p in olds[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)
    logger.info("checkpoint %s", final)
    return final


def resolve_checkpoint(run_dir: Union[str, Path], which: str = "latest") -> Optional[Path]:
    """``latest`` -> the folder named by ``RUN_DIR/checkpoints/latest`` (None when the run has none);
    otherwise a checkpoint folder path."""
    if which != LATEST:
        p = Path(which)
        if not (p / STATE_FILE).exists():
            raise FileNotFoundError(f"{p}: not a checkpoint folder (no {STATE_FILE})")
        return p
    root = Path(run_dir) / CKPT_DIR
    marker = root / LATEST
    if not marker.exists():
        return None
    p = root / marker.read_text(encoding="utf-8").strip()
    if not (p / STATE_FILE).exists():
        raise FileNotFoundError(f"{marker} names {p.name}, which is missing or incomplete")
    return p


def load_checkpoint(path: Path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, teacher: Optional[nn.Module] = None,
                    map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the trainer state."""
    load_safetensors_into(model, path / MODEL_FILE)
    if teacher is not None:
        if not (path / TEACHER_FILE).exists():
            raise FileNotFoundError(f"{path / TEACHER_FILE}: missing (was distillation off in that run?)")
        load_safetensors_into(teacher, path / TEACHER_FILE)
    if optimizer is not None:
        blob = torch.load(path / OPTIM_FILE, map_location=map_location, weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob.get("scheduler") is not None:
            scheduler.load_state_dict(blob["scheduler"])
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
