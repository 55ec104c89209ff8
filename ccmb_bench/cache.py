"""Embedding cache: one safetensors file per (model, checkpoint fingerprint, dataset, split, part).

``<output>/cache/<model>/<fingerprint>/<dataset>/<split>/<part>.safetensors``; written atomically (temp +
rename), so concurrent runs never see a half-written file; a metadata field records what was encoded (count
and a digest of the inputs) and a mismatch makes the entry stale.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

from ccmb.atomic import commit, temp_path_for

logger = logging.getLogger(__name__)


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part) or "_"


def digest(items: Sequence[str]) -> str:
    """sha256 (16 hex) of a list of strings (texts or image ids) identifying what was encoded."""
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class EmbeddingCache:
    """Get-or-compute tensors by key under ``root`` (``root=None`` disables caching)."""

    def __init__(self, root: Optional[Path], model: str, fingerprint: str, dataset: str, split: str) -> None:
        self.dir = (Path(root) / _safe(model) / _safe(fingerprint) / _safe(dataset) / _safe(split)
                    if root is not None else None)
        self.hits = 0
        self.misses = 0

    def path(self, part: str) -> Optional[Path]:
        return self.dir / f"{_safe(part)}.safetensors" if self.dir is not None else None

    def load(self, part: str, key: str) -> Optional[Dict[str, torch.Tensor]]:
        from safetensors import safe_open

        path = self.path(part)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("key") != key:
                    logger.info("cache %s is stale (different inputs); recomputing", path)
                    return None
                return {name: fh.get_tensor(name) for name in fh.keys()}
        except Exception as exc:  # a corrupt file is recomputed, never trusted
            logger.warning("cache %s unreadable (%s); recomputing", path, exc)
            return None

    def save(self, part: str, key: str, tensors: Dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self.path(part)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(path)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": key})
            commit(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, part: str, key: str, compute: Callable[[], Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        got = self.load(part, key)
        if got is not None:
            self.hits += 1
            logger.info("cache hit %s", self.path(part))
            return got
        self.misses += 1
        out = compute()
        self.save(part, key, out)
        return out
