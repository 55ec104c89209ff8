"""Image-text retrieval: dual-encoder ranking, and R2D2's official two stages (pre-rank top-k, re-rank)."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from ccmb.datasets import RetrievalData
from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.metrics import retrieval_metrics
from ccmb_bench.tasks.encode import dual_scores, encode_images, encode_texts, prefixed

log = logging.getLogger(__name__)

# candidates re-ranked per query in the official evaluation (others: the model's config top_k)
OFFICIAL_TOP_K = {"flickr30k-cna": 128, "icr": 64, "iqr": 64}


def evaluate(adapter: ModelAdapter, data: RetrievalData, cache: EmbeddingCache, batch_size: int = 64,
             top_k: Optional[int] = None, rerank: bool = True, **_: Any) -> Dict[str, Any]:
    """R@1/5/10 per direction (``i2t_R@K``, ``t2i_R@K``), per-direction means and ``MR``. With a re-ranker,
    the headline numbers are the two-stage ones and the dual-encoder stage is reported as ``prerank_*``."""
    use_rerank = rerank and adapter.has_reranker
    images = encode_images(adapter, data.load_image, data.image_ids, batch_size, cache, with_hidden=use_rerank)
    texts = encode_texts(adapter, data.texts, batch_size, cache, with_hidden=use_rerank)
    args = (data.image_to_texts, data.text_to_images, data.directions)
    dual = retrieval_metrics(dual_scores(images["embeds"], texts["embeds"]),
                             dual_scores(texts["embeds"], images["embeds"]), *args)
    out: Dict[str, Any] = {"images": data.num_images, "texts": data.num_texts,
                           "directions": "+".join(data.directions)}
    if not use_rerank:
        out.update(dual)
        out["ranking"] = "dual-encoder"
        return out
    k = int(top_k or OFFICIAL_TOP_K.get(data.name, adapter.default_top_k))
    i2t, t2i = adapter.rank(images, texts, top_k=k)
    out.update(retrieval_metrics(i2t, t2i, *args))
    out.update(prefixed({key: v for key, v in dual.items() if "queries" not in key}, "prerank_"))
    out["ranking"] = "two-stage"
    out["top_k"] = k
    return out
