"""Batched, cached encoding of a dataset's images and texts through an adapter (with progress bars)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache, digest

logger = logging.getLogger(__name__)


def _cat(parts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if tensors[0].dim() >= 2 and key in ("hidden", "mask"):
            length = max(t.shape[1] for t in tensors)
            pad = [(0, 0, 0, length - t.shape[1]) if t.dim() == 3 else (0, length - t.shape[1]) for t in tensors]
            tensors = [torch.nn.functional.pad(t, p) for t, p in zip(tensors, pad)]
        out[key] = torch.cat(tensors)
    return out


def encode_images(adapter: ModelAdapter, load: Callable[[int], Image.Image], ids: Sequence[str],
                  batch_size: int, cache: EmbeddingCache, part: str = "images",
                  with_hidden: bool = False, desc: str = "images") -> Dict[str, torch.Tensor]:
    """Encode images ``load(i)`` for ``i < len(ids)`` (``ids`` name them for the cache key)."""
    key = f"{digest(list(ids))}:{len(ids)}:{int(with_hidden)}"

    def compute() -> Dict[str, torch.Tensor]:
        parts = []
        with tqdm(total=len(ids), desc=f"encode {desc}", unit="img", leave=False) as bar:
            for start in range(0, len(ids), batch_size):
                idx = range(start, min(len(ids), start + batch_size))
                pixels = adapter.preprocess([load(i) for i in idx])
                parts.append(adapter.encode_images(pixels, with_hidden=with_hidden))
                bar.update(len(idx))
        if not parts:
            raise ValueError(f"no {desc} to encode")
        return _cat(parts)

    return cache.get(part + ("+hidden" if with_hidden else ""), key, compute)


def encode_texts(adapter: ModelAdapter, texts: Sequence[str], batch_size: int, cache: EmbeddingCache,
                 part: str = "texts", with_hidden: bool = False, desc: str = "texts") -> Dict[str, torch.Tensor]:
    """Encode ``texts``; with hidden states for re-ranking when ``with_hidden``.

    Texts are batched longest first (a stable sort by length), so a batch padded to its longest text carries
    little padding, and the results are put back in the input order: each text's embedding is the one it gets
    alone or in any batch (padding is masked), up to float rounding."""
    key = f"{digest(list(texts))}:{len(texts)}:{int(with_hidden)}"

    def compute() -> Dict[str, torch.Tensor]:
        parts = []
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with tqdm(total=len(texts), desc=f"encode {desc}", unit="text", leave=False) as bar:
            for start in range(0, len(texts), batch_size):
                chunk = [texts[i] for i in order[start:start + batch_size]]
                parts.append(adapter.encode_texts(chunk, with_hidden=with_hidden))
                bar.update(len(chunk))
        if not parts:
            raise ValueError(f"no {desc} to encode")
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(len(order))
        return {k: v[inverse] for k, v in _cat(parts).items()}

    return cache.get(part + ("+hidden" if with_hidden else ""), key, compute)


def dual_scores(a: torch.Tensor, b: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """``block(start, stop)`` of the cosine matrix ``a @ b.T`` (never the whole matrix at once)."""
    return lambda start, stop: a[start:stop] @ b.T


def prefixed(metrics: Dict[str, float], prefix: str) -> Dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def opt_int(value: Optional[object]) -> Optional[int]:
    return None if value in (None, "") else int(value)  # type: ignore[arg-type]


@contextmanager
def context_length(adapter: ModelAdapter, tokens: Optional[int]) -> Iterator[bool]:
    """Cap the adapter's text length at ``tokens`` (a protocol's context length) for the duration; yields
    whether the cap changed anything (adapters without ``max_len`` are left alone)."""
    current = getattr(adapter, "max_len", None)
    if not tokens or current is None or current <= tokens:
        yield False
        return
    adapter.max_len = tokens
    try:
        yield True
    finally:
        adapter.max_len = current
