"""R2D2 / PRD2 from ``models``: two-stage ranking through the cross encoders (R2D2) or a dual encoder (PRD2).

Loads official ``.pth`` checkpoints, our ``.safetensors``, any shipped config name with ``--checkpoint``, and
trainer outputs (``config.json`` + ``model.safetensors``)."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from ccmb_bench.precheck import find_tokenizer, weights_in  # noqa: F401 (the light rules, shared with precheck)
from ccmb_bench.adapters.base import (
    MissingCheckpointError,
    ModelAdapter,
    ModelLoadError,
    UNREADABLE_CONFIG,
    ModelSpec,
    fingerprint_path,
    folder_config,
    registered,
    registered_location,
)

logger = logging.getLogger(__name__)

KIND = "r2d2"
DIRECTORY = "a trainer output (config.json + model.safetensors)"

_DOWNLOAD = ("https://github.com/yuxie11/R2D2 (README 'Pre-trained models' / 'Fine-tuned models'); "
             "the tokenizer: https://huggingface.co/hfl/chinese-roberta-wwm-ext (vocab.txt)")
_FILES = ("*.pth or model.safetensors", "vocab.txt")
SPECS = tuple(replace(s, download=_DOWNLOAD, files=_FILES) for s in registered(KIND))


class R2D2Adapter(ModelAdapter):
    """R2D2 (two-stage ranking through the cross encoders) or PRD2 (dual encoder) from ``models``."""

    kind = "r2d2"

    def __init__(self, model, tokenizer, name: str, fingerprint: str, device: str = "cpu",
                 hidden_dtype: Optional[Any] = None) -> None:
        import torch

        from models.preprocess import ImageTransform

        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.name = name
        self.fingerprint = fingerprint
        self.device = device
        self.transform = ImageTransform(model.config.image_size)
        self.has_reranker = bool(model.has_cross_encoders)
        self.kind = "r2d2" if self.has_reranker else "prd2"
        self.default_top_k = int(model.config.top_k)
        self.max_len = int(model.config.max_text_len)
        self.hidden_dtype = hidden_dtype or (torch.float16 if device != "cpu" else torch.float32)

    def preprocess(self, images):
        import torch

        return torch.stack([self.transform(im) for im in images])

    def encode_images(self, pixel_values, with_hidden=False):
        import torch

        with torch.no_grad():
            if with_hidden and self.has_reranker:
                e, h = self.model.encode_image(pixel_values.to(self.device), return_hidden=True)
                return {"embeds": e.float().cpu(), "hidden": h.to(self.hidden_dtype).cpu()}
            return {"embeds": self.model.encode_image(pixel_values.to(self.device)).float().cpu()}

    def encode_texts(self, texts, with_hidden=False):
        import torch

        from models.tokenizer import tokenize

        enc = tokenize(self.tokenizer, texts, max_length=self.max_len)
        with torch.no_grad():
            if with_hidden and self.has_reranker:
                e, h = self.model.encode_text(enc["input_ids"], enc["attention_mask"], return_hidden=True)
                return {"embeds": e.float().cpu(), "hidden": h.to(self.hidden_dtype).cpu(),
                        "mask": enc["attention_mask"].cpu()}
            return {"embeds": self.model.encode_text(enc["input_ids"], enc["attention_mask"]).float().cpu()}

    def pair_scores(self, images, texts, image_index, text_index):
        if not self.has_reranker:
            return super().pair_scores(images, texts, image_index, text_index)
        return self.model.pair_match_prob(images["hidden"], texts["hidden"], texts["mask"],
                                          image_index, text_index)

    def rank(self, images, texts, top_k):
        if not self.has_reranker:
            return super().rank(images, texts, top_k)
        # the cosine pre-ranking runs on the model's device; hidden states move there block by block
        return self.model.rank(images["embeds"].to(self.device), images["hidden"], texts["embeds"].to(self.device),
                               texts["hidden"], texts["mask"], top_k=top_k)


def build(config, weights: Path, name: str, device: str, tokenizer: Optional[str], where: Path) -> R2D2Adapter:
    """Load ``weights`` into ``config`` (a config name or a directory/JSON path) with its tokenizer."""
    import models as mdl
    from models.tokenizer import load_tokenizer

    weights = Path(weights)
    if not weights.is_file():
        raise MissingCheckpointError(f"{weights}: checkpoint file not found")
    tok_dir = Path(tokenizer) if tokenizer else find_tokenizer(where, weights.parent)
    if tok_dir is None:
        raise MissingCheckpointError(
            f"no tokenizer for {name}: put vocab.txt (hfl/chinese-roberta-wwm-ext) next to {weights} or pass "
            "--tokenizer PATH")
    try:
        model = mdl.load_model(config, checkpoint=weights, device=device)
    except (MemoryError, KeyboardInterrupt):
        raise
    except mdl.ConfigError as exc:  # a config.json the family cannot build: the message names it and the field
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:  # truncated safetensors, pickle errors, wrong keys: name the file
        logger.debug("loading %s failed", weights, exc_info=True)
        msg = str(exc)
        if str(weights) not in msg:
            msg = f"{weights}: cannot load checkpoint: {type(exc).__name__}: {msg}"
        raise ModelLoadError(msg) from exc
    tok = load_tokenizer(tok_dir, max_length=model.config.max_text_len)
    return R2D2Adapter(model, tok, name, fingerprint_path(weights), device)


def _missing(spec: ModelSpec, where: Path) -> MissingCheckpointError:
    return MissingCheckpointError(
        f"no weights for {spec.name} in {where}: download it from {spec.download}; put the checkpoint (.pth) and "
        f"the tokenizer vocab.txt in {where}/ or pass --checkpoint FILE [--tokenizer DIR]")


def load_registered(spec: ModelSpec, checkpoint: Optional[str], device: str,
                    tokenizer: Optional[str]) -> ModelAdapter:
    """A registered R2D2/PRD2: ``--checkpoint`` (file or folder) or ``$CCMB_HOME/models/<name>/``."""
    where = registered_location(spec, checkpoint)
    weights = where if where.is_file() else (weights_in(where) if where.is_dir() else None)
    if weights is None:
        raise _missing(spec, where)
    return build(spec.config, weights, spec.name, device, tokenizer, where)


def claims_directory(path: Path) -> bool:
    """A folder whose ``config.json`` is ours (no transformers ``model_type``); an unreadable one too, so that
    loading names the broken file."""
    cfg = folder_config(path)
    if cfg is None:
        return False
    return cfg is UNREADABLE_CONFIG or not (isinstance(cfg, dict) and "model_type" in cfg)


def load_directory(path: Path, checkpoint: Optional[str], device: str, tokenizer: Optional[str]) -> ModelAdapter:
    if checkpoint:  # a config folder with a separate checkpoint file
        return build(str(path), Path(checkpoint), path.name, device, tokenizer, path)
    weights = weights_in(path)
    if weights is None:
        raise MissingCheckpointError(f"{path}: no model.safetensors or .pth checkpoint in this directory")
    return build(str(path), weights, path.name, device, tokenizer, path)


def known_names():
    from models.config import list_configs

    return list_configs()


def claims_name(model: str) -> bool:
    """A shipped config name (``r2d2-tiny``...) or a config JSON file."""
    path = Path(model)
    return model in known_names() or (path.is_file() and path.suffix == ".json")


def load_name(model: str, checkpoint: Optional[str], device: str, tokenizer: Optional[str]) -> ModelAdapter:
    if not checkpoint:
        raise MissingCheckpointError(f"config {model!r} needs --checkpoint FILE (an official .pth or a "
                                     f".safetensors)")
    path = Path(model)
    return build(model, Path(checkpoint), path.stem if path.suffix else model, device, tokenizer, Path(checkpoint))
