"""Image-text matching: ROC-AUC of the match probability and accuracy at 0.5.

With cross encoders the hidden states of every image and text are needed. When they fit in
``max_hidden_gb`` they are encoded once (and cached); otherwise the pairs are streamed in chunks sorted by
image (each chunk encodes its images and texts, scores its pairs, and drops the hidden states), so memory
stays bounded on sets like ICM/IQM val with a ViT-L.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ccmb.datasets import MatchingData
from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.metrics import matching_metrics
from ccmb_bench.protocols import Rules, evaluation_rules
from ccmb_bench.tasks.encode import _cat, encode_images, encode_texts
from ccmb_bench.tasks.views import MatchingView, matching_view

logger = logging.getLogger(__name__)


def hidden_bytes(adapter: ModelAdapter, n_images: int, n_texts: int) -> int:
    """Estimated memory of the hidden states of ``n_images`` images and ``n_texts`` texts (0 if no reranker)."""
    cfg = getattr(getattr(adapter, "model", None), "config", None)
    if not adapter.has_reranker or cfg is None:
        return 0
    size = torch.finfo(getattr(adapter, "hidden_dtype", torch.float32)).bits // 8
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    return size * (n_images * tokens * cfg.vision_width + n_texts * cfg.max_text_len * cfg.text_width)


def streamed_scores(adapter: ModelAdapter, data: MatchingData, view: MatchingView, batch_size: int,
                    chunk_pairs: int) -> np.ndarray:
    """Match scores pair chunk by pair chunk (pairs sorted by image), without keeping hidden states."""
    order = np.argsort(np.asarray(view.pair_images), kind="stable")
    scores = np.empty(len(order), dtype=np.float64)
    with tqdm(total=len(order), desc="match pairs", unit="pair", leave=False) as bar:
        for start in range(0, len(order), chunk_pairs):
            sel = order[start:start + chunk_pairs]
            imgs = sorted(set(view.pair_images[k] for k in sel))
            texts = sorted(set(view.pair_texts[k] for k in sel))
            ipos = {img: j for j, img in enumerate(imgs)}
            tpos = {t: j for j, t in enumerate(texts)}
            enc_i = [adapter.encode_images(adapter.preprocess([view.load_image(i) for i in imgs[b:b + batch_size]]),
                                           with_hidden=True) for b in range(0, len(imgs), batch_size)]
            enc_t = [adapter.encode_texts(texts[b:b + batch_size], with_hidden=True)
                     for b in range(0, len(texts), batch_size)]
            ii = torch.tensor([ipos[view.pair_images[k]] for k in sel], dtype=torch.long)
            tt = torch.tensor([tpos[view.pair_texts[k]] for k in sel], dtype=torch.long)
            scores[sel] = adapter.pair_scores(_cat(enc_i), _cat(enc_t), ii, tt).double().numpy()
            bar.update(len(sel))
    return scores


def evaluate(adapter: ModelAdapter, data: MatchingData, cache: EmbeddingCache, batch_size: int = 64,
             max_hidden_gb: float = 8.0, chunk_pairs: int = 4096, rules: Optional[Rules] = None, data_format: str = "",
             per_query: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> Dict[str, Any]:
    """R2D2: mean of the two cross encoders' match probability; dual encoders: the cosine similarity
    (its AUC is meaningful, its accuracy at 0.5 is only indicative). ``rules`` (the protocol) decides whether
    every annotation line is a pair or repeated pairs are dropped; ``per_query`` receives scores and labels."""
    rules, data_format = evaluation_rules(data, rules, data_format)  # default: the dataset's official protocol
    view = matching_view(data, rules, data_format)
    hidden = adapter.has_reranker
    texts = sorted(set(view.pair_texts))
    used = sorted(set(view.pair_images))
    need = hidden_bytes(adapter, len(used), len(texts))
    if need > max_hidden_gb * 2 ** 30:
        logger.info("%s: hidden states would take %.1f GB > %.1f GB; streaming pairs in chunks of %d", data.name,
                 need / 2 ** 30, max_hidden_gb, chunk_pairs)
        scores = streamed_scores(adapter, data, view, batch_size, chunk_pairs)
        mode = "streamed"
    else:
        text_index = {t: i for i, t in enumerate(texts)}
        img_pos = {img: k for k, img in enumerate(used)}
        images = encode_images(adapter, lambda k: view.load_image(used[k]), [view.image_ids[i] for i in used],
                               batch_size, cache, with_hidden=hidden)
        enc_texts = encode_texts(adapter, texts, batch_size, cache, with_hidden=hidden)
        ii = torch.tensor([img_pos[i] for i in view.pair_images], dtype=torch.long)
        tt = torch.tensor([text_index[t] for t in view.pair_texts], dtype=torch.long)
        scores = adapter.pair_scores(images, enc_texts, ii, tt).double().numpy()
        mode = "cached"
    out: Dict[str, Any] = matching_metrics(scores, view.labels)
    out["score"] = "match-probability" if hidden else "cosine"
    out["hidden_states"] = mode if hidden else "none"
    if per_query is not None:
        per_query["pairs"] = {"score": np.asarray(scores, dtype=np.float64),
                              "label": np.asarray(view.labels, dtype=np.int8),
                              "query": np.asarray(view.pair_ids)}
    return out
