"""Benchmark tasks: each evaluator is ``evaluate(adapter, data, cache, ...) -> flat dict`` of metrics.

``EVALUATORS`` maps a task name (``DatasetSpec.task``) to its evaluator; ``MAIN_METRIC`` names the one metric
that ranks models within a dataset of that task (the leaderboard, the trainer's best-epoch choice).
"""
from __future__ import annotations

from typing import Callable, Dict

from . import captioning, classification, matching, retrieval, text_to_image

EVALUATORS: Dict[str, Callable] = {
    "retrieval": retrieval.evaluate,
    "matching": matching.evaluate,
    "classification": classification.evaluate,
    "captioning": captioning.evaluate,
    "text-to-image": text_to_image.evaluate,
}

#: task -> the metric that ranks models within a dataset (higher is better for all of them)
MAIN_METRIC: Dict[str, str] = {
    "retrieval": "MR",
    "matching": "AUC",
    "classification": "top1",
    "captioning": "CIDEr",
    "text-to-image": "clip_score",
}


def main_metric(task: str) -> str:
    """The main metric of ``task``; an unknown task raises ``KeyError`` naming the known ones."""
    try:
        return MAIN_METRIC[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(MAIN_METRIC)}") from None


def evaluator(task: str) -> Callable:
    """The evaluator of ``task``; an unknown task raises ``KeyError`` naming the known ones."""
    try:
        return EVALUATORS[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(EVALUATORS)}") from None


__all__ = ["EVALUATORS", "MAIN_METRIC", "evaluator", "main_metric"]
