"""A Taiyi-style pair: the image tower (+ visual projection) of a transformers ``CLIPModel`` and a separate text
tower — a Chinese BERT/RoBERTa ``...ForSequenceClassification`` whose classifier head is the text projection
(its ``logits`` are the text embedding), as Taiyi-CLIP (IDEA-CCNL) is used.

One flat folder holds both (what ``ccmb fetch model taiyi-clip-roberta-large-326m`` writes):

- the text tower as ``save_pretrained`` writes it: ``config.json``, ``model.safetensors``/``pytorch_model.bin``,
  the tokenizer (``vocab.txt``, ``tokenizer_config.json`` ...);
- the CLIP model whose image tower is used: ``vision_config.json`` (its ``config.json``), its weights as
  ``model.vision.safetensors`` (or ``pytorch_model.vision.bin``: the transformers ``variant="vision"`` name),
  and its ``preprocessor_config.json`` (the CLIP image processor).

As the reference code does: images through the CLIP image processor and ``get_image_features`` (only the image
tower and the visual projection are loaded); texts through the BERT tokenizer and the classifier's logits.
One departure, on purpose: Taiyi's model card calls the text encoder with ``input_ids`` only, so in a padded
batch the padding is attended and a text's embedding depends on its batch; ccmb passes the attention mask,
which gives every text the embedding the card's code gives it alone (the parity test checks exactly that).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from ccmb_bench.adapters.base import (
    MissingCheckpointError,
    ModelAdapter,
    ModelLoadError,
    ModelSpec,
    fingerprint_path,
    folder_config,
    registered,
    registered_location,
)
from ccmb_bench.adapters.hf import HFDualEncoderAdapter, TextRecipe, context_limit, features

logger = logging.getLogger(__name__)

KIND = "pair"
DIRECTORY = ("a Taiyi-style pair folder (the text tower's config.json + vision_config.json and "
             "model.vision.safetensors of a CLIPModel)")
SPECS = registered(KIND)
VISION_CONFIG = "vision_config.json"
VISION_VARIANT = "vision"


class _ImageTower:
    """``get_image_features`` of a ``CLIPVisionModelWithProjection`` (= the CLIP model's)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_image_features(self, pixel_values):
        return self.model(pixel_values=pixel_values).image_embeds


class PairAdapter(HFDualEncoderAdapter):
    """CLIP image tower + sequence-classification text tower (logits = text embedding)."""

    kind = KIND

    def __init__(self, vision: Any, text: Any, tokenizer: Any, image_processor: Any, name: str, fingerprint: str,
                 device: str = "cpu") -> None:
        self.vision = vision.to(device).eval()
        self.text = text.to(device).eval()
        self.tokenizer, self.image_processor, self.transform = tokenizer, image_processor, None
        self.name, self.fingerprint, self.device = name, fingerprint, device
        self.model = _ImageTower(self.vision)
        self.padding, self.pad_to = "longest", None
        self.model_max_len = self.max_len = context_limit(tokenizer, text.config)
        self.text_inputs = ("input_ids", "attention_mask", "token_type_ids")

    def text_features(self, enc):
        kwargs = {k: enc[k].to(self.device) for k in self.text_inputs if k in enc}
        return features(self.text(**kwargs).logits)


def _weights(path: Path) -> Optional[Path]:
    for name in (f"model.{VISION_VARIANT}.safetensors", f"pytorch_model.{VISION_VARIANT}.bin"):
        if (path / name).is_file():
            return path / name
    return None


def build(source: Path, name: str, device: str, fingerprint: Optional[str] = None) -> PairAdapter:
    import torch
    from transformers import (AutoImageProcessor, AutoModelForSequenceClassification, AutoTokenizer, CLIPConfig,
                              CLIPVisionModelWithProjection)

    if _weights(source) is None:
        raise MissingCheckpointError(f"{source}: no model.{VISION_VARIANT}.safetensors (the CLIP image tower's "
                                     "weights) in this folder")
    try:
        clip_config = CLIPConfig.from_json_file(str(source / VISION_CONFIG))
        vision_config = clip_config.vision_config
        vision_config.projection_dim = clip_config.projection_dim
        vision = CLIPVisionModelWithProjection.from_pretrained(str(source), config=vision_config,
                                                               variant=VISION_VARIANT, dtype=torch.float32)
        text = AutoModelForSequenceClassification.from_pretrained(str(source), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        processor = AutoImageProcessor.from_pretrained(str(source))
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # truncated weights, broken configs: name the folder
        logger.debug("loading %s failed", source, exc_info=True)
        raise ModelLoadError(f"{source}: cannot load the pair model: {type(exc).__name__}: {exc}") from exc
    return PairAdapter(vision, text, tokenizer, processor, name, fingerprint or fingerprint_path(source), device)


def _missing(spec: ModelSpec, where: Path) -> MissingCheckpointError:
    vision = spec.option("vision_hub", "")
    return MissingCheckpointError(
        f"no weights for {spec.name} in {where}: `ccmb fetch model {spec.name}` puts the text tower "
        f"(https://huggingface.co/{spec.hub}) and the CLIP image tower (https://huggingface.co/{vision}: its "
        f"config.json as {VISION_CONFIG}, model.safetensors as model.{VISION_VARIANT}.safetensors, "
        f"preprocessor_config.json) in {where}; or put them there by hand, or pass --checkpoint DIR")


def load_registered(spec: ModelSpec, checkpoint: Optional[str], device: str,
                    tokenizer: Optional[str]) -> ModelAdapter:
    where = registered_location(spec, checkpoint)
    if not claims_directory(where) or _weights(where) is None:
        raise _missing(spec, where)
    return build(where, spec.name, device)


def claims_directory(path: Path) -> bool:
    return (path / VISION_CONFIG).is_file() and isinstance(folder_config(path), dict)


def load_directory(path: Path, checkpoint: Optional[str], device: str, tokenizer: Optional[str]) -> ModelAdapter:
    if checkpoint:
        raise ModelLoadError(f"{path}: a pair folder holds its own weights; drop --checkpoint {checkpoint}")
    return build(path, path.name, device)


__all__ = ["KIND", "DIRECTORY", "SPECS", "PairAdapter", "TextRecipe", "load_registered", "claims_directory",
           "load_directory"]
