"""Model adapters: one interface over every benchmarked model family, and the registry of named models.

A family is one module (``r2d2``, ``chinese_clip``) offering ``KIND``, ``SPECS`` (its registered models),
``DIRECTORY`` (what model folder it reads), ``load_registered``, ``claims_directory``, ``load_directory`` and
optionally ``claims_name``/``load_name``/``known_names``; :data:`FAMILIES` lists them (a new family is one file
and one line there).

Resolution of ``--model NAME_OR_PATH``:
- a registered name (``ccmb-bench models``): weights from ``--checkpoint`` or ``$CCMB_HOME/models/<name>/``;
- a directory: the family that claims it (``"model_type": "chinese_clip"`` -> Chinese-CLIP, our trainer's
  ``config.json`` + ``model.safetensors`` -> R2D2; a ``ccmb train`` run directory -> its ``model/``);
- a name a family claims (any shipped R2D2 config name ``r2d2-tiny``... with ``--checkpoint``).
Weights that exist but cannot be loaded raise :class:`ModelLoadError` naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from ccmb_bench.adapters import chinese_clip, r2d2
from ccmb_bench.adapters.base import (
    MissingCheckpointError,
    ModelAdapter,
    ModelLoadError,
    ModelSpec,
    UnknownModelError,
    ccmb_home,
    fingerprint_path,
)
from ccmb_bench.adapters.chinese_clip import ChineseCLIPAdapter
from ccmb_bench.adapters.r2d2 import R2D2Adapter
from ccmb_bench.precheck import RUN_MODEL_DIRS, run_model_dir  # noqa: F401 (the light rules, shared with precheck)

#: kind -> family module (a new model family: one module and one line here)
FAMILIES = {r2d2.KIND: r2d2, chinese_clip.KIND: chinese_clip}

MODELS: Dict[str, ModelSpec] = {s.name: s for fam in FAMILIES.values() for s in fam.SPECS}

__all__ = ["ModelAdapter", "R2D2Adapter", "ChineseCLIPAdapter", "ModelSpec", "MODELS", "FAMILIES",
           "UnknownModelError", "MissingCheckpointError", "ModelLoadError", "load_adapter", "list_models",
           "ccmb_home", "fingerprint_path"]


def list_models() -> List[Dict[str, str]]:
    rows = [{"name": s.name, "kind": s.kind, "description": s.description,
             "weights": f"--checkpoint or {ccmb_home() / 'models' / s.name}" + (f" or hub {s.hub}" if s.hub else "")}
            for s in MODELS.values()]
    rows.append({"name": "<directory>", "kind": "|".join(FAMILIES),
                 "description": " or ".join(f.DIRECTORY for f in FAMILIES.values()),
                 "weights": "the directory itself"})
    return rows


def load_adapter(model: str, checkpoint: Optional[str] = None, device: str = "cpu",
                 tokenizer: Optional[str] = None) -> ModelAdapter:
    """Resolve ``model`` (registered name, directory, or a name a family claims) to a ready adapter."""
    if model in MODELS:
        spec = MODELS[model]
        return FAMILIES[spec.kind].load_registered(spec, checkpoint, device, tokenizer)
    path = Path(model)
    if path.is_dir():
        path = run_model_dir(path)
        for family in FAMILIES.values():
            if family.claims_directory(path):
                return family.load_directory(path, checkpoint, device, tokenizer)
        raise UnknownModelError(f"{path}: not a model directory; expected "
                                + " or ".join(f.DIRECTORY for f in FAMILIES.values()))
    for family in FAMILIES.values():
        claims = getattr(family, "claims_name", None)
        if claims is not None and claims(model):
            return family.load_name(model, checkpoint, device, tokenizer)
    names = list(MODELS)
    for family in FAMILIES.values():
        names += list(getattr(family, "known_names", list)())
    known = ", ".join(dict.fromkeys(names))
    raise UnknownModelError(f"unknown model {model!r}; known: {known}, or a model directory")
