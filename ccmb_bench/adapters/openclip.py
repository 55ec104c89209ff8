"""open_clip models (optional extra ``ccmb[open-clip]``): any ``create_model_and_transforms`` model — a built-in
architecture with a pretrained tag or weights file, an open_clip hub folder (``open_clip_config.json`` +
weights), multilingual HF text towers (xlm-roberta ...) included.

As open_clip does: images through the ``preprocess`` (validation) transform ``create_model_and_transforms``
returns; texts through ``open_clip.get_tokenizer`` of the same model (its own cleaning, lower-casing, context
length and padding: every text padded to the context length); ``encode_image``/``encode_text`` with
``normalize=True``. A protocol's shorter context (Chinese-CLIP's 52) truncates the text as the tokenizer would at
that length and pads it back to the model's context length with the tokenizer's padding id.

``--model``:
- a folder with ``open_clip_config.json`` (an open_clip hub repo, or what ``ccmb fetch model NAME`` writes);
- ``open_clip:ARCH`` with ``--checkpoint FILE`` (weights for the built-in architecture ARCH) or
  ``open_clip:ARCH@TAG`` (a pretrained tag; open_clip downloads it into its cache);
- ``open_clip:hf-hub:ORG/REPO`` (open_clip's hub loading).
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
    registered,
    registered_location,
)
from ccmb_bench.precheck import OPEN_CLIP_CONFIG, OPEN_CLIP_PREFIX  # light names, shared with precheck

logger = logging.getLogger(__name__)

KIND = "open-clip"
DIRECTORY = "an open_clip folder (open_clip_config.json + weights)"
SPECS = registered(KIND)
PREFIX = OPEN_CLIP_PREFIX
CONFIG = OPEN_CLIP_CONFIG
INSTALL = ("open_clip is not installed: `pip install 'ccmb[open-clip]'` (pins torchvision to the torch it "
           "pairs with; see docs/bench.md 'Models')")


def import_open_clip() -> Any:
    """``open_clip``, with torchvision made importable beside a CPU-only torch (see :mod:`.tvcompat`)."""
    from ccmb_bench.adapters.tvcompat import prepare_torchvision

    try:
        prepare_torchvision()
        import open_clip
    except ImportError as exc:
        raise ModelLoadError(f"{INSTALL} ({exc})") from exc
    return open_clip


class OpenCLIPAdapter(ModelAdapter):
    """An open_clip model with its own preprocess transform and tokenizer."""

    kind = KIND

    def __init__(self, model: Any, transform: Any, tokenizer: Any, name: str, fingerprint: str,
                 device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.transform, self.tokenizer = transform, tokenizer
        self.name, self.fingerprint, self.device = name, fingerprint, device
        self.context_length = int(getattr(tokenizer, "context_length", 0) or getattr(model, "context_length", 77))
        self.max_len = self.context_length
        hf = getattr(tokenizer, "tokenizer", None)
        self.pad_id = int(getattr(hf, "pad_token_id", 0) or 0)

    def preprocess(self, images):
        import torch

        images = list(images)
        if not hasattr(self, "_batched"):  # open_clip's torchvision steps on the whole batch, where bit-for-bit its own
            from ccmb_bench.adapters.pixels import batched_transform

            self._batched = batched_transform(self.transform)
        pixels = self._batched(images) if self._batched is not None else None
        return pixels if pixels is not None else torch.stack([self.transform(im) for im in images])

    def encode_images(self, pixel_values, with_hidden=False):
        import torch

        with torch.inference_mode():
            f = self.model.encode_image(pixel_values.to(self.device), normalize=True)
        return {"embeds": f.float().cpu()}

    def tokenize(self, texts):
        import torch

        if self.max_len >= self.context_length:
            return self.tokenizer(list(texts))
        tokens = self.tokenizer(list(texts), context_length=self.max_len)
        return torch.nn.functional.pad(tokens, (0, self.context_length - tokens.shape[1]), value=self.pad_id)

    def encode_texts(self, texts, with_hidden=False):
        import torch

        unique = list(dict.fromkeys(texts))
        with torch.inference_mode():
            f = self.model.encode_text(self.tokenize(unique).to(self.device), normalize=True)
        emb = f.float().cpu()
        if len(unique) != len(texts):
            where = {t: i for i, t in enumerate(unique)}
            emb = emb[torch.as_tensor([where[t] for t in texts])]
        return {"embeds": emb}

    def describe(self):
        return {**super().describe(), "context_length": self.context_length}


def build(model_name: str, pretrained: Optional[str], name: str, fingerprint: str, device: str,
          where: str) -> OpenCLIPAdapter:
    open_clip = import_open_clip()
    try:
        model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                    device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # unknown architecture, truncated weights, wrong keys: name what was loaded
        logger.debug("loading %s failed", where, exc_info=True)
        raise ModelLoadError(f"{where}: cannot load the open_clip model: {type(exc).__name__}: {exc}") from exc
    return OpenCLIPAdapter(model, transform, tokenizer, name, fingerprint, device)


def load_directory(path: Path, checkpoint: Optional[str], device: str, tokenizer: Optional[str]) -> ModelAdapter:
    if checkpoint:
        raise ModelLoadError(f"{path}: an open_clip folder holds its own weights; drop --checkpoint {checkpoint}")
    return build(f"local-dir:{path}", None, path.name, fingerprint_path(path), device, str(path))


def claims_directory(path: Path) -> bool:
    return (path / CONFIG).is_file()


def load_registered(spec: ModelSpec, checkpoint: Optional[str], device: str,
                    tokenizer: Optional[str]) -> ModelAdapter:
    """``--checkpoint DIR`` or ``$CCMB_HOME/models/<name>/`` holding the open_clip hub files."""
    where = registered_location(spec, checkpoint)
    if not claims_directory(where):
        raise MissingCheckpointError(
            f"no weights for {spec.name} in {where}: `ccmb fetch model {spec.name}`, or download "
            f"https://huggingface.co/{spec.hub} ({CONFIG} and the weights) into {where}")
    adapter = load_directory(where, None, device, tokenizer)
    adapter.name = spec.name
    return adapter


def claims_name(model: str) -> bool:
    return model.startswith(PREFIX)


def load_name(model: str, checkpoint: Optional[str], device: str, tokenizer: Optional[str]) -> ModelAdapter:
    """``open_clip:ARCH`` + ``--checkpoint FILE``, ``open_clip:ARCH@TAG`` or ``open_clip:hf-hub:ORG/REPO``."""
    arch = model[len(PREFIX):]
    tag = None
    if "@" in arch and not arch.startswith("hf-hub:"):
        arch, tag = arch.split("@", 1)
    if not arch:
        raise ModelLoadError(f"{model}: expected {PREFIX}ARCH[@TAG] (see `python -c 'import open_clip; "
                             "print(open_clip.list_pretrained())'`)")
    if checkpoint and tag:
        raise ModelLoadError(f"{model}: give the weights either as @TAG or as --checkpoint, not both")
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise MissingCheckpointError(f"{checkpoint}: checkpoint file not found")
        return build(arch, checkpoint, arch, fingerprint_path(Path(checkpoint)), device, checkpoint)
    if not tag and not arch.startswith("hf-hub:"):
        raise MissingCheckpointError(f"{model}: no weights: pass --checkpoint FILE or a pretrained tag "
                                     f"({PREFIX}{arch}@TAG)")
    return build(arch, tag, model[len(PREFIX):], f"{arch}@{tag or 'hub'}", device, model)
