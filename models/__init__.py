"""The R2D2 family (R2D2 and PRD2): configs, model, loading, preprocessing and tokenizer.

Entry points: :func:`load_model`, :func:`build_model`, :func:`get_config`, :func:`init_from_hf`;
see ``docs/models.md``.
"""
from models.config import ConfigError, R2D2Config, get_config, list_configs
from models.loading import (
    IGNORABLE_KEY_PATTERNS,
    CheckpointError,
    LoadReport,
    build_model,
    init_from_hf,
    is_ignorable_key,
    load_model,
    read_state_dict,
)
from models.r2d2 import NoCrossEncoderError, R2D2Model

__all__ = [
    "R2D2Config", "ConfigError", "get_config", "list_configs",
    "R2D2Model", "NoCrossEncoderError",
    "load_model", "build_model", "init_from_hf", "read_state_dict", "is_ignorable_key",
    "CheckpointError", "LoadReport", "IGNORABLE_KEY_PATTERNS",
]
