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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ccmb import atomic
from models.loading import CheckpointError

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


def read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing, truncated or corrupt file is a :class:`CheckpointError`
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on truncated or garbage files
        raise CheckpointError(f"{path}: unreadable safetensors file ({type(exc).__name__}: {exc or 'no detail'}; "
                              "truncated or corrupt?)") from exc


def load_safetensors_into(module: nn.Module, path: Path, strict: bool = True) -> None:
    state = read_safetensors(path)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path}: state does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def read_trainer_state(path: Path) -> Dict[str, Any]:
    """``trainer_state.json`` as a dict; unreadable or truncated JSON is a :class:`CheckpointError` naming it."""
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc}; truncated?)") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a trainer state (a JSON object with 'step')")
    return state


def read_optimizer_file(path: Path, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """``optimizer.pt`` read with ``weights_only=True``; truncated files and refused pickles are a
    :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read with torch.load(weights_only=True): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
                              ) from exc
    if not isinstance(blob, dict) or "optimizer" not in blob:
        raise CheckpointError(f"{path}: not an optimizer checkpoint (a dict with 'optimizer')")
    return blob


def _write_dir(directory: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a temporary sibling folder, then rename it to ``directory``; on any failure
    (disk full...) the temporary folder is removed and the error re-raised; ``directory`` is untouched."""
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model_dir(model: nn.Module, directory: Path, extra_files: Optional[Dict[str, Path]] = None) -> None:
    """The model's own ``save_pretrained`` (safetensors + config.json) when it has one, else a bare
    ``model.safetensors``; then ``extra_files`` (``{name in the folder: source path}``, e.g. the tokenizer's
    ``vocab.txt``). Writes into ``directory`` as it is (callers make the folder swap atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(directory))
        if not (directory / MODEL_FILE).exists():  # a save_pretrained with another file name
            state_to_safetensors(model, directory / MODEL_FILE)
    else:
        state_to_safetensors(model, directory / MODEL_FILE)
    for name, src in (extra_files or {}).items():
        shutil.copyfile(src, directory / name)


def save_model_dir_atomic(model: nn.Module, directory: Path, extra_files: Optional[Dict[str, Path]] = None,
                          extra_json: Optional[Dict[str, Any]] = None) -> None:
    """:func:`save_model_dir` into a temporary folder renamed to ``directory`` (cleaned up on failure);
    ``extra_json`` files (``{name: object}``) are written too."""
    def write(tmp: Path) -> None:
        save_model_dir(model, tmp, extra_files)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    _write_dir(Path(directory), write)


def save_checkpoint(run_dir: Union[str, Path], step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, state: Dict[str, Any],
                    teacher: Optional[nn.Module] = None, keep_last: int = 3) -> Path:
    """Write ``step_{step:08d}`` atomically, point ``latest`` at it, keep the ``keep_last`` newest. A failed
    write (disk full...) leaves no temporary folder behind and ``latest`` unchanged."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name

    def write(tmp: Path) -> None:
        save_model_dir(model, tmp)
        if teacher is not None:
            state_to_safetensors(teacher, tmp / TEACHER_FILE)
        torch.save({"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None}, tmp / OPTIM_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(dict(state, step=step), indent=1, sort_keys=True),
                                      encoding="utf-8")

    _write_dir(final, write)
    atomic.write_text(root / LATEST, name + "\n")
    if keep_last > 0:
        olds = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
        for p in olds[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)
    logger.info("checkpoint %s", final)
    return final


def list_checkpoints(run_dir: Union[str, Path]) -> List[Path]:
    """Checkpoint folders of a run, newest first (by step)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")), reverse=True)


def resolve_checkpoint(run_dir: Union[str, Path], which: str = "latest") -> Optional[Path]:
    """``latest`` -> the folder named by ``RUN_DIR/checkpoints/latest`` (else the newest ``step_*`` folder;
    None when the run has none); otherwise a checkpoint folder path."""
    if which != LATEST:
        p = Path(which)
        if not (p / STATE_FILE).exists():
            raise FileNotFoundError(f"{p}: not a checkpoint folder (no {STATE_FILE})")
        return p
    candidates = resume_candidates(run_dir)
    return candidates[0] if candidates else None


def resume_candidates(run_dir: Union[str, Path]) -> List[Path]:
    """Where ``--resume latest`` may start, in order: the folder ``latest`` names, then every other
    ``step_*`` folder, newest first."""
    root = Path(run_dir) / CKPT_DIR
    marker = root / LATEST
    out: List[Path] = []
    if marker.is_file():
        try:
            named = root / marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            named = None
        if named is not None and named.name.startswith("step_") and named.is_dir():
            out.append(named)
    out += [p for p in list_checkpoints(run_dir) if p not in out]
    return out


def load_checkpoint(path: Path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None, teacher: Optional[nn.Module] = None,
                    map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the trainer state. Every file is read and checked
    before anything is restored, so a corrupt checkpoint (a :class:`CheckpointError` naming the file)
    leaves the model and optimizer untouched."""
    path = Path(path)
    state = read_trainer_state(path / STATE_FILE)
    weights = read_safetensors(path / MODEL_FILE)
    teacher_state = None
    if teacher is not None:
        if not (path / TEACHER_FILE).exists():
            raise CheckpointError(f"{path / TEACHER_FILE}: missing (was distillation off in that run?)")
        teacher_state = read_safetensors(path / TEACHER_FILE)
    blob = read_optimizer_file(path / OPTIM_FILE, map_location) if optimizer is not None else None
    for module, tensors, file in ((model, weights, path / MODEL_FILE), (teacher, teacher_state, path / TEACHER_FILE)):
        if module is None:
            continue
        missing, unexpected = module.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{file}: state does not match the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
    if blob is not None:
        try:
            optimizer.load_state_dict(blob["optimizer"])
            if scheduler is not None and blob.get("scheduler") is not None:
                scheduler.load_state_dict(blob["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path / OPTIM_FILE}: does not fit this optimizer: {exc}") from exc
    return state


def load_newest_intact(run_dir: Union[str, Path], candidates: Sequence[Path],
                       load: Callable[[Path], Dict[str, Any]]) -> Tuple[Optional[Path], Optional[Dict[str, Any]],
                                                                       List[Tuple[Path, str]]]:
    """Try ``load(folder)`` on each candidate in order; a :class:`CheckpointError` skips to the next (logged
    as a warning naming the folder and the reason). Returns ``(folder, state, skipped)``; folder and state
    are None when no candidate loads."""
    skipped: List[Tuple[Path, str]] = []
    for c in candidates:
        try:
            return c, load(c), skipped
        except CheckpointError as exc:
            skipped.append((c, str(exc)))
            logger.warning("resume: skipping checkpoint %s: %s", c, exc)
    return None, None, skipped
