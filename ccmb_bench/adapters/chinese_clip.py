"""transformers' ``ChineseCLIPModel`` with its tokenizer and image processor (dual encoder)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from ccmb_bench.adapters.base import (
    MissingCheckpointError,
    ModelAdapter,
    ModelLoadError,
    ModelSpec,
    fingerprint_path,
    folder_config,
    registered_location,
)

logger = logging.getLogger(__name__)

KIND = "chinese-clip"
DIRECTORY = 'a saved ChineseCLIPModel (config.json with "model_type": "chinese_clip")'

_DOWNLOAD = "https://huggingface.co/{hub} (or https://github.com/OFA-Sys/Chinese-CLIP)"
SPECS = tuple(
    ModelSpec(name, KIND, description, _DOWNLOAD.format(hub=hub), hub=hub)
    for name, description, hub in [
        ("chinese-clip-vit-b16", "Chinese-CLIP ViT-B/16", "OFA-Sys/chinese-clip-vit-base-patch16"),
        ("chinese-clip-vit-l14", "Chinese-CLIP ViT-L/14", "OFA-Sys/chinese-clip-vit-large-patch14"),
        ("chinese-clip-vit-l14-336", "Chinese-CLIP ViT-L/14 at 336 px", "OFA-Sys/chinese-clip-vit-large-patch14-336px"),
        ("chinese-clip-vit-h14", "Chinese-CLIP ViT-H/14", "OFA-Sys/chinese-clip-vit-huge-patch14"),
    ])


class ChineseCLIPAdapter(ModelAdapter):
    """transformers' ``ChineseCLIPModel`` with its tokenizer and image processor (dual encoder)."""

    kind = KIND

    def __init__(self, source: str, name: str, fingerprint: str, device: str = "cpu") -> None:
        from transformers import BertTokenizerFast, ChineseCLIPModel

        self.model = ChineseCLIPModel.from_pretrained(source).to(device).eval()
        self.tokenizer = BertTokenizerFast.from_pretrained(source)
        self.name, self.fingerprint, self.device = name, fingerprint, device
        size = int(self.model.config.vision_config.image_size)
        self.processor = None
        if Path(source, "preprocessor_config.json").is_file() or not Path(source).exists():
            try:
                from transformers import ChineseCLIPImageProcessor

                self.processor = ChineseCLIPImageProcessor.from_pretrained(source)
            except Exception as exc:  # a hub name without a processor, or an incompatible file
                logger.warning("%s: no usable image processor (%s); using CLIP resize/crop at %d px", source, exc, size)
        if self.processor is None:
            from models.preprocess import ImageTransform

            self.transform = ImageTransform(size)
        self.max_len = min(52, int(self.model.config.text_config.max_position_embeddings))

    def preprocess(self, images):
        if self.processor is not None:
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return torch.stack([self.transform(im) for im in images])

    @staticmethod
    def _features(out) -> torch.Tensor:
        """transformers 4 returns a tensor, 5 may return an output object (pooler_output = projected)."""
        if isinstance(out, torch.Tensor):
            return out
        for attr in ("text_embeds", "image_embeds", "pooler_output"):
            v = getattr(out, attr, None)
            if isinstance(v, torch.Tensor):
                return v
        raise TypeError(f"cannot read features from {type(out).__name__}")

    @torch.no_grad()
    def encode_images(self, pixel_values, with_hidden=False):
        f = self._features(self.model.get_image_features(pixel_values=pixel_values.to(self.device)))
        return {"embeds": torch.nn.functional.normalize(f.float(), dim=-1).cpu()}

    @torch.no_grad()
    def encode_texts(self, texts, with_hidden=False):
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        kwargs = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask",
                                                                         "token_type_ids")}
        f = self._features(self.model.get_text_features(**kwargs))
        return {"embeds": torch.nn.functional.normalize(f.float(), dim=-1).cpu()}


def _load(path: Path, name: str, device: str) -> ChineseCLIPAdapter:
    fingerprint = fingerprint_path(path)
    try:
        return ChineseCLIPAdapter(str(path), name, fingerprint, device)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # truncated weights, broken config: name the folder
        logger.debug("loading %s failed", path, exc_info=True)
        raise ModelLoadError(f"{path}: cannot load the Chinese-CLIP model: {type(exc).__name__}: {exc}") from exc


def _missing(spec: ModelSpec, where: Path) -> MissingCheckpointError:
    return MissingCheckpointError(
        f"no weights for {spec.name} in {where}: download {spec.download} (e.g. `huggingface-cli download "
        f"{spec.hub} --local-dir {where}`) and pass --checkpoint {where}, or put it in {where}")


def load_registered(spec: ModelSpec, checkpoint: Optional[str], device: str,
                    tokenizer: Optional[str]) -> ModelAdapter:
    """``--checkpoint DIR``, ``$CCMB_HOME/models/<name>/``, else the hub name if the Hugging Face cache has it."""
    where = registered_location(spec, checkpoint)
    if where.is_dir() and (where / "config.json").is_file():
        return _load(where, spec.name, device)
    if checkpoint:
        raise _missing(spec, where)
    try:  # the hub name (works when the Hugging Face cache has it)
        return ChineseCLIPAdapter(spec.hub, spec.name, f"hub:{spec.hub}", device)
    except Exception as exc:
        raise _missing(spec, where) from exc


def claims_directory(path: Path) -> bool:
    cfg = folder_config(path)
    return isinstance(cfg, dict) and cfg.get("model_type") == "chinese_clip"


def load_directory(path: Path, checkpoint: Optional[str], device: str, tokenizer: Optional[str]) -> ModelAdapter:
    if checkpoint:
        raise ModelLoadError(f"{path}: a saved Chinese-CLIP folder holds its own weights; drop --checkpoint "
                             f"{checkpoint}")
    return _load(path, path.name, device)
