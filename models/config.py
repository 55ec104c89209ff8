"""Model configs as data: the R2D2 / PRD2 dimensions, read from JSON.

A config is a flat JSON object (see ``models/configs/*.json``). ``joint_layers`` is the depth of each of the two
cross encoders; ``joint_layers == 0`` is PRD2 (the dual encoder without cross encoders). The keys of the
official-parity fixture's ``config.json`` are all valid here; every other key has a default.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """A config that cannot be used (unknown name, unknown key, inconsistent dimensions)."""


@dataclass
class R2D2Config:
    """Dimensions of an R2D2 (``joint_layers > 0``) or PRD2 (``joint_layers == 0``) model."""

    # CLIP ViT image encoder
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp: int = 4096
    vision_eps: float = 1e-5
    vision_act: str = "quick_gelu"
    # BERT (Chinese RoBERTa-wwm-ext) text encoder
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    vocab_size: int = 21128
    max_position: int = 512
    type_vocab_size: int = 2
    text_eps: float = 1e-12
    # cross encoders (text width, BERT layout, text_heads heads, text_mlp hidden)
    joint_layers: int = 6
    # projection, temperature, ranking
    embed_dim: int = 768
    temp_init: float = 0.07
    top_k: int = 128
    max_text_len: int = 64
    dropout: float = 0.1
    name: str = "custom"

    def __post_init__(self) -> None:
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_heads:
            problems.append(f"vision_width {self.vision_width} not divisible by vision_heads {self.vision_heads}")
        if self.text_width % self.text_heads:
            problems.append(f"text_width {self.text_width} not divisible by text_heads {self.text_heads}")
        if self.joint_layers < 0:
            problems.append(f"joint_layers must be >= 0, got {self.joint_layers}")
        if self.top_k < 1:
            problems.append(f"top_k must be >= 1, got {self.top_k}")
        if self.max_text_len > self.max_position:
            problems.append(f"max_text_len {self.max_text_len} exceeds max_position {self.max_position}")
        if problems:
            raise ConfigError(f"config {self.name!r}: " + "; ".join(problems))

    @property
    def has_cross_encoders(self) -> bool:
        return self.joint_layers > 0

    @property
    def family(self) -> str:
        """``"r2d2"`` or ``"prd2"``."""
        return "r2d2" if self.has_cross_encoders else "prd2"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "R2D2Config":
        """Build from a mapping; unknown keys are an error naming ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; valid keys: {sorted(known)}")
        kwargs = dict(data)
        if "name" not in kwargs and source != "<dict>":
            kwargs["name"] = Path(source).parent.name if Path(source).name == CONFIG_FILE else Path(source).stem
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "R2D2Config":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))


def list_configs() -> List[str]:
    """Names of the configs shipped in the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


ConfigLike = Union[str, "os.PathLike[str]", Mapping[str, Any], R2D2Config]


def get_config(name_or_path: ConfigLike) -> R2D2Config:
    """A config from a shipped name (``"r2d2-vitl14"``), a JSON file, a directory with ``config.json``,
    a dict, or an :class:`R2D2Config` (returned as a copy)."""
    if isinstance(name_or_path, R2D2Config):
        return dataclasses.replace(name_or_path)
    if isinstance(name_or_path, Mapping):
        return R2D2Config.from_dict(name_or_path)
    text = os.fspath(name_or_path)
    shipped = CONFIG_DIR / f"{text}.json"
    if "/" not in text and os.sep not in text and shipped.is_file():
        return R2D2Config.from_json(shipped)
    path = Path(text)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ConfigError(f"{path}: directory has no {CONFIG_FILE}")
        return R2D2Config.from_json(path / CONFIG_FILE)
    if path.is_file():
        return R2D2Config.from_json(path)
    raise ConfigError(f"unknown config {text!r}: not a shipped name ({', '.join(list_configs())}), "
                      "nor an existing file or directory")


__all__ = ["R2D2Config", "ConfigError", "get_config", "list_configs", "CONFIG_DIR", "CONFIG_FILE"]
