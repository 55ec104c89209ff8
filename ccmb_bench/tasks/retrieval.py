"""Image-text retrieval: dual-encoder ranking, and R2D2's official two stages (pre-rank top-k, re-rank)."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import numpy as np
import torch

from ccmb.datasets import RetrievalData
from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.metrics import DEFAULT_KS, recall_metrics, retrieval_ranks
from ccmb_bench.protocols import Rules, evaluation_rules
from ccmb_bench.tasks.encode import context_length, dual_scores, encode_images, encode_texts, prefixed
from ccmb_bench.tasks.views import RetrievalView, retrieval_view

logger = logging.getLogger(__name__)


def _expand(enc: Dict[str, torch.Tensor], index: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {k: v.index_select(0, index) for k, v in enc.items()}


def _rank_rules(rules: Rules, view: RetrievalView) -> Dict[str, Any]:
    return {"ties": rules.ties, "order_keys": view.order_keys, "no_positive": rules.no_positive,
            "exact_below": max(DEFAULT_KS)}


def evaluate(adapter: ModelAdapter, data: RetrievalData, cache: EmbeddingCache, batch_size: int = 64,
             top_k: Optional[int] = None, rerank: bool = True, rules: Optional[Rules] = None, data_format: str = "",
             per_query: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> Dict[str, Any]:
    """R@1/5/10 per direction (``i2t_R@K``, ``t2i_R@K``), per-direction means and ``MR`` under ``rules`` (the
    protocol; default: the official one of the registered dataset ``data.name``, else strict; ``data_format`` is
    the registry format, for per-line reading). With a re-ranker the headline
    numbers are the two-stage ones (``top_k`` candidates per query, default the model's) and the dual-encoder
    stage is reported as ``prerank_*``. ``per_query`` (a dict) receives each direction's ranks and query ids."""
    rules, data_format = evaluation_rules(data, rules, data_format)  # default: the dataset's official protocol
    use_rerank = rerank and adapter.has_reranker
    view = retrieval_view(data, rules, data_format)
    images = encode_images(adapter, view.load_image, view.image_ids, batch_size, cache, with_hidden=use_rerank)
    with context_length(adapter, rules.context_length) as capped:
        part = "texts" if view.unique_texts == data.texts and not capped else "texts-official"  # cache keeps both
        texts = encode_texts(adapter, view.unique_texts, batch_size, cache, part=part, with_hidden=use_rerank)
    if len(view.unique_texts) != view.num_texts:
        texts = _expand(texts, torch.as_tensor(view.text_index, dtype=torch.long))
    args = (view.image_to_texts, view.text_to_images, data.directions)
    how = _rank_rules(rules, view)
    dual_ranks = retrieval_ranks(dual_scores(images["embeds"], texts["embeds"]),
                                 dual_scores(texts["embeds"], images["embeds"]), *args, **how)
    out: Dict[str, Any] = {"images": len(view.image_ids), "texts": view.num_texts,
                           "directions": "+".join(data.directions)}
    if capped:
        out["context_length"] = rules.context_length
    if not use_rerank:
        ranks = dual_ranks
        out.update(recall_metrics(ranks))
        out["ranking"] = "dual-encoder"
    else:
        k = int(top_k or adapter.default_top_k)
        i2t, t2i = adapter.rank(images, texts, top_k=k)
        ranks = retrieval_ranks(i2t, t2i, *args, **how)
        out.update(recall_metrics(ranks))
        out.update(prefixed({key: v for key, v in recall_metrics(dual_ranks).items() if "queries" not in key},
                            "prerank_"))
        out["ranking"] = "two-stage"
        out["top_k"] = k
    if per_query is not None:
        ids = {"i2t": view.image_ids, "t2i": view.text_ids}
        for d, r in ranks.items():
            per_query[d] = {"rank": r, "query": np.asarray([str(x) for x in ids[d]])}
    return out
