"""Which checkpoint keys may be absent (light: the standard library only, so ``models.hub`` and ``ccmb fetch``
check a fetched checkpoint's keys without importing torch).

Ignorable keys: the ``*.position_ids`` buffers (recomputed by the model) and the embedding tables of the two
cross encoders (``text_joint_layer.embeddings.*``, ``img_joint_layer.embeddings.*``), which the official modules
carry but never apply.
"""
from __future__ import annotations

import re
from typing import Tuple

IGNORABLE_KEY_PATTERNS: Tuple[str, ...] = (
    r"(^|\.)position_ids$",
    r"^(text|img)_joint_layer\.embeddings\.",
)
_IGNORABLE = re.compile("|".join(IGNORABLE_KEY_PATTERNS))


def is_ignorable_key(key: str) -> bool:
    """True for checkpoint keys the loader drops silently (see the module docstring)."""
    return bool(_IGNORABLE.search(key))
