"""Building and loading R2D2 / PRD2 models: random init, official ``.pth`` checkpoints, our safetensors
directories, and initialisation for pre-training from local Hugging Face directories.

Ignorable checkpoint keys (:data:`IGNORABLE_KEY_PATTERNS`): the ``*.position_ids`` buffers (recomputed by the
model) and the embedding tables of the two cross encoders (``text_joint_layer.embeddings.*``,
``img_joint_layer.embeddings.*``), which the official modules carry but never apply. Every other missing key is
an error naming the keys; every other unexpected key is an error too unless ``strict=False`` (then a warning).
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from models.config import CONFIG_FILE, ConfigLike, get_config
from models.keys import IGNORABLE_KEY_PATTERNS, is_ignorable_key  # noqa: F401 (re-exported)
from models.r2d2 import WEIGHTS_FILE, R2D2Model

logger = logging.getLogger(__name__)

_SHOW = 20


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model (missing/unexpected keys, shape mismatches, bad file)."""


@dataclass
class LoadReport:
    """What happened when a state dict was loaded (attached to the model as ``model.load_report``)."""

    source: str
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected


def _fmt(keys: List[str]) -> str:
    """Keys grouped by top-level module, then the first few in full."""
    groups: Dict[str, int] = {}
    for k in keys:
        top = k.split(".")[0].split(":")[0]
        groups[top] = groups.get(top, 0) + 1
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    summary = ", ".join(f"{top} ({n})" for top, n in groups.items())
    return f"[{summary}] " + ", ".join(keys[:_SHOW]) + more


def build_model(config: ConfigLike, device: Union[str, torch.device] = "cpu") -> R2D2Model:
    """A randomly initialised model for ``config`` (name, path, dict or R2D2Config)."""
    cfg = get_config(config)
    model = R2D2Model(cfg)
    return model.to(device)


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: official ``.pth``/``.pt`` (``{"model": state_dict}`` or a bare state dict,
    read with ``weights_only=True``) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes; an interrupted download or copy?)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError / OSError on truncated or garbage files
            raise CheckpointError(f"{path}: unreadable safetensors file ({type(exc).__name__}: "
                                  f"{exc or 'no detail'}; truncated or corrupt?)") from exc
    from ccmb.fetch.verify import VerificationError, check_checkpoint_archive

    try:  # bounded before torch inflates anything
        check_checkpoint_archive(path)
    except VerificationError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CheckpointError(f"{path}: refused by torch.load(weights_only=True): the file is not plain tensors "
                              f"(it would run code or is corrupt): {first}") from exc
    except Exception as exc:  # truncated zip archives, EOF, non-tensor payloads
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CheckpointError(f"{path}: cannot read checkpoint with torch.load(weights_only=True): "
                              f"{type(exc).__name__}: {detail} (truncated or corrupt?)") from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected {{'model': state_dict}} or a state dict of tensors")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict_into(model: R2D2Model, state: Mapping[str, torch.Tensor], source: str = "<state_dict>",
                         strict: bool = True) -> LoadReport:
    """Load ``state`` into ``model`` with the ignorable-key policy; returns the :class:`LoadReport`."""
    own = model.state_dict()
    report = LoadReport(source=source)
    usable = {}
    mismatched = []
    for key, value in state.items():
        if key in own:
            if tuple(own[key].shape) != tuple(value.shape):
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
            usable[key] = value
        elif is_ignorable_key(key):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    report.missing = sorted(k for k in own if k not in state and not is_ignorable_key(k))
    report.unexpected.sort()
    if mismatched:
        raise CheckpointError(f"{source}: {len(mismatched)} shape mismatches for config {model.config.name!r}: "
                              + _fmt(mismatched))
    if report.missing:
        raise CheckpointError(f"{source}: {len(report.missing)} keys missing for config {model.config.name!r}: "
                              + _fmt(report.missing))
    if report.unexpected:
        msg = (f"{source}: {len(report.unexpected)} unexpected keys for config {model.config.name!r}: "
               + _fmt(report.unexpected))
        if strict:
            raise CheckpointError(msg + " (pass strict=False to drop them)")
        logger.warning("%s (dropped)", msg)
    model.load_state_dict(usable, strict=False)
    logger.info("loaded %d tensors from %s (%d ignorable keys skipped)", len(usable), source, len(report.ignored))
    return report


def load_model(config_or_name_or_dir: Union[ConfigLike, "os.PathLike[str]"], checkpoint: Optional[
        Union[str, "os.PathLike[str]"]] = None, device: Union[str, torch.device] = "cpu",
        strict: bool = True) -> R2D2Model:
    """Load a model with weights, in eval mode.

    - ``load_model(dir)``: our checkpoint directory (``config.json`` + ``model.safetensors``, from
      ``model.save_pretrained(dir)``).
    - ``load_model("r2d2-vitl14", "r2d2_pretrain_250m.pth")``: a config (shipped name, JSON path, directory with
      ``config.json``, dict or R2D2Config) plus an official ``.pth`` (or a ``.safetensors``) file.

    Missing keys raise :class:`CheckpointError` naming them; unexpected ones too unless ``strict=False``; the
    ignorable set (module docstring) is skipped. The result is in ``model.load_report``.
    """
    target = config_or_name_or_dir
    if checkpoint is None:
        if isinstance(target, (str, os.PathLike)) and Path(target).is_dir():
            if not (Path(target) / WEIGHTS_FILE).is_file():
                raise CheckpointError(f"{target}: no {WEIGHTS_FILE} in this directory; pass checkpoint=<file.pth> "
                                      "for an official checkpoint, or use build_model() for random weights")
            checkpoint = Path(target) / WEIGHTS_FILE
        else:
            raise CheckpointError(f"load_model({target!r}): no weights given; pass checkpoint=<file> or a directory "
                                  f"with {CONFIG_FILE} + {WEIGHTS_FILE} (use build_model() for random weights)")
    cfg = get_config(target)
    model = R2D2Model(cfg)
    state = read_state_dict(checkpoint)
    model.load_report = load_state_dict_into(model, state, source=str(checkpoint), strict=strict)
    return model.to(device).eval()


# ---------------------------------------------------------------------- init from Hugging Face directories
def _check_dims(source: str, pairs: List[Tuple[str, object, object]]) -> None:
    bad = [f"{name}: {theirs} (ours {ours})" for name, theirs, ours in pairs if theirs != ours]
    if bad:
        raise CheckpointError(f"{source}: does not fit the config: " + "; ".join(bad))


def init_from_hf(config: ConfigLike, vision_dir: Union[str, "os.PathLike[str]"],
                 text_dir: Union[str, "os.PathLike[str]"], device: Union[str, torch.device] = "cpu") -> R2D2Model:
    """A model for pre-training, initialised from LOCAL Hugging Face directories.

    - ``visual_encoder`` <- a CLIP checkpoint (``vision_dir``, e.g. a download of openai/clip-vit-large-patch14;
      a full CLIPModel or a CLIPVisionModel directory);
    - ``text_encoder`` <- a BERT checkpoint (``text_dir``, e.g. hfl/chinese-roberta-wwm-ext);
    - each cross encoder's layer ``l`` <- self-attention and feed-forward of text-encoder layer
      ``text_layers - joint_layers + l`` (the top layers, as ALBEF initialises its fusion layers), its
      cross-attention randomly (BERT init; no pretrained counterpart exists);
    - projections, ``img_joint_proj``, ITM heads: random (BERT init); ``temp`` = ``config.temp_init``.
    """
    from transformers import BertModel, CLIPVisionModel

    cfg = get_config(config)
    model = R2D2Model(cfg)
    try:
        vision, vinfo = CLIPVisionModel.from_pretrained(str(vision_dir), output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{vision_dir}: cannot load a CLIP vision model: {exc}") from exc
    if vinfo.get("missing_keys"):
        raise CheckpointError(f"{vision_dir}: CLIP vision weights missing: {_fmt(sorted(vinfo['missing_keys']))}")
    vc = vision.config
    _check_dims(str(vision_dir), [
        ("hidden_size", vc.hidden_size, cfg.vision_width), ("num_hidden_layers", vc.num_hidden_layers,
                                                             cfg.vision_layers),
        ("num_attention_heads", vc.num_attention_heads, cfg.vision_heads),
        ("intermediate_size", vc.intermediate_size, cfg.vision_mlp), ("image_size", vc.image_size, cfg.image_size),
        ("patch_size", vc.patch_size, cfg.patch_size)])
    model.visual_encoder.load_state_dict(vision.state_dict(), strict=True)
    try:
        text, info = BertModel.from_pretrained(str(text_dir), output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{text_dir}: cannot load a BERT model: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        raise CheckpointError(f"{text_dir}: BERT weights missing: {_fmt(sorted(missing))}")
    tc = text.config
    _check_dims(str(text_dir), [
        ("hidden_size", tc.hidden_size, cfg.text_width), ("num_hidden_layers", tc.num_hidden_layers, cfg.text_layers),
        ("num_attention_heads", tc.num_attention_heads, cfg.text_heads),
        ("intermediate_size", tc.intermediate_size, cfg.text_mlp), ("vocab_size", tc.vocab_size, cfg.vocab_size),
        ("max_position_embeddings", tc.max_position_embeddings, cfg.max_position)])
    model.text_encoder.load_state_dict(text.state_dict(), strict=True)
    if cfg.has_cross_encoders:
        init_cross_encoders_from_text(model)
    logger.info("initialised %s from %s (vision) and %s (text)", cfg.name, vision_dir, text_dir)
    return model.to(device)


def init_cross_encoders_from_text(model: R2D2Model) -> None:
    """Copy the text encoder's top ``joint_layers`` layers into both cross encoders' self-attention and
    feed-forward blocks (cross-attention keeps its random init)."""
    cfg = model.config
    if cfg.joint_layers > cfg.text_layers:
        raise ValueError(f"config {cfg.name!r}: joint_layers {cfg.joint_layers} > text_layers {cfg.text_layers}; "
                         "cannot initialise the cross encoders from the text encoder")
    text_layers = model.text_encoder.encoder.layer
    first = cfg.text_layers - cfg.joint_layers
    with torch.no_grad():
        for encoder in (model.text_joint_layer, model.img_joint_layer):
            for i, layer in enumerate(encoder.encoder.layer):
                src = text_layers[first + i]
                pairs = [
                    (layer.attention.self.query, src.attention.self.query),
                    (layer.attention.self.key, src.attention.self.key),
                    (layer.attention.self.value, src.attention.self.value),
                    (layer.attention.output.dense, src.attention.output.dense),
                    (layer.attention.output.LayerNorm, src.attention.output.LayerNorm),
                    (layer.intermediate.dense, src.intermediate.dense),
                    (layer.output.dense, src.output.dense),
                    (layer.output.LayerNorm, src.output.LayerNorm),
                ]
                for dst, s in pairs:
                    dst.weight.copy_(s.weight)
                    dst.bias.copy_(s.bias)


def init_mlm_head_from_hf(head: torch.nn.Module, bert_dir: Union[str, "os.PathLike[str]"]) -> bool:
    """Load the ``cls.predictions.*`` tensors of a local Hugging Face ``BertForMaskedLM`` folder (e.g.
    hfl/chinese-roberta-wwm-ext, ``model.safetensors`` or ``pytorch_model.bin``) into ``head``
    (:class:`models.cross_encoder.MLMHead`). Returns False when the folder has no MLM head."""
    folder = Path(bert_dir)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        return False
    state = read_state_dict(weights)
    prefix = "cls."
    mlm = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix + "predictions.")}
    if not mlm:
        return False
    mlm.pop("predictions.decoder.bias", None)  # tied to predictions.bias in BERT
    missing, unexpected = head.load_state_dict(mlm, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: MLM head does not fit: missing {missing}, unexpected {unexpected}")
    logger.info("MLM head initialised from %s", weights)
    return True
