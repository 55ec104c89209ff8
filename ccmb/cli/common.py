"""Helpers shared by the CLI modules of every package."""
from __future__ import annotations

import logging
import os

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: int) -> None:
    """0: warnings, 1: info, 2+: debug. ``CCMB_LOG_LEVEL`` overrides."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    env = os.environ.get("CCMB_LOG_LEVEL")
    if env:
        level = getattr(logging, env.upper(), level)
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
