"""Benchmark tasks: each ``evaluate(adapter, data, cache, ...) -> flat dict`` of metrics."""
from __future__ import annotations

from typing import Callable, Dict

from . import captioning, classification, matching, retrieval, text_to_image

TASKS: Dict[str, Callable] = {
    "retrieval": retrieval.evaluate,
    "matching": matching.evaluate,
    "classification": classification.evaluate,
    "captioning": captioning.evaluate,
    "text-to-image": text_to_image.evaluate,
}

__all__ = ["TASKS"]
