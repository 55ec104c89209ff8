"""The R2D2 trainer: pre-training on ccmb shards and fine-tuning on the downstream sets.

* :func:`models.train.pretrain.pretrain`  — ``ccmb train pretrain``
* :func:`models.train.finetune.finetune`  — ``ccmb train finetune``
* losses (:mod:`.losses`), data (:mod:`.data`), loop (:mod:`.loop`), checkpoints (:mod:`.checkpoint`),
  distributed helpers (:mod:`.distributed`), configs (:mod:`.config`). See ``docs/training.md``.

The trainer never imports the benchmark harness: evaluation comes in as a callback
``evaluate_fn(model, epoch) -> {metric: value}``.
"""
from .config import LossConfig, TrainConfig, finetune_defaults
from .loop import TrainResult

__all__ = ["LossConfig", "TrainConfig", "finetune_defaults", "TrainResult"]
