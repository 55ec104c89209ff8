"""The adapter interface every benchmarked model offers (the one place it is defined), the errors of model
resolution, registered-model records and checkpoint fingerprints.

Light on purpose: no torch, PIL or transformers at import time, so the registry of names (and plug-in families
found through entry points) can be read before any heavy import (``ccmb-bench models``, name checks).

A **family** is a module (built in: ``ccmb_bench/adapters/<family>.py``; a plug-in: any importable module named
by an entry point in the group ``ccmb_bench.adapters``) with:

- ``KIND`` (str): the family's name, the ``kind`` of its :class:`ModelSpec` s;
- ``DIRECTORY`` (str): one phrase saying which model folder it reads (shown in errors);
- ``SPECS`` (tuple of :class:`ModelSpec`): its registered names (may be empty);
- ``load_registered(spec, checkpoint, device, tokenizer) -> ModelAdapter``;
- ``claims_directory(path) -> bool`` and ``load_directory(path, checkpoint, device, tokenizer) -> ModelAdapter``;
- optionally ``claims_name(model) -> bool`` / ``load_name(model, checkpoint, device, tokenizer)`` (names that are
  neither registered nor folders, e.g. ``open_clip:ViT-B-32``) and ``known_names() -> list``.

Keep the module itself light (import torch/transformers inside the functions): it is imported to list names.
Weights that exist but cannot be loaded raise :class:`ModelLoadError` naming the file; absent weights raise
:class:`MissingCheckpointError` saying where to put them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # the interface's types; imported lazily by the families that use them
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
    config: str = ""  # R2D2 config name; for other families a family-specific architecture name
    hub: str = ""  # Hugging Face hub name (the source of the weights)
    files: Tuple[str, ...] = field(default_factory=tuple)
    revision: str = ""  # the pinned hub revision (commit), "" when not pinned
    size: str = ""  # towers and parameter count, e.g. "ViT-L/14 + RoBERTa-wwm-large, 406M"
    reference: Tuple[str, ...] = field(default_factory=tuple)  # ``model`` of its rows in paper_results.json
    options: Tuple[Tuple[str, Any], ...] = field(default_factory=tuple)  # family-specific settings
    notes: str = ""

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


#: the registered model names, as data (family, hub id and revision, size, reference rows)
REGISTRY_FILE = Path(__file__).with_name("registry.json")


@functools.lru_cache(maxsize=None)
def _registry_rows() -> Tuple[Dict[str, Any], ...]:
    return tuple(json.loads(REGISTRY_FILE.read_text(encoding="utf-8"))["models"])


def spec_from_dict(row: Dict[str, Any], where: str = "registry") -> "ModelSpec":
    """A :class:`ModelSpec` from a registry row (``name``, ``kind``, ``description`` required)."""
    missing = [k for k in ("name", "kind", "description") if not row.get(k)]
    if missing:
        raise ValueError(f"{where}: a model entry needs {', '.join(missing)}: {row!r}")
    hub = str(row.get("hub", ""))
    return ModelSpec(name=str(row["name"]), kind=str(row["kind"]), description=str(row["description"]),
                     download=str(row.get("download") or row.get("source") or
                                  (f"https://huggingface.co/{hub}" if hub else "")),
                     config=str(row.get("config", "")), hub=hub, files=tuple(row.get("files", ())),
                     revision=str(row.get("revision", "")), size=str(row.get("size", "")),
                     reference=tuple(row.get("reference", ())),
                     options=tuple(sorted((row.get("options") or {}).items())), notes=str(row.get("notes", "")))


def registered(kind: str) -> Tuple["ModelSpec", ...]:
    """The registered names of family ``kind`` (``registry.json``), in file order."""
    return tuple(spec_from_dict(r, f"{REGISTRY_FILE.name}:{r.get('name')}") for r in _registry_rows()
                 if r.get("kind") == kind)


class ModelAdapter:
    """The interface every benchmarked model offers (built-in families and plug-ins alike).

    Required: :meth:`preprocess`, :meth:`encode_images`, :meth:`encode_texts` and the attributes ``name``,
    ``kind``, ``fingerprint`` (a short string that changes when the weights change: it keys the embedding cache,
    see :func:`fingerprint_path`). Embeddings are float32, L2-normalised, on the CPU. Optional: ``max_len``
    (the text truncation length in tokens; a protocol with a shorter context, e.g. Chinese-CLIP's 52, lowers it
    for the run), ``has_reranker`` with :meth:`pair_scores`/:meth:`rank` (cross encoders), ``can_generate`` with
    :meth:`generate_captions`, ``query_instruction`` (instruction-style embedders: texts encoded as queries).
    """

    name: str = ""
    kind: str = ""
    fingerprint: str = "random"
    has_reranker: bool = False
    can_generate: bool = False
    default_top_k: int = 128

    def preprocess(self, images: Sequence["Image.Image"]) -> Any:
        """The model's own image preprocessing of a batch of RGB PIL images (whatever :meth:`encode_images`
        takes: usually a ``[N,3,H,W]`` tensor)."""
        raise NotImplementedError

    def encode_images(self, pixel_values: Any, with_hidden: bool = False) -> Dict[str, "torch.Tensor"]:
        """``{"embeds": [N,D]}`` (+ ``"hidden"`` when ``with_hidden`` and the model re-ranks), on the CPU."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str], with_hidden: bool = False) -> Dict[str, "torch.Tensor"]:
        """``{"embeds": [N,D]}`` (+ ``"hidden"``, ``"mask"``), on the CPU; tokenised as the model's library does."""
        raise NotImplementedError

    def pair_scores(self, images: Dict[str, "torch.Tensor"], texts: Dict[str, "torch.Tensor"],
                    image_index: "torch.Tensor", text_index: "torch.Tensor") -> "torch.Tensor":
        """Match score of each (image, text) pair: the cross encoders' probability, else the cosine."""
        return (images["embeds"][image_index] * texts["embeds"][text_index]).sum(-1)

    def rank(self, images: Dict[str, "torch.Tensor"], texts: Dict[str, "torch.Tensor"],
             top_k: int) -> Tuple["torch.Tensor", "torch.Tensor"]:
        raise NotImplementedError(f"{self.name} has no re-ranker")

    def generate_captions(self, pixel_values: "torch.Tensor") -> List[str]:
        raise NotImplementedError(f"{self.name} does not generate captions")

    def describe(self) -> Dict[str, Any]:
        out = {"model": self.name, "kind": self.kind, "fingerprint": self.fingerprint,
               "reranker": self.has_reranker}
        instruction = getattr(self, "query_instruction", None)
        if instruction:
            out["query_instruction"] = instruction
        return out
