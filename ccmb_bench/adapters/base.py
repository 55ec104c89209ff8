"""The adapter interface every benchmarked model offers, the errors of model resolution, and checkpoint
fingerprints."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image


class UnknownModelError(ValueError):
    """An unknown model name (the message lists the known ones)."""


class MissingCheckpointError(FileNotFoundError):
    """Weights are not where we looked (the message says where to download them and where to put them)."""


class ModelLoadError(ValueError):
    """Weights were found but cannot be loaded (truncated or foreign file...); the message names the file."""


def ccmb_home() -> Path:
    return Path(os.environ.get("CCMB_HOME") or Path.home() / ".cache" / "ccmb")


def registered_location(spec: "ModelSpec", checkpoint: Optional[str]) -> Path:
    """Where a registered model's weights are looked for: ``--checkpoint``, else ``$CCMB_HOME/models/<name>/``."""
    return Path(checkpoint) if checkpoint else ccmb_home() / "models" / spec.name


#: :func:`folder_config` of a ``config.json`` that exists but does not parse
UNREADABLE_CONFIG = object()


def folder_config(path: Path) -> Any:
    """The parsed ``config.json`` of a model folder: None when there is none, :data:`UNREADABLE_CONFIG` when
    it cannot be read or parsed (the families decide whether to claim such a folder)."""
    import json

    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:  # bounded: a huge or deeply nested file is unreadable, not a MemoryError or RecursionError
        if cfg.stat().st_size > 1 << 20:
            return UNREADABLE_CONFIG
        return json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return UNREADABLE_CONFIG


def fingerprint_path(path: Optional[Path]) -> str:
    """Stable short fingerprint of a checkpoint file or directory: sha256 over names, sizes and the first
    and last MiB of each weight file (cheap for multi-GB files, changes when the weights change)."""
    if path is None:
        return "random"
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(2 ** 20))
            if size > 2 ** 21:
                fh.seek(-2 ** 20, os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its family (``kind``, a key of the loader table) and where its weights come from."""

    name: str
    kind: str
    description: str
    download: str = ""
    config: str = ""  # R2D2 config name
    hub: str = ""  # Hugging Face hub name
    files: Tuple[str, ...] = field(default_factory=tuple)


class ModelAdapter:
    """The interface every benchmarked model offers."""

    name: str = ""
    kind: str = ""
    fingerprint: str = "random"
    has_reranker: bool = False
    can_generate: bool = False
    default_top_k: int = 128

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def encode_images(self, pixel_values: torch.Tensor, with_hidden: bool = False) -> Dict[str, torch.Tensor]:
        """``{"embeds": [N,D]}`` (+ ``"hidden"`` when ``with_hidden`` and the model re-ranks), on the CPU."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str], with_hidden: bool = False) -> Dict[str, torch.Tensor]:
        """``{"embeds": [N,D]}`` (+ ``"hidden"``, ``"mask"``), on the CPU."""
        raise NotImplementedError

    def pair_scores(self, images: Dict[str, torch.Tensor], texts: Dict[str, torch.Tensor],
                    image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """Match score of each (image, text) pair: the cross encoders' probability, else the cosine."""
        return (images["embeds"][image_index] * texts["embeds"][text_index]).sum(-1)

    def rank(self, images: Dict[str, torch.Tensor], texts: Dict[str, torch.Tensor],
             top_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{self.name} has no re-ranker")

    def generate_captions(self, pixel_values: torch.Tensor) -> List[str]:
        raise NotImplementedError(f"{self.name} does not generate captions")

    def describe(self) -> Dict[str, Any]:
        return {"model": self.name, "kind": self.kind, "fingerprint": self.fingerprint,
                "reranker": self.has_reranker}
