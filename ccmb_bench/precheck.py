"""What ``ccmb-bench run`` can check from names and paths alone, before torch or transformers is imported.

Light (the standard library, ``ccmb.datasets``' registry and ``models.config``), so a misspelled model or
dataset, a split the dataset does not have, a missing data root, checkpoint or tokenizer, or a hostile
``config.json`` is answered within a second instead of after seconds of imports. The rules are the adapters'
own (the same helpers: :func:`run_model_dir`, :func:`weights_in`, :func:`find_tokenizer`); the names come from
the registries as data: ``models/weights.json``, ``models/configs/*.json`` and :data:`BUILTIN_MODEL_NAMES`
(kept equal to ``ccmb_bench.adapters.MODELS`` by a test). When adapter plug-ins are installed (entry point
group :data:`PLUGIN_GROUP`), a name nobody here knows is left to them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ccmb.suggest import unknown

#: Registered names of the built-in families (``ccmb_bench.adapters.MODELS``; tests/bench keeps them equal).
BUILTIN_MODEL_NAMES = ("r2d2-vitl14", "r2d2-vitb16", "prd2-vitl14", "chinese-clip-vit-b16", "chinese-clip-vit-l14",
                       "chinese-clip-vit-l14-336", "chinese-clip-vit-h14")
PLUGIN_GROUP = "ccmb_bench.adapters"
#: model folders inside a ``ccmb train`` run directory, in the order ``--model RUN_DIR`` picks them
RUN_MODEL_DIRS = ("model", "best")
CONFIG_FILE = "config.json"
#: the open_clip family's forms (``ccmb_bench.adapters.openclip`` takes them from here): a name prefix
#: (``open_clip:ARCH@TAG``, ``open_clip:hf-hub:ORG/REPO``) and the config file of its folders
OPEN_CLIP_PREFIX = "open_clip:"
OPEN_CLIP_CONFIG = "open_clip_config.json"


class PrecheckError(ValueError):
    """A mistake found from names and paths (the message names the option, file or field)."""


# ------------------------------------------------------------------------------------ model folders
def run_model_dir(path: Path) -> Path:
    """``path`` itself, or for a trainer's run directory (no ``config.json`` of its own) its final model folder
    (``model/``, else ``best/``), so ``ccmb-bench run --model RUN_DIR`` works."""
    path = Path(path)
    if (path / CONFIG_FILE).exists():
        return path
    for name in RUN_MODEL_DIRS:
        if (path / name / CONFIG_FILE).is_file():
            return path / name
    return path


def weights_in(directory: Path) -> Optional[Path]:
    """The R2D2 weights of a folder: ``model.safetensors``, else the first ``*.pth`` / ``*.pt``."""
    directory = Path(directory)
    if (directory / "model.safetensors").is_file():
        return directory / "model.safetensors"
    pths = sorted(directory.glob("*.pth")) + sorted(directory.glob("*.pt"))
    return pths[0] if pths else None


def find_tokenizer(*candidates: Optional[Path]) -> Optional[Path]:
    """The first folder holding ``vocab.txt``/``tokenizer.json`` (or a ``tokenizer/`` sub-folder)."""
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


# ------------------------------------------------------------------------------------ names
def config_names() -> List[str]:
    from models.config import list_configs

    return list_configs()


def weights_entries() -> Dict[str, Dict[str, Any]]:
    from models import hub

    return {name: hub.entry(name) for name in hub.weights_names()}


def registered_names() -> List[str]:
    """The registered model names: ``ccmb_bench.adapters.MODELS`` when something already imported it, else
    :data:`BUILTIN_MODEL_NAMES` (the same names, without torch)."""
    adapters = sys.modules.get("ccmb_bench.adapters")
    models = getattr(adapters, "MODELS", None)
    return list(models) if models is not None else list(BUILTIN_MODEL_NAMES)


def model_names() -> List[str]:
    """Every name ``--model`` takes without a path: registered models, and non-R2D2 weights entries (a family
    registered by data), then shipped config names."""
    entries = weights_entries()
    named = [n for n, e in entries.items() if e.get("kind") not in (None, "r2d2")]
    return list(dict.fromkeys([*registered_names(), *named, *config_names()]))


def plugins_installed() -> bool:
    """True when a package registers adapter families through the entry point group :data:`PLUGIN_GROUP`."""
    from importlib.metadata import entry_points

    try:
        return bool(list(entry_points(group=PLUGIN_GROUP)))
    except Exception:  # a broken distribution's metadata: let the full resolution decide
        return True


def _home_models() -> Path:
    return Path(os.environ.get("CCMB_HOME") or Path.home() / ".cache" / "ccmb") / "models"


# ------------------------------------------------------------------------------------ config files
#: transformers config fields that size a tensor, with the range any family's checkpoint uses
HF_SIZE_LIMITS = {
    "hidden_size": (1, 16384), "intermediate_size": (1, 65536), "num_hidden_layers": (1, 128),
    "num_attention_heads": (1, 256), "vocab_size": (1, 1_000_000), "max_position_embeddings": (1, 65536),
    "type_vocab_size": (1, 64), "image_size": (1, 4096), "patch_size": (1, 512), "projection_dim": (1, 16384),
    "num_channels": (1, 16), "embed_dim": (1, 16384),
}


def check_hf_config(path: Path, data: Dict[str, Any]) -> None:
    """The size fields of a transformers ``config.json`` (top level and every ``*_config`` section): integers in
    :data:`HF_SIZE_LIMITS`, and the parameters they imply within the budget (``models.config.max_params``).
    Raises :class:`PrecheckError` naming the file and the field."""
    from models.config import BUDGET_ENV, max_params

    sections = [("", data)] + [(f"{k}.", v) for k, v in data.items() if k.endswith("_config") and isinstance(v, dict)]
    problems: List[str] = []
    params = 0
    for prefix, sec in sections:
        for key, (low, high) in HF_SIZE_LIMITS.items():
            if key not in sec or sec[key] is None:
                continue
            value = sec[key]
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{prefix}{key}: expected an integer, got {type(value).__name__} {str(value)[:30]!r}")
            elif not low <= value <= high:
                problems.append(f"{prefix}{key}: {value} is outside [{low}, {high}]")
        if problems:
            continue
        h, layers = sec.get("hidden_size"), sec.get("num_hidden_layers")
        if isinstance(h, int) and isinstance(layers, int):
            m = sec.get("intermediate_size") if isinstance(sec.get("intermediate_size"), int) else 4 * h
            tokens = (sec.get("vocab_size") or 0) + (sec.get("max_position_embeddings") or 0)
            if isinstance(sec.get("image_size"), int) and isinstance(sec.get("patch_size"), int):
                tokens += (sec["image_size"] // sec["patch_size"]) ** 2 + 3 * sec["patch_size"] ** 2
            params += layers * (4 * h * h + 2 * h * m) + tokens * h
    if problems:
        raise PrecheckError(f"{path}: " + "; ".join(problems))
    if params > max_params():
        raise PrecheckError(f"{path}: its sizes make about {params / 1e9:.1f}B parameters, over the budget of "
                            f"{max_params() / 1e9:.1f}B (${BUDGET_ENV} raises it)")


def check_model_config(path: Path) -> Dict[str, Any]:
    """Read a model folder's ``config.json`` bounded and check its sizes for its family (R2D2: our config
    without ``model_type``; transformers families: :func:`check_hf_config`); returns it."""
    from models.config import ConfigError, R2D2Config, read_json_object

    try:
        data = read_json_object(path)
        if "model_type" in data:
            check_hf_config(path, data)
        else:
            R2D2Config.from_dict(data, source=str(path))
    except ConfigError as exc:
        raise PrecheckError(str(exc)) from None
    return data


# ------------------------------------------------------------------------------------ the checks
def check_model(model: str, checkpoint: Optional[str] = None, tokenizer: Optional[str] = None,
                fetch: bool = True) -> None:
    """Raise :class:`PrecheckError` for a model argument that cannot work, judged from names and files."""
    if checkpoint is not None and not Path(checkpoint).exists():
        raise PrecheckError(f"--checkpoint {checkpoint}: no such file or folder{_how_to_get(model)}")
    if tokenizer is not None and not Path(tokenizer).exists():
        raise PrecheckError(f"--tokenizer {tokenizer}: no such file or folder")
    path = Path(model).expanduser()
    if "ccmb_bench.adapters" in sys.modules:
        # the full resolution is loaded already (an API user, a test that registers a family): it decides about
        # names; only the files are checked here
        if path.is_dir() and (run_model_dir(path) / CONFIG_FILE).is_file():
            check_model_config(run_model_dir(path) / CONFIG_FILE)
        return
    if model.startswith(OPEN_CLIP_PREFIX):
        return  # the open_clip family resolves these names (and says what is missing) when it loads
    if model in registered_names() or model in weights_entries():
        _check_registered(model, checkpoint, tokenizer, fetch)
        return
    if path.is_dir():
        _check_directory(path, checkpoint, tokenizer)
        return
    if path.is_file():
        if path.suffix != ".json":
            raise PrecheckError(f"--model {model}: a file, but not a config JSON; pass a checkpoint as --checkpoint "
                                "FILE with --model CONFIG (a shipped name or a config JSON)")
        check_model_config(path)
        _needs_checkpoint(model, checkpoint, tokenizer)
        return
    if model in config_names():
        _needs_checkpoint(model, checkpoint, tokenizer)
        return
    if plugins_installed():
        return  # a plug-in family may claim it
    if "/" in model or model.startswith((".", "~")):
        raise PrecheckError(f"--model {model}: no such model directory")
    raise PrecheckError(unknown("model", model, model_names(), extra="or a model directory (see `ccmb-bench models`)"))


def _check_registered(model: str, checkpoint: Optional[str], tokenizer: Optional[str], fetch: bool) -> None:
    entry = weights_entries().get(model, {})
    if model not in registered_names():
        config = entry.get("config")
        if config:  # a weights entry for a config (e.g. a fine-tuned checkpoint), not a bench name
            where = _home_models() / model
            raise PrecheckError(f"{model} is a weights entry of config {config}, not a registered model: run it "
                                f"as --model {config} --checkpoint {where} (after `ccmb fetch model {model}`)")
        return
    if "checkpoint" not in entry or checkpoint is not None or fetch:
        return  # fetched by name when missing, or a folder of the family's own (Chinese-CLIP)
    where = _home_models() / model
    if not (where.is_dir() and weights_in(where) is not None):
        raise PrecheckError(f"no weights for {model} in {where}, and --no-fetch (or CCMB_OFFLINE=1) forbids fetching "
                            f"them{_how_to_get(model)}; put the checkpoint (.pth) and vocab.txt in {where}/ or pass "
                            "--checkpoint FILE")


def _how_to_get(model: str) -> str:
    """``; get them with `ccmb fetch model NAME` (...)`` for a name with a weights entry, else ``""``."""
    entry = weights_entries().get(model)
    if entry is None:
        return ""
    from models.hub import R2D2_RELEASES

    listed = f"listed at {R2D2_RELEASES}; " if "checkpoint" in entry else ""
    manual = f"by hand: {entry['manual']}" if entry.get("manual") else ""
    return f"; get the weights of {model} with `ccmb fetch model {model}` ({listed}{manual})"


def _check_directory(path: Path, checkpoint: Optional[str], tokenizer: Optional[str]) -> None:
    if (path / OPEN_CLIP_CONFIG).is_file():
        return  # an open_clip folder: its family reads it
    folder = run_model_dir(path)
    cfg = folder / CONFIG_FILE
    if not cfg.exists():
        if plugins_installed():
            return
        raise PrecheckError(f"{path}: not a model directory: no {CONFIG_FILE} (expected a trainer output with "
                            "config.json + model.safetensors, a ccmb train run folder, or a saved transformers "
                            "model)")
    data = check_model_config(cfg)
    if "model_type" in data:
        return  # a transformers folder holds its own weights and tokenizer
    weights = Path(checkpoint) if checkpoint else weights_in(folder)
    if weights is None:
        raise PrecheckError(f"{folder}: no model.safetensors or .pth checkpoint in this directory")
    if tokenizer is None and find_tokenizer(folder, weights.parent) is None:
        raise PrecheckError(f"{folder}: no tokenizer (vocab.txt or tokenizer.json) next to the model; pass "
                            "--tokenizer PATH")


def _needs_checkpoint(model: str, checkpoint: Optional[str], tokenizer: Optional[str]) -> None:
    if checkpoint is None:
        raise PrecheckError(f"config {model!r} needs --checkpoint FILE (an official .pth or a .safetensors)")
    if tokenizer is None and find_tokenizer(Path(checkpoint)) is None:
        raise PrecheckError(f"no tokenizer for {model}: put vocab.txt next to {checkpoint} or pass --tokenizer PATH")


def expand_datasets(names: Sequence[str]) -> List[str]:
    """``all`` -> every registered dataset (the ``elevater-cn/<name>`` pattern excluded); validates names
    (an unknown one: :class:`ccmb.datasets.UnknownDatasetError` with "did you mean")."""
    from ccmb import datasets as ds

    out: List[str] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        if name == "all":
            out += [s.name for s in ds.list_datasets() if "<" not in s.name]
        else:
            out.append(ds.get_spec(name).name)
    if not out:
        raise PrecheckError("--dataset: no dataset named (give NAME[,NAME...] or 'all')")
    return list(dict.fromkeys(out))


def check_data(dataset_names: Sequence[str], root: Path, split: Optional[str], params: Dict[str, Any],
               fetch: bool) -> List[str]:
    """Dataset names, the split of each dataset named explicitly, and the data root; returns the names."""
    from ccmb import datasets as ds
    from ccmb.datasets import sources

    names = expand_datasets(dataset_names)
    explicit = [] if any(d.strip() == "all" for d in dataset_names) else names
    if split:
        for name in explicit:
            ds.get_spec(name).check_split(split, params)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise PrecheckError(f"--root {root}: not a folder")
    if not root.exists() and not (fetch and any(sources.is_fetchable(n) for n in names)):
        layouts = "\n\n".join(f"[{n}]\n{ds.get_spec(n).render_layout(split)}" for n in names[:3])
        more = f"\n\n(and {len(names) - 3} more datasets)" if len(names) > 3 else ""
        raise PrecheckError(f"data root {root} does not exist; expected layout:\n{layouts}{more}")
    return names


def check_run(model: str, dataset_names: Sequence[str], root: Path, *, split: Optional[str] = None,
              params: Optional[Dict[str, Any]] = None, checkpoint: Optional[str] = None,
              tokenizer: Optional[str] = None, fetch: bool = True) -> List[str]:
    """Every check of ``ccmb-bench run`` that needs no model: datasets, split, root, then the model."""
    names = check_data(dataset_names, root, split, params or {}, fetch)
    check_model(model, checkpoint, tokenizer, fetch)
    return names


def set_offline(offline: bool) -> None:
    """With ``offline`` (``--no-fetch``, ``CCMB_OFFLINE=1``), put transformers and huggingface_hub offline too
    (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``): nothing is downloaded and no retries are spent. Call it
    before they are imported: they read these variables once."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
