"""Model adapters: one interface over every benchmarked model family, and the registry of named models.

A family is one module (``r2d2``, ``chinese_clip``, ``clip``, ``altclip``, ``siglip``, ``pair``, ``openclip``)
offering ``KIND``, ``SPECS`` (its registered models, from ``registry.json``), ``DIRECTORY`` (what model folder it
reads), ``load_registered``, ``claims_directory``, ``load_directory`` and optionally
``claims_name``/``load_name``/``known_names`` (the interface: :mod:`ccmb_bench.adapters.base`); :data:`FAMILIES`
lists them (a new family is one file and one line there). Other packages add families without editing ccmb: an
entry point in the group ``ccmb_bench.adapters`` naming the family module (see docs/bench.md "Plug-ins").

Importing this package is light (no torch, transformers or open_clip): names can be listed and checked before
any model library loads; the families import them when they load a model.

Resolution of ``--model NAME_OR_PATH``:
- a registered name (``ccmb-bench models``): weights from ``--checkpoint`` or ``$CCMB_HOME/models/<name>/``;
- a directory: the family that claims it (``"model_type"`` of its ``config.json`` for transformers families,
  ``open_clip_config.json``, a pair folder's ``vision_config.json``, our trainer's ``config.json`` +
  ``model.safetensors`` -> R2D2; a ``ccmb train`` run directory -> its ``model/``);
- a name a family claims (any shipped R2D2 config name ``r2d2-tiny``... with ``--checkpoint``;
  ``open_clip:ARCH[@TAG]``).
Weights that exist but cannot be loaded raise :class:`ModelLoadError` naming the file.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from ccmb_bench.adapters import altclip, chinese_clip, clip, openclip, pair, r2d2, siglip
from ccmb_bench.adapters.base import (
    MissingCheckpointError,
    ModelAdapter,
    ModelLoadError,
    ModelSpec,
    UnknownModelError,
    ccmb_home,
    fingerprint_path,
)
from ccmb_bench.adapters.chinese_clip import ChineseCLIPAdapter
from ccmb_bench.adapters.r2d2 import R2D2Adapter
from ccmb_bench.precheck import RUN_MODEL_DIRS  # the light rules, shared with precheck
from ccmb_bench.training import run_display_name

logger = logging.getLogger(__name__)

#: the entry-point group plug-in families register under (``name = "package.module"``)
ENTRY_POINT_GROUP = "ccmb_bench.adapters"

#: kind -> family module, built-in families (a new model family: one module and one line here)
BUILTIN_FAMILIES = {m.KIND: m for m in (r2d2, chinese_clip, clip, altclip, siglip, pair, openclip)}

#: attributes a family module must have
REQUIRED = ("KIND", "SPECS", "load_registered", "claims_directory", "load_directory")


def plugin_entry_points() -> List[Any]:
    """The entry points of group ``ccmb_bench.adapters`` (not loaded: listing them imports nothing)."""
    from importlib.metadata import entry_points

    try:
        return list(entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:  # Python 3.9: entry_points() is a dict of groups
        return list(entry_points().get(ENTRY_POINT_GROUP, []))


def load_plugins(families: Dict[str, Any]) -> Dict[str, Any]:
    """Load each plug-in family into ``families`` (kind -> module). A plug-in that fails to import, lacks part of
    the interface or reuses a taken kind is skipped with a warning naming it; the others still load."""
    for ep in plugin_entry_points():
        try:
            module = ep.load()
        except Exception as exc:  # a broken plug-in must not take the built-in families down
            logger.warning("plug-in %s (%s): cannot be loaded: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
            continue
        missing = [a for a in REQUIRED if not hasattr(module, a)]
        kind = getattr(module, "KIND", ep.name)
        if missing:
            logger.warning("plug-in %s (%s): not an adapter family, missing %s", ep.name, ep.value,
                           ", ".join(missing))
        elif kind in families and families[kind] is not module:
            logger.warning("plug-in %s (%s): kind %r is taken by %s; skipped", ep.name, ep.value, kind,
                           getattr(families[kind], "__name__", families[kind]))
        else:
            module.PLUGIN = f"{ep.name} = {ep.value}"
            families[kind] = module
    return families


#: kind -> family module: the built-in families, then the plug-ins found through entry points
FAMILIES: Dict[str, Any] = load_plugins(dict(BUILTIN_FAMILIES))

MODELS: Dict[str, ModelSpec] = {}
for _family in FAMILIES.values():
    for _spec in _family.SPECS:
        if _spec.name in MODELS:
            logger.warning("model name %s of family %s is taken by family %s; skipped", _spec.name, _spec.kind,
                           MODELS[_spec.name].kind)
        else:
            MODELS[_spec.name] = _spec

__all__ = ["ModelAdapter", "R2D2Adapter", "ChineseCLIPAdapter", "ModelSpec", "MODELS", "FAMILIES",
           "BUILTIN_FAMILIES", "ENTRY_POINT_GROUP", "UnknownModelError", "MissingCheckpointError", "ModelLoadError",
           "load_adapter", "list_models", "model_names", "is_model_name", "plugin_entry_points", "ccmb_home",
           "fingerprint_path"]


def model_names() -> List[str]:
    """Every registered name (built-in and plug-in families) and every name a family lists as known."""
    names = list(MODELS)
    for family in FAMILIES.values():
        known = getattr(family, "known_names", None)
        if known is not None:
            names += list(known())
    return list(dict.fromkeys(names))


def is_model_name(model: str) -> bool:
    """Whether ``model`` is a registered name or a name a family claims (not whether its weights exist);
    directories are checked by :func:`load_adapter`."""
    if model in MODELS:
        return True
    return any(getattr(f, "claims_name", None) is not None and f.claims_name(model) for f in FAMILIES.values())


@functools.lru_cache(maxsize=None)
def _reference_rows() -> Dict[str, List[Dict[str, Any]]]:
    """Published rows of ``ccmb_bench/data/paper_results.json`` by their ``model``."""
    path = Path(__file__).resolve().parents[1] / "data" / "paper_results.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError):  # pragma: no cover - a shipped file
        return {}
    out: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r.get("model")), []).append(r)
    return out


def reference_rows(spec: ModelSpec) -> List[Dict[str, Any]]:
    """The published rows of ``spec`` (its ``reference`` names), as ``{model, dataset, split, setting, main}``."""
    out = []
    for model in spec.reference:
        for r in _reference_rows().get(model, []):
            metrics = r.get("metrics", {})
            main = ("MR", metrics["MR"]) if "MR" in metrics else next(iter(metrics.items()), ("", None))
            out.append({"model": model, "dataset": r.get("dataset"), "split": r.get("split"),
                        "setting": r.get("setting"), "metric": main[0], "value": main[1], "source": r.get("source")})
    return out


def list_models() -> List[Dict[str, Any]]:
    """One row per registered name: family, size, source (hub id and revision), where the weights are looked up,
    the published reference rows; then one row for model directories."""
    rows: List[Dict[str, Any]] = []
    for s in MODELS.values():
        family = FAMILIES.get(s.kind)
        source = s.hub or s.download
        rows.append({"name": s.name, "kind": s.kind, "description": s.description, "size": s.size,
                     "source": source, "revision": s.revision or ("" if not s.hub else "unpinned"),
                     "weights": f"--checkpoint or {ccmb_home() / 'models' / s.name}"
                                + (f" or hub {s.hub}" if s.hub else ""),
                     "reference": reference_rows(s), "notes": s.notes,
                     "plugin": getattr(family, "PLUGIN", "")})
    rows.append({"name": "<directory>", "kind": "|".join(FAMILIES),
                 "description": " or ".join(getattr(f, "DIRECTORY", f.KIND) for f in FAMILIES.values()),
                 "size": "", "source": "", "revision": "", "weights": "the directory itself", "reference": [],
                 "notes": "", "plugin": ""})
    return rows


def run_model_dir(path: Path) -> Path:
    """``path`` itself, or for a trainer's run directory (no ``config.json`` of its own) its final model folder
    (``model/``, else ``best/``), so ``ccmb-bench run --model RUN_DIR`` works."""
    if (path / "config.json").exists() or any(f.claims_directory(path) for f in FAMILIES.values()):
        return path
    for name in RUN_MODEL_DIRS:
        if (path / name / "config.json").is_file():
            return path / name
    return path


def load_adapter(model: str, checkpoint: Optional[str] = None, device: str = "cpu",
                 tokenizer: Optional[str] = None) -> ModelAdapter:
    """Resolve ``model`` (registered name, directory, or a name a family claims) to a ready adapter."""
    if model in MODELS:
        spec = MODELS[model]
        return FAMILIES[spec.kind].load_registered(spec, checkpoint, device, tokenizer)
    path = Path(model)
    if path.is_dir():
        path = run_model_dir(path)
        for family in FAMILIES.values():
            if family.claims_directory(path):
                adapter = family.load_directory(path, checkpoint, device, tokenizer)
                adapter.name = run_display_name(path) or adapter.name  # RUN/model is "RUN", not "model"
                return adapter
        raise UnknownModelError(f"{path}: not a model directory; expected "
                                + " or ".join(getattr(f, "DIRECTORY", f.KIND) for f in FAMILIES.values()))
    for family in FAMILIES.values():
        claims = getattr(family, "claims_name", None)
        if claims is not None and claims(model):
            return family.load_name(model, checkpoint, device, tokenizer)
    known = ", ".join(model_names())
    raise UnknownModelError(f"unknown model {model!r}; known: {known}, or a model directory, or "
                            f"{openclip.PREFIX}ARCH[@TAG]")
