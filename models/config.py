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
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from ccmb.suggest import unknown

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """A config that cannot be used (unknown name, unknown key, a value of the wrong type or out of the family's
    limits, inconsistent dimensions, over the parameter budget); ``problems`` lists them field by field."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


#: The family's limits: every size field of a config must lie in [low, high] (a config.json from elsewhere
#: is checked against them before a tensor is allocated). Generous: ViT-bigG/14 and BERT-large fit.
LIMITS: Dict[str, Tuple[float, float]] = {
    "image_size": (8, 1024), "patch_size": (1, 64), "vision_width": (8, 4096), "vision_layers": (1, 64),
    "vision_heads": (1, 64), "vision_mlp": (8, 16384), "text_width": (8, 4096), "text_layers": (1, 64),
    "text_heads": (1, 64), "text_mlp": (8, 16384), "vocab_size": (8, 300_000), "max_position": (2, 8192),
    "type_vocab_size": (1, 16), "joint_layers": (0, 64), "embed_dim": (2, 4096), "top_k": (1, 100_000),
    "max_text_len": (2, 8192), "vision_eps": (1e-15, 0.1), "text_eps": (1e-15, 0.1), "temp_init": (1e-4, 10.0),
    "dropout": (0.0, 0.99),
}
#: At most this many parameters (2.5B, 10 GiB in fp32; R2D2 ViT-L/14 has about 0.5B); ``$CCMB_MAX_MODEL_PARAMS``
#: raises it.
DEFAULT_MAX_PARAMS = 2_500_000_000
BUDGET_ENV = "CCMB_MAX_MODEL_PARAMS"
#: config files are small: anything larger is not one (read bounded, nesting bounded)
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 16


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
        problems = self.problems()
        if problems:
            raise ConfigError(f"config {self.name!r}: " + "; ".join(problems), problems)

    def problems(self) -> List[str]:
        """Why this config cannot be built, field by field: types, the family's limits (:data:`LIMITS`),
        consistency, and the parameter budget (:func:`max_params`), all before anything is allocated."""
        problems = _field_problems(self)
        if problems:  # the consistency checks below need well-typed, bounded values
            return problems
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_heads:
            problems.append(f"vision_width {self.vision_width} not divisible by vision_heads {self.vision_heads}")
        if self.text_width % self.text_heads:
            problems.append(f"text_width {self.text_width} not divisible by text_heads {self.text_heads}")
        if self.max_text_len > self.max_position:
            problems.append(f"max_text_len {self.max_text_len} exceeds max_position {self.max_position}")
        if not problems:
            params, budget = estimate_params(self), max_params()
            if params > budget:
                problems.append(f"about {params / 1e9:.1f}B parameters ({params * 4 / 2**30:.0f} GiB in fp32) "
                                f"exceed the budget of {budget / 1e9:.1f}B (${BUDGET_ENV} raises it)")
        return problems

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
        """Build from a mapping; unknown keys, wrong types and out-of-range values are errors naming
        ``source`` and the field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown_keys = sorted(set(data) - known)
        if unknown_keys:
            raise ConfigError(f"{source}: unknown config keys {unknown_keys}; valid keys: {sorted(known)}")
        kwargs = dict(data)
        if "name" not in kwargs and source != "<dict>":
            kwargs["name"] = Path(source).parent.name if Path(source).name == CONFIG_FILE else Path(source).stem
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            if source == "<dict>":
                raise
            raise ConfigError(f"{source}: " + "; ".join(exc.problems), exc.problems) from None

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "R2D2Config":
        """Read a config file, bounded (:data:`MAX_CONFIG_BYTES`, :data:`MAX_CONFIG_DEPTH`); every problem is a
        :class:`ConfigError` naming the file."""
        path = Path(path)
        data = read_json_object(path, what="config")
        return cls.from_dict(data, source=str(path))


def read_json_object(path: Path, what: str = "config", max_bytes: int = MAX_CONFIG_BYTES,
                     max_depth: int = MAX_CONFIG_DEPTH) -> Dict[str, Any]:
    """A small JSON object file read bounded: a regular file of at most ``max_bytes``, UTF-8, nested at most
    ``max_depth`` levels; anything else is a :class:`ConfigError` naming ``path``."""
    from ccmb.boundedio import read_regular
    from ccmb.safejson import loads_bounded

    try:
        text = read_regular(path, max_bytes=max_bytes, what=what, error=ConfigError).decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a JSON {what} (not UTF-8 text at byte {exc.start})") from None
    try:
        data = json.loads(text) if text.count("[") + text.count("{") <= max_depth else \
            loads_bounded(text, max_depth=max_depth, max_bytes=max_bytes)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a usable {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a JSON object, got {type(data).__name__}")
    return data


def _field_problems(cfg: "R2D2Config") -> List[str]:
    """Type and range problems of each field (``field: reason``)."""
    problems = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "str":
            if not isinstance(value, str):
                problems.append(f"{f.name}: expected a string, got {_show(value)}")
            continue
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{f.name}: expected an integer, got {_show(value)}")
            continue
        if kind == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                or value != value or value in (float("inf"), float("-inf"))):
            problems.append(f"{f.name}: expected a finite number, got {_show(value)}")
            continue
        low, high = LIMITS.get(f.name, (None, None))
        if low is not None and not low <= value <= high:
            problems.append(f"{f.name}: {_show(value)} is outside the family's limits [{low:g}, {high:g}]")
    return problems


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def max_params() -> int:
    """The parameter budget: ``$CCMB_MAX_MODEL_PARAMS`` or :data:`DEFAULT_MAX_PARAMS`."""
    try:
        return int(float(os.environ.get(BUDGET_ENV, DEFAULT_MAX_PARAMS)))
    except ValueError:
        return DEFAULT_MAX_PARAMS


def estimate_params(cfg: "R2D2Config") -> int:
    """Parameters of the model ``cfg`` describes, computed from its sizes (within 1% of the built model)."""
    w, m, t, tm = cfg.vision_width, cfg.vision_mlp, cfg.text_width, cfg.text_mlp
    vision = (3 * cfg.patch_size ** 2 * w + (cfg.num_patches + 2) * w + 4 * w
              + cfg.vision_layers * (4 * w * w + 2 * w * m + m + 9 * w))
    text = ((cfg.vocab_size + cfg.max_position + cfg.type_vocab_size + 2) * t + t * t + t
            + cfg.text_layers * (4 * t * t + 2 * t * tm + tm + 9 * t))
    cross = 0
    if cfg.joint_layers:
        layer = lambda kv: 4 * t * t + 2 * t * t + 2 * kv * t + 2 * t * tm + tm + 13 * t  # noqa: E731
        cross = cfg.joint_layers * (layer(w) + layer(t)) + w * t + t + 4 * t + 4
    return int(vision + text + cross + (w + t + 2) * cfg.embed_dim + 1)


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
    raise ConfigError(unknown("config", text, list_configs(), extra="or a config JSON file or model folder"))


__all__ = ["R2D2Config", "ConfigError", "get_config", "list_configs", "CONFIG_DIR", "CONFIG_FILE", "LIMITS",
           "estimate_params", "max_params", "read_json_object"]
