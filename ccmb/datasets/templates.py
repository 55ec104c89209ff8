"""Default Chinese prompt templates (data: ``templates.json`` beside this module)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional

TEMPLATES_FILE = Path(__file__).with_name("templates.json")


@lru_cache(maxsize=1)
def _all() -> Dict[str, List[str]]:
    with open(TEMPLATES_FILE, encoding="utf-8") as fh:
        data = json.load(fh)
    return {k: list(v) for k, v in data.items() if not k.startswith("_")}


def get_templates(name: Optional[str] = None) -> List[str]:
    """Templates of dataset ``name`` (its own list if shipped, else ``default``); each contains ``{}``."""
    data = _all()
    return list(data.get(name or "default", data["default"]))
