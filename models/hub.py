"""Official R2D2 / PRD2 weights by name: the sources in ``models/weights.json`` and the expected checkpoint keys in
``models/official_keys.json``, fetched with the generic layer ``ccmb.fetch`` into ``$CCMB_HOME/models/<name>/``
(the folder ``ccmb-bench run --model <name>`` reads).

Each entry names a config, a checkpoint (sources in order, size/sha256 when published) and the tokenizer file;
a fetched checkpoint must hold every official key with its shape (the loader's ignorable keys — position ids,
the cross encoders' unused embeddings — may be absent).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ccmb.fetch import Artifact, FetchResult, fetch_artifact, models_dir
from ccmb.fetch.core import file_spec_from_dict
from ccmb.suggest import unknown

WEIGHTS_FILE = Path(__file__).with_name("weights.json")
#: where the official R2D2 / PRD2 checkpoints are listed (their README)
R2D2_RELEASES = "https://github.com/yuxie11/R2D2 (README 'Pre-trained models' / 'Fine-tuned models')"
KEYS_FILE = Path(__file__).with_name("official_keys.json")


class UnknownWeightsError(ValueError):
    """A name without a weights entry (the message lists the known names)."""


@functools.lru_cache(maxsize=None)
def _registry() -> Dict[str, Any]:
    return json.loads(WEIGHTS_FILE.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def official_keys() -> Dict[str, Dict[str, List[int]]]:
    """``{config name: {key: shape}}`` of the full-size official checkpoints."""
    return json.loads(KEYS_FILE.read_text(encoding="utf-8"))


def weights_names(registry: Optional[Mapping[str, Any]] = None) -> List[str]:
    return list((registry or _registry())["models"])


def entry(name: str) -> Dict[str, Any]:
    """The raw ``weights.json`` entry of ``name`` (empty when there is none)."""
    return dict(_registry()["models"].get(name, {}))


def artifact(name: str, registry: Optional[Mapping[str, Any]] = None,
             keys: Optional[Mapping[str, Mapping[str, Sequence[int]]]] = None) -> Artifact:
    """The fetchable entry ``name`` (``registry``/``keys`` default to the shipped JSON files)."""
    from models.keys import IGNORABLE_KEY_PATTERNS

    reg = registry or _registry()
    entries = reg["models"]
    if name not in entries:
        raise UnknownWeightsError(unknown("model", name, entries))
    entry = entries[name]
    where = f"{WEIGHTS_FILE.name}:{name}"
    keys = keys if keys is not None else official_keys()
    files = [file_spec_from_dict(f, where) for f in entry.get("files", [])]  # e.g. a transformers folder
    if "checkpoint" in entry:
        expected = keys.get(entry.get("keys") or entry.get("config", ""))  # None: no key list for this config
        files.append(file_spec_from_dict(entry["checkpoint"], where, expected_keys=expected,
                                         optional_keys=IGNORABLE_KEY_PATTERNS))
    tok = entry.get("tokenizer")
    if tok:
        shared = reg.get("files", {})
        if tok not in shared:
            raise ValueError(f"{where}: tokenizer file {tok!r} is not in the 'files' section")
        files.append(file_spec_from_dict(shared[tok], where))
    return Artifact(kind="models", name=name, files=tuple(files), manual=entry.get("manual", ""),
                    description=entry.get("description", ""))


def model_dir(name: str) -> Path:
    """``$CCMB_HOME/models/<name>``."""
    return models_dir() / name


def fetch_weights(name: str, folder: Optional[Path] = None, *, allow_file: bool = False,
                  offline: Optional[bool] = None, registry: Optional[Mapping[str, Any]] = None,
                  keys: Optional[Mapping[str, Mapping[str, Sequence[int]]]] = None,
                  report: Optional[Callable[[str], None]] = None) -> FetchResult:
    """Fetch (or verify the cached copy of) the weights and tokenizer of ``name`` into ``folder``
    (default ``$CCMB_HOME/models/<name>``); ``report`` receives a line per thing tried."""
    art = artifact(name, registry, keys)
    return fetch_artifact(art, Path(folder) if folder else model_dir(name), allow_file=allow_file, offline=offline,
                          report=report)


def describe(registry: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
    """One row per entry: name, config, description, files with their sources."""
    reg = registry or _registry()
    rows = []
    for name, entry in reg["models"].items():
        files = list(entry.get("files", [])) + ([entry["checkpoint"]] if "checkpoint" in entry else []) \
            + ([reg["files"][entry["tokenizer"]]] if entry.get("tokenizer") else [])
        rows.append({"name": name, "kind": entry.get("kind", "r2d2"), "config": entry.get("config", ""),
                     "description": entry.get("description", ""),
                     "folder": str(model_dir(name)),
                     "files": [{"name": f["name"], "size": f.get("size"), "sha256": f.get("sha256"),
                                "sources": f.get("sources", [])} for f in files],
                     "manual": entry.get("manual", "")})
    return rows
