"""Zero-shot classification: Chinese prompt templates averaged per class; top-1, top-5, mean per-class recall."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ccmb.datasets import ClassificationData
from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.metrics import classification_metrics
from ccmb_bench.tasks.encode import dual_scores, encode_images, encode_texts


def class_embeddings(adapter: ModelAdapter, data: ClassificationData, cache: EmbeddingCache,
                     batch_size: int) -> torch.Tensor:
    """[C, D]: per class the mean of its normalised prompt embeddings, re-normalised."""
    prompts = [p for c in range(len(data.classnames)) for p in data.prompts(c)]
    emb = encode_texts(adapter, prompts, batch_size, cache, part="prompts", desc="prompts")["embeds"]
    emb = emb.view(len(data.classnames), len(data.templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def evaluate(adapter: ModelAdapter, data: ClassificationData, cache: EmbeddingCache, batch_size: int = 64,
             **_: Any) -> Dict[str, Any]:
    classes = class_embeddings(adapter, data, cache, batch_size)
    images = encode_images(adapter, data.load_image, data.image_ids, batch_size, cache)["embeds"]
    out: Dict[str, Any] = classification_metrics(dual_scores(images, classes), data.labels, len(data.classnames))
    out["classes"] = len(data.classnames)
    out["templates"] = len(data.templates)
    return out
