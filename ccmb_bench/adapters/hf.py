"""transformers dual encoders: one adapter over a model's own ``get_image_features``/``get_text_features``, its
own image processor and tokenizer, and the text recipe of its family (padding, context length).

A family module (``clip``, ``altclip``, ``siglip``, ``chinese_clip``) is an :class:`HFFamily` — the model classes
it claims by ``config.json`` ``model_type`` and its :class:`TextRecipe` — exposed as the module functions the
registry expects (``load_registered``, ``claims_directory``, ``load_directory``).

What "as its library does" means here, per step:
- images: the checkpoint's processor (``AutoProcessor``, whose call-time defaults apply; else its
  ``AutoImageProcessor``): resize, crop, rescale, normalise (the PIL backend when torchvision is absent, as
  transformers itself falls back), its steps done on the whole batch where that is shown to give the processor's
  own bits (:mod:`ccmb_bench.adapters.pixels`);
- texts: the checkpoint's tokenizer (lower-casing and cleaning are the tokenizer's), truncated at the model's
  context length, padded as the family's reference usage pads (``longest`` for CLIP-style models whose pooled
  token does not see the padding; ``max_length`` for SigLIP, which was trained on fixed-length padded text and
  pools the last position); the tokenizer's outputs go to ``get_text_features`` as they are;
- features: the projected embeddings (transformers 5 returns an output object whose ``pooler_output`` holds
  them), L2-normalised in float32.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

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

logger = logging.getLogger(__name__)

#: inputs a text tower may take from its tokenizer
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass(frozen=True)
class TextRecipe:
    """How a family tokenises: ``padding`` ``"longest"`` or ``"max_length"`` (to ``pad_to``, default the model's
    context length); ``max_len`` a fixed context length (Chinese-CLIP's 52) instead of the model's."""

    padding: str = "longest"
    pad_to: Optional[int] = None
    max_len: Optional[int] = None
    position_offset: int = 0  # RoBERTa-style position ids start after the padding index (XLM-R: 2)


def features(out: Any) -> Any:
    """The projected embeddings from ``get_*_features``: a tensor (transformers 4) or an output object whose
    ``text_embeds``/``image_embeds``/``pooler_output`` holds them (transformers 5)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for attr in ("text_embeds", "image_embeds", "pooler_output"):
        v = getattr(out, attr, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"cannot read features from {type(out).__name__}")


def accepted_inputs(func: Callable, candidates: Sequence[str] = TEXT_INPUTS) -> tuple:
    """The ``candidates`` that ``func`` names as parameters."""
    params = inspect.signature(func).parameters
    return tuple(c for c in candidates if c in params)


def context_limit(tokenizer: Any, text_config: Any, offset: int = 0) -> int:
    """The model's context length: the tokenizer's ``model_max_length`` capped by the text tower's position
    embeddings (less ``offset`` reserved positions)."""
    limit = int(getattr(text_config, "max_position_embeddings", 0) or 0) - offset
    tok = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok < 1_000_000:
        limit = min(limit, tok) if limit > 0 else tok
    return limit if limit > 0 else 512


def rgb_already(processor: Any, images: Sequence[Any]) -> Dict[str, bool]:
    """``{"do_convert_rgb": False}`` when every image is already RGB and the processor takes that option (its
    conversion would only copy each image again; the pixels are identical), else ``{}``."""
    image_processor = getattr(processor, "image_processor", processor)
    names = getattr(image_processor, "_valid_kwargs_names", None)
    if names is None:
        names = getattr(getattr(image_processor, "valid_kwargs", None), "__annotations__", {})
    if "do_convert_rgb" in names and all(getattr(im, "mode", None) == "RGB" for im in images):
        return {"do_convert_rgb": False}
    return {}


class HFDualEncoderAdapter(ModelAdapter):
    """A transformers model with ``get_image_features``/``get_text_features``, its image processor and tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, name: str, fingerprint: str,
                 device: str = "cpu", kind: str = "", recipe: TextRecipe = TextRecipe(),
                 transform: Optional[Callable] = None) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.transform = transform  # a fallback when a folder has no image processor (old Chinese-CLIP saves)
        self.name, self.fingerprint, self.device, self.kind = name, fingerprint, device, kind
        self.padding = recipe.padding
        text_config = getattr(model.config, "text_config", model.config)
        self.model_max_len = recipe.max_len or context_limit(tokenizer, text_config, recipe.position_offset)
        self.max_len = self.model_max_len
        self.pad_to = recipe.pad_to or self.model_max_len
        self.text_inputs = accepted_inputs(model.get_text_features)

    # -- images
    def preprocess(self, images):
        import torch

        if self.image_processor is None:
            return torch.stack([self.transform(im) for im in images])
        images = list(images)
        batched = self.batched_pixels()
        pixels = batched(images) if batched is not None else None
        return pixels if pixels is not None else self.processor_pixels(images)

    def processor_pixels(self, images):
        """The processor's own call on ``images``."""
        out = self.image_processor(images=images, return_tensors="pt", **rgb_already(self.image_processor, images))
        return out["pixel_values"] if len(out) == 1 else dict(out)  # NaFlex: masks and shapes travel along

    def batched_pixels(self):
        """The processor's steps on a whole batch (:mod:`ccmb_bench.adapters.pixels`), where they are shown to be
        bit-for-bit its own on probe images (checked once, at the first batch); else ``None``."""
        if not hasattr(self, "_batched_pixels"):
            from ccmb_bench.adapters.pixels import batched_pixels

            self._batched_pixels = batched_pixels(self.image_processor, self.processor_pixels)
            logger.debug("%s: batched preprocessing %s", self.name, "on" if self._batched_pixels else "off")
        return self._batched_pixels

    def encode_images(self, pixel_values, with_hidden=False):
        import torch

        inputs = pixel_values if isinstance(pixel_values, Mapping) else {"pixel_values": pixel_values}
        with torch.inference_mode():
            f = features(self.model.get_image_features(**{k: v.to(self.device) for k, v in inputs.items()}))
        return {"embeds": torch.nn.functional.normalize(f.float(), dim=-1).cpu()}

    # -- texts
    def tokenize(self, texts: Sequence[str]) -> Dict[str, Any]:
        """The tokenizer's batch for ``texts``: truncated at ``max_len`` (lowered by a protocol's context length),
        padded as the family pads (``max_length`` keeps the model's own length, e.g. SigLIP's 64)."""
        texts = list(texts)
        if self.padding == "max_length":
            if self.max_len >= self.pad_to:
                return self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.pad_to,
                                      return_tensors="pt")
            enc = self.tokenizer(texts, truncation=True, max_length=self.max_len)
            return self.tokenizer.pad(enc, padding="max_length", max_length=self.pad_to, return_tensors="pt")
        return self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_len,
                              return_tensors="pt")

    def text_features(self, enc: Mapping[str, Any]) -> Any:
        kwargs = {k: enc[k].to(self.device) for k in self.text_inputs if k in enc}
        return features(self.model.get_text_features(**kwargs))

    def encode_texts(self, texts, with_hidden=False):
        import torch

        unique = list(dict.fromkeys(texts))  # a repeated text is encoded once
        with torch.inference_mode():
            f = self.text_features(self.tokenize(unique))
        emb = torch.nn.functional.normalize(f.float(), dim=-1).cpu()
        if len(unique) != len(texts):
            where = {t: i for i, t in enumerate(unique)}
            emb = emb[torch.as_tensor([where[t] for t in texts])]
        return {"embeds": emb}

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "context_length": self.model_max_len, "padding": self.padding}


def load_image_processor(source: str) -> Any:
    """The checkpoint's processor when it has one (its call-time defaults apply, e.g. SigLIP 2's
    ``max_num_patches``), else its image processor."""
    from transformers import AutoImageProcessor, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError):
        processor = None
    if processor is not None and getattr(processor, "image_processor", None) is not None:
        return processor
    return AutoImageProcessor.from_pretrained(source)


class HFFamily:
    """One transformers family: the model classes it loads (by ``model_type``), its text recipe, its registered
    names (``registry.json``) and the loader functions of the family interface."""

    def __init__(self, kind: str, model_classes: Mapping[str, str], recipe: TextRecipe = TextRecipe(),
                 directory: str = "", adapter: type = HFDualEncoderAdapter) -> None:
        self.kind, self.model_classes, self.recipe, self.adapter = kind, dict(model_classes), recipe, adapter
        self.directory = directory or ("a saved " + " or ".join(model_classes.values()) + " (config.json with "
                                       + " or ".join(f'"model_type": "{t}"' for t in model_classes) + ")")

    @property
    def specs(self) -> tuple:
        return registered(self.kind)

    def model_class(self, source: str) -> Any:
        import transformers

        cfg = folder_config(Path(source)) if Path(source).is_dir() else None
        model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
        return getattr(transformers, self.model_classes.get(model_type) or next(iter(self.model_classes.values())))

    def build(self, source: str, name: str, fingerprint: str, device: str) -> ModelAdapter:
        import torch
        from transformers import AutoTokenizer

        model = self.model_class(source).from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
        return self.adapter(model, tokenizer, load_image_processor(source), name, fingerprint, device,
                            kind=self.kind, recipe=self.recipe)

    def load(self, path: Path, name: str, device: str) -> ModelAdapter:
        try:
            return self.build(str(path), name, fingerprint_path(path), device)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # truncated weights, broken config: name the folder
            logger.debug("loading %s failed", path, exc_info=True)
            raise ModelLoadError(f"{path}: cannot load the {self.kind} model: {type(exc).__name__}: {exc}") from exc

    def missing(self, spec: ModelSpec, where: Path) -> MissingCheckpointError:
        rev = f" --revision {spec.revision}" if spec.revision else ""
        return MissingCheckpointError(
            f"no weights for {spec.name} in {where}: `ccmb fetch model {spec.name}`, or download "
            f"https://huggingface.co/{spec.hub} (e.g. `huggingface-cli download {spec.hub}{rev} --local-dir "
            f"{where}`) and pass --checkpoint {where}, or put it in {where}")

    # -- the family interface
    def load_registered(self, spec: ModelSpec, checkpoint: Optional[str], device: str,
                        tokenizer: Optional[str]) -> ModelAdapter:
        """``--checkpoint DIR``, ``$CCMB_HOME/models/<name>/``, else the hub name if the Hugging Face cache has it."""
        where = registered_location(spec, checkpoint)
        if where.is_dir() and (where / "config.json").is_file():
            return self.load(where, spec.name, device)
        if checkpoint or not spec.hub:
            raise self.missing(spec, where)
        try:  # the hub name (works when the Hugging Face cache has it)
            return self.build(spec.hub, spec.name, f"hub:{spec.hub}@{spec.revision or 'main'}", device)
        except Exception as exc:
            raise self.missing(spec, where) from exc

    def claims_directory(self, path: Path) -> bool:
        cfg = folder_config(path)
        return isinstance(cfg, dict) and cfg.get("model_type") in self.model_classes

    def load_directory(self, path: Path, checkpoint: Optional[str], device: str,
                       tokenizer: Optional[str]) -> ModelAdapter:
        if checkpoint:
            raise ModelLoadError(f"{path}: a saved {self.kind} folder holds its own weights; drop --checkpoint "
                                 f"{checkpoint}")
        return self.load(path, path.name, device)

    def exports(self) -> Dict[str, Any]:
        """The module-level names of the family interface (``globals().update(FAMILY.exports())``)."""
        return {"KIND": self.kind, "DIRECTORY": self.directory, "SPECS": self.specs,
                "load_registered": self.load_registered, "claims_directory": self.claims_directory,
                "load_directory": self.load_directory}
