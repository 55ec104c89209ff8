"""Compatibility alias: the shared CLI helpers live in :mod:`ccmb.clikit` (light, below both CLIs).

New code imports from ``ccmb.clikit``; this module only re-exports for code written before the move.
"""
from __future__ import annotations

from ..clikit import (
    INPUT_ERRORS,
    LOG_FORMAT,
    input_errors_as_click,
    parse_key_values,
    setup_logging,
)

__all__ = ["INPUT_ERRORS", "LOG_FORMAT", "input_errors_as_click", "parse_key_values", "setup_logging"]
