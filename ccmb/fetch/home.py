"""``$CCMB_HOME`` (default ``~/.cache/ccmb``): where fetched models, archives and indexes live, and the
offline switch."""
from __future__ import annotations

import os
from pathlib import Path


def ccmb_home() -> Path:
    """``$CCMB_HOME`` or ``~/.cache/ccmb``."""
    return Path(os.environ.get("CCMB_HOME") or Path.home() / ".cache" / "ccmb").expanduser()


def models_dir() -> Path:
    return ccmb_home() / "models"


def datasets_dir() -> Path:
    """Default data root of ``ccmb fetch dataset`` (unpacked sets)."""
    return ccmb_home() / "datasets"


def downloads_dir() -> Path:
    """Archives kept after unpacking (so an offline machine can unpack again)."""
    return ccmb_home() / "downloads"


def offline() -> bool:
    """``$CCMB_OFFLINE`` set to 1/true/yes: never touch the network, use only what is cached."""
    return os.environ.get("CCMB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
