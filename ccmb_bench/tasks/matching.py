"""Image-text matching: ROC-AUC of the match probability and accuracy at 0.5."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ccmb.datasets import MatchingData
from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.metrics import matching_metrics
from ccmb_bench.tasks.encode import encode_images, encode_texts


def evaluate(adapter: ModelAdapter, data: MatchingData, cache: EmbeddingCache, batch_size: int = 64,
             **_: Any) -> Dict[str, Any]:
    """R2D2: mean of the two cross encoders' match probability; dual encoders: the cosine similarity
    (its AUC is meaningful, its accuracy at 0.5 is only indicative)."""
    hidden = adapter.has_reranker
    texts = sorted(set(data.pair_texts))
    text_index = {t: i for i, t in enumerate(texts)}
    used = sorted(set(data.pair_images))
    img_pos = {img: k for k, img in enumerate(used)}
    images = encode_images(adapter, lambda k: data.load_image(used[k]), [data.image_ids[i] for i in used],
                           batch_size, cache, with_hidden=hidden)
    enc_texts = encode_texts(adapter, texts, batch_size, cache, with_hidden=hidden)
    ii = torch.tensor([img_pos[i] for i in data.pair_images], dtype=torch.long)
    tt = torch.tensor([text_index[t] for t in data.pair_texts], dtype=torch.long)
    scores = adapter.pair_scores(images, enc_texts, ii, tt).float().numpy()
    out: Dict[str, Any] = matching_metrics(scores, data.labels)
    out["score"] = "match-probability" if hidden else "cosine"
    return out
