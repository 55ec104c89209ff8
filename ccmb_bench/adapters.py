"""Model adapters: one interface over R2D2/PRD2 and Chinese-CLIP, plus the registry of named models.

An adapter encodes images and texts to L2-normalised embeddings; an R2D2 adapter also keeps the hidden
states its cross encoders need (``has_reranker``) and scores pairs / re-ranks with them.

Resolution of ``--model NAME_OR_PATH``:
- a registered name (``ccmb-bench models``): weights from ``--checkpoint`` or ``$CCMB_HOME/models/<name>/``;
- any shipped R2D2 config name (``r2d2-tiny``...) with ``--checkpoint``;
- a directory: ``config.json`` with ``"model_type": "chinese_clip"`` -> Chinese-CLIP, otherwise our trainer's
  ``config.json`` + ``model.safetensors`` (``models.load_model``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image

log = logging.getLogger(__name__)


class UnknownModelError(ValueError):
    """An unknown model name (the message lists the known ones)."""


class MissingCheckpointError(FileNotFoundError):
    """Weights are not where we looked (the message says where to download them and where to put them)."""


def ccmb_home() -> Path:
    return Path(os.environ.get("CCMB_HOME") or Path.home() / ".cache" / "ccmb")


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


# ---------------------------------------------------------------------------------------------- interface
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


# ---------------------------------------------------------------------------------------------- R2D2 / PRD2
class R2D2Adapter(ModelAdapter):
    """R2D2 (two-stage ranking through the cross encoders) or PRD2 (dual encoder) from ``models``."""

    kind = "r2d2"

    def __init__(self, model, tokenizer, name: str, fingerprint: str, device: str = "cpu",
                 hidden_dtype: Optional[torch.dtype] = None) -> None:
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
        return torch.stack([self.transform(im) for im in images])

    @torch.no_grad()
    def encode_images(self, pixel_values, with_hidden=False):
        if with_hidden and self.has_reranker:
            e, h = self.model.encode_image(pixel_values.to(self.device), return_hidden=True)
            return {"embeds": e.float().cpu(), "hidden": h.to(self.hidden_dtype).cpu()}
        return {"embeds": self.model.encode_image(pixel_values.to(self.device)).float().cpu()}

    @torch.no_grad()
    def encode_texts(self, texts, with_hidden=False):
        from models.tokenizer import tokenize

        enc = tokenize(self.tokenizer, texts, max_length=self.max_len)
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


def _find_tokenizer(*candidates: Optional[Path]) -> Optional[Path]:
    for c in candidates:
        if c is None:
            continue
        c = Path(c)
        for d in ([c] if c.is_dir() else [c.parent]):
            if (d / "vocab.txt").is_file() or (d / "tokenizer.json").is_file():
                return d
            if (d / "tokenizer").is_dir():
                return d / "tokenizer"
    return None


# ---------------------------------------------------------------------------------------------- Chinese-CLIP
class ChineseCLIPAdapter(ModelAdapter):
    """transformers' ``ChineseCLIPModel`` with its tokenizer and image processor (dual encoder)."""

    kind = "chinese-clip"

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
                log.warning("%s: no usable image processor (%s); using CLIP resize/crop at %d px", source, exc, size)
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


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "r2d2" | "chinese-clip"
    description: str
    download: str
    config: str = ""  # R2D2 config name
    hub: str = ""  # Chinese-CLIP hub name
    files: Tuple[str, ...] = field(default_factory=tuple)


_R2D2_DL = ("https://github.com/yuxie11/R2D2 (README 'Pre-trained models' / 'Fine-tuned models'); "
            "the tokenizer: https://huggingface.co/hfl/chinese-roberta-wwm-ext (vocab.txt)")
_CCLIP_DL = "https://huggingface.co/{hub} (or https://github.com/OFA-Sys/Chinese-CLIP)"

MODELS: Dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("r2d2-vitl14", "r2d2", "R2D2 ViT-L/14 (Zero-250M pre-training), two-stage ranking", _R2D2_DL,
              config="r2d2-vitl14", files=("*.pth or model.safetensors", "vocab.txt")),
    ModelSpec("r2d2-vitb16", "r2d2", "R2D2 ViT-B/16 (fine-tuned checkpoints), two-stage ranking", _R2D2_DL,
              config="r2d2-vitb16", files=("*.pth or model.safetensors", "vocab.txt")),
    ModelSpec("prd2-vitl14", "r2d2", "PRD2 ViT-L/14 dual encoder (Zero-250M)", _R2D2_DL,
              config="prd2-vitl14", files=("*.pth or model.safetensors", "vocab.txt")),
    ModelSpec("chinese-clip-vit-b16", "chinese-clip", "Chinese-CLIP ViT-B/16", "",
              hub="OFA-Sys/chinese-clip-vit-base-patch16"),
    ModelSpec("chinese-clip-vit-l14", "chinese-clip", "Chinese-CLIP ViT-L/14", "",
              hub="OFA-Sys/chinese-clip-vit-large-patch14"),
    ModelSpec("chinese-clip-vit-l14-336", "chinese-clip", "Chinese-CLIP ViT-L/14 at 336 px", "",
              hub="OFA-Sys/chinese-clip-vit-large-patch14-336px"),
    ModelSpec("chinese-clip-vit-h14", "chinese-clip", "Chinese-CLIP ViT-H/14", "",
              hub="OFA-Sys/chinese-clip-vit-huge-patch14"),
]}


def list_models() -> List[Dict[str, str]]:
    rows = [{"name": s.name, "kind": s.kind, "description": s.description,
             "weights": f"--checkpoint or {ccmb_home() / 'models' / s.name}" + (f" or hub {s.hub}" if s.hub else "")}
            for s in MODELS.values()]
    rows.append({"name": "<directory>", "kind": "r2d2|chinese-clip",
                 "description": "a trainer output (config.json + model.safetensors) or a saved ChineseCLIPModel",
                 "weights": "the directory itself"})
    return rows


def _is_chinese_clip_dir(path: Path) -> bool:
    import json

    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "chinese_clip"
    except ValueError:
        return False


def _r2d2_weights(directory: Path) -> Optional[Path]:
    if (directory / "model.safetensors").is_file():
        return directory / "model.safetensors"
    pths = sorted(directory.glob("*.pth")) + sorted(directory.glob("*.pt"))
    return pths[0] if pths else None


def _missing(spec: ModelSpec, where: Path) -> MissingCheckpointError:
    if spec.kind == "chinese-clip":
        how = (f"download {_CCLIP_DL.format(hub=spec.hub)} (e.g. `huggingface-cli download {spec.hub} "
               f"--local-dir {where}`) and pass --checkpoint {where}, or put it in {where}")
    else:
        how = (f"download it from {spec.download}; put the checkpoint (.pth) and the tokenizer vocab.txt in "
               f"{where}/ or pass --checkpoint FILE [--tokenizer DIR]")
    return MissingCheckpointError(f"no weights for {spec.name} in {where}: {how}")


def load_adapter(model: str, checkpoint: Optional[str] = None, device: str = "cpu",
                 tokenizer: Optional[str] = None) -> ModelAdapter:
    """Resolve ``model`` (registered name, R2D2 config name, or directory) to a ready adapter."""
    import models as mdl

    path = Path(model)
    if model in MODELS:
        spec = MODELS[model]
        where = Path(checkpoint) if checkpoint else ccmb_home() / "models" / spec.name
        if spec.kind == "chinese-clip":
            if where.is_dir() and (where / "config.json").is_file():
                return ChineseCLIPAdapter(str(where), spec.name, fingerprint_path(where), device)
            if checkpoint:
                raise _missing(spec, where)
            try:  # the hub name (works when the Hugging Face cache has it)
                return ChineseCLIPAdapter(spec.hub, spec.name, f"hub:{spec.hub}", device)
            except Exception as exc:
                raise _missing(spec, where) from exc
        weights = where if where.is_file() else (_r2d2_weights(where) if where.is_dir() else None)
        if weights is None:
            raise _missing(spec, where)
        return _r2d2(mdl, spec.config, weights, spec.name, device, tokenizer, where)
    if path.is_dir() and not checkpoint:
        if _is_chinese_clip_dir(path):
            return ChineseCLIPAdapter(str(path), path.name, fingerprint_path(path), device)
        if (path / "config.json").is_file():
            weights = _r2d2_weights(path)
            if weights is None:
                raise MissingCheckpointError(f"{path}: no model.safetensors or .pth checkpoint in this directory")
            return _r2d2(mdl, str(path), weights, path.name, device, tokenizer, path)
        raise UnknownModelError(f"{path}: a model directory needs config.json (+ model.safetensors)")
    if path.is_dir() and checkpoint and (path / "config.json").is_file() and not _is_chinese_clip_dir(path):
        return _r2d2(mdl, str(path), Path(checkpoint), path.name, device, tokenizer, path)
    if model in mdl.list_configs() or (path.is_file() and path.suffix == ".json"):
        if not checkpoint:
            raise MissingCheckpointError(f"config {model!r} needs --checkpoint FILE (an official .pth or a "
                                         f".safetensors)")
        return _r2d2(mdl, model, Path(checkpoint), path.stem if path.suffix else model, device, tokenizer,
                     Path(checkpoint))
    known = ", ".join(dict.fromkeys(list(MODELS) + mdl.list_configs()))
    raise UnknownModelError(f"unknown model {model!r}; known: {known}, or a model directory")


def _r2d2(mdl, config, weights: Path, name: str, device: str, tokenizer: Optional[str],
          where: Path) -> R2D2Adapter:
    from models.tokenizer import load_tokenizer

    if not Path(weights).is_file():
        raise MissingCheckpointError(f"{weights}: checkpoint file not found")
    tok_dir = Path(tokenizer) if tokenizer else _find_tokenizer(where, Path(weights).parent)
    if tok_dir is None:
        raise MissingCheckpointError(
            f"no tokenizer for {name}: put vocab.txt (hfl/chinese-roberta-wwm-ext) next to {weights} or pass "
            "--tokenizer PATH")
    model = mdl.load_model(config, checkpoint=weights, device=device)
    tok = load_tokenizer(tok_dir, max_length=model.config.max_text_len)
    fp = fingerprint_path(Path(weights))
    return R2D2Adapter(model, tok, name, fp, device)
