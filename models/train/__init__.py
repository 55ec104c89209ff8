"""The R2D2 trainer: pre-training on ccmb shards and fine-tuning on the downstream sets.

* :func:`models.train.pretrain.pretrain`  — ``ccmb train pretrain``
* :func:`models.train.finetune.finetune`  — ``ccmb train finetune``
* losses (:mod:`.losses`), data (:mod:`.data`), loop (:mod:`.loop`), checkpoints (:mod:`.checkpoint`),
  distributed helpers (:mod:`.distributed`), configs (:mod:`.config`). See ``docs/training.md``.

The trainer never imports the benchmark harness: evaluation comes in as a callback
``evaluate_fn(model, epoch) -> {metric: value}``.
"""
from typing import Any

from .config import LOSSES, LOSS_NAMES, LossConfig, TrainConfig, finetune_defaults


def __getattr__(name: str) -> Any:  # TrainResult lives with the loop (torch): import it on first use
    if name == "TrainResult":
        from .loop import TrainResult

        return TrainResult
    raise AttributeError(f"module 'models.train' has no attribute {name!r}")


__all__ = ["LOSSES", "LOSS_NAMES", "LossConfig", "TrainConfig", "finetune_defaults", "TrainResult"]
