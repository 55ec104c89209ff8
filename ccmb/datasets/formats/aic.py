"""AI Challenger image Chinese captioning (AIC-ICC): one JSON array per split.

Items: ``{"url": ..., "image_id": "<name>.jpg", "caption": ["...", ... 5]}``; images in a folder by
``image_id``. Captions often carry stray newlines/spaces, which are removed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Dict, List

from ..base import DatasetFormatError, ParseLog, PathLike, read_text

_WS = re.compile(r"\s+")


@dataclass
class AicItem:
    index: int
    image_id: str
    captions: List[str]


def parse_aic_json(path: PathLike, log: ParseLog) -> List[AicItem]:
    """Items of an AIC-ICC annotation file; a bad item is named by its index in the array."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(path, None, f"not UTF-8: {exc}") from None
    except RecursionError:  # one document: nesting deeper than Python's stack is malformed, not a crash
        raise DatasetFormatError(path, None, "invalid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise DatasetFormatError(path, 1, "expected a JSON array of {image_id, caption} objects")
    items: List[AicItem] = []
    seen: Dict[str, int] = {}
    for k, obj in enumerate(data):
        where = f"item {k}"
        if not isinstance(obj, dict):
            log.bad(path, None, f"{where}: expected an object")
            continue
        image_id, captions = obj.get("image_id"), obj.get("caption")
        if not isinstance(image_id, str) or not image_id.strip():
            log.bad(path, None, f"{where}: missing 'image_id'")
            continue
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            log.bad(path, None, f"{where}: 'caption' must be a list of strings")
            continue
        image_id = image_id.strip()
        if image_id in seen:
            log.duplicate(path, None, f"image_id {image_id!r} ({where}; first at item {seen[image_id]})")
            continue
        seen[image_id] = k
        clean = []
        for c in captions:
            c = _WS.sub("", c)
            if c:
                clean.append(c)
            else:
                log.empty_text(path, None, f"{where}: empty caption of {image_id}")
        items.append(AicItem(k, image_id, clean))
    return items
