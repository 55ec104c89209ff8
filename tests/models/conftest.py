"""Make ``import models`` find the package, also under the bare ``pytest`` entry point.

With rootdir-style test folders, pytest puts ``tests/`` first on ``sys.path``, where ``tests/models/`` (no
``__init__.py``) would be imported as an empty namespace package named ``models``. ``python -m pytest`` (as
``make test`` runs it) is not affected; this keeps ``pytest tests/models`` working too.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
_loaded = sys.modules.get("models")
if _loaded is not None and getattr(_loaded, "__file__", None) is None:  # the namespace impostor
    del sys.modules["models"]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
