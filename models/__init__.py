"""The R2D2 family (R2D2 and PRD2): configs, model, loading, preprocessing and tokenizer.

Entry points: :func:`load_model`, :func:`build_model`, :func:`get_config`, :func:`init_from_hf`;
see ``docs/models.md``.
"""
import importlib
from typing import Any

#: public name -> defining module. Loaded on first use (PEP 562), so ``import models.train.config`` (the CLI's
#: option lists) does not import torch and transformers.
_EXPORTS = {
    "R2D2Config": "models.config", "ConfigError": "models.config", "get_config": "models.config",
    "list_configs": "models.config",
    "IGNORABLE_KEY_PATTERNS": "models.keys", "CheckpointError": "models.loading", "LoadReport": "models.loading",
    "build_model": "models.loading", "init_from_hf": "models.loading", "is_ignorable_key": "models.keys",
    "load_model": "models.loading", "read_state_dict": "models.loading",
    "NoCrossEncoderError": "models.r2d2", "R2D2Model": "models.r2d2",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "R2D2Config", "ConfigError", "get_config", "list_configs",
    "R2D2Model", "NoCrossEncoderError",
    "load_model", "build_model", "init_from_hf", "read_state_dict", "is_ignorable_key",
    "CheckpointError", "LoadReport", "IGNORABLE_KEY_PATTERNS",
]
