"""Zero-shot classification: Chinese prompt templates averaged per class; top-1, top-5, mean per-class recall."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from ccmb.datasets import ClassificationData
from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.metrics import classification_from_ranks, classification_ranks
from ccmb_bench.protocols import Rules, evaluation_rules
from ccmb_bench.tasks.encode import dual_scores, encode_images, encode_texts


def class_embeddings(adapter: ModelAdapter, data: ClassificationData, cache: EmbeddingCache,
                     batch_size: int) -> torch.Tensor:
    """[C, D]: per class the mean of its normalised prompt embeddings, re-normalised."""
    prompts = [p for c in range(len(data.classnames)) for p in data.prompts(c)]
    emb = encode_texts(adapter, prompts, batch_size, cache, part="prompts", desc="prompts")["embeds"]
    emb = emb.view(len(data.classnames), len(data.templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def evaluate(adapter: ModelAdapter, data: ClassificationData, cache: EmbeddingCache, batch_size: int = 64,
             rules: Optional[Rules] = None, data_format: str = "",
             per_query: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> Dict[str, Any]:
    """``top1``/``top5``/``mean_per_class_recall``; ``rules.ties`` orders tied logits (CLIP_benchmark:
    ``100 * image @ classes`` ranked by ``torch.topk``, top-1 prediction by ``argmax``)."""
    rules, data_format = evaluation_rules(data, rules, data_format)  # default: the dataset's official protocol
    classes = class_embeddings(adapter, data, cache, batch_size)
    images = encode_images(adapter, data.load_image, data.image_ids, batch_size, cache)["embeds"]
    scores = dual_scores(images, classes)
    if rules.ties == "torch-topk":  # CLIP_benchmark's logits (the scale can merge near-equal scores)
        cosine = scores
        scores = lambda a, b: 100.0 * cosine(a, b)  # noqa: E731
    ranks = classification_ranks(scores, data.labels, len(data.classnames), ties=rules.ties)
    out: Dict[str, Any] = classification_from_ranks(ranks)
    out["classes"] = len(data.classnames)
    out["templates"] = len(data.templates)
    if per_query is not None:
        per_query["images"] = {**ranks, "query": np.asarray([str(i) for i in data.image_ids])}
    return out
