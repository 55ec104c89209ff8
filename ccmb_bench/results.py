"""Result files: one JSON per (model, dataset, task), written atomically, and reading them back."""
from __future__ import annotations

import logging
import platform
import re
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ccmb.atomic import commit, temp_path_for, write_json
from ccmb_bench.protocols import STRICT, Protocol
from ccmb_bench.resultfiles import UnsafeFileError, json_files, optional_root, read_json, real_root
from ccmb_bench.training import provenance, result_field

logger = logging.getLogger(__name__)

SCHEMA = "ccmb-bench/result/v1"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part) or "_"


def result_path(output: Path, model: str, dataset: str, task: str, split: str, fingerprint: str = "",
                protocol: str = "official") -> Path:
    """``results/<model>__<fingerprint[:8]>__<dataset>__<split>__<task>__<protocol>.json`` (two checkpoints of
    one registered model, or two protocols, never overwrite each other)."""
    fp = _safe(fingerprint.split(":")[-1][:8]) if fingerprint else "nofp"
    return Path(output) / "results" / (f"{_safe(model)}__{fp}__{_safe(dataset)}__{_safe(split)}__{_safe(task)}"
                                       f"__{_safe(protocol)}.json")


PER_QUERY_SUFFIX = ".per_query.npz"


def per_query_path(result_file: Path) -> Path:
    return Path(result_file).with_suffix(PER_QUERY_SUFFIX)


def write_per_query(result_file: Path, per_query: Dict[str, Dict[str, Any]], meta: Dict[str, Any]) -> str:
    """Save the per-query ranks/scores beside ``result_file`` (npz, atomically); returns the path relative
    to the result's folder (the result's ``per_query_file``)."""
    import numpy as np

    from ccmb_bench.bootstrap import flatten

    path = per_query_path(result_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **flatten(per_query, meta))
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.name


def read_per_query(result: Dict[str, Any], result_file: Optional[Path] = None, root: Optional[Path] = None):
    """``(per_query, meta)`` of a result (its ``per_query_file``, relative to the result file, a regular file
    inside ``root``, default the result's folder; arrays checked before they are read); a missing, unsafe or
    unreadable file raises ``ValueError`` naming it."""
    from ccmb_bench.groups import load_per_query

    if result_file is not None:
        result = dict(result, _path=str(result_file))
    return load_per_query(result, optional_root(result.get("_path", "."), root))


def training_data(model: str) -> Dict[str, Any]:
    """What is known of the training data of ``model`` (a trainer run's provenance, see
    :func:`ccmb_bench.training.provenance`; nothing for registered names, whose declarations are read by the
    leaderboard)."""
    return provenance(model)


def _training_field(training: Optional[Dict[str, Any]], dataset: str, split: str) -> Dict[str, Any]:
    return result_field(training, dataset, split)


def versions() -> Dict[str, str]:
    import numpy
    import torch
    import transformers

    from ccmb import __version__

    return {"ccmb": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def make_result(model: Dict[str, Any], dataset: str, split: str, task: str, metrics: Dict[str, Any],
                device: str, timing: Dict[str, float], settings: Optional[Dict[str, Any]] = None, *,
                protocol: Optional[Dict[str, str]] = None, metrics_ci95: Optional[Dict[str, List[float]]] = None,
                per_query_file: Optional[str] = None, bootstrap: Optional[Dict[str, int]] = None,
                training: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A result document: metrics, their 95% intervals, the protocol (``name``, ``reference``, ``version``;
    default: strict, the rules of the metric functions' defaults), the per-query file, the bootstrap settings
    and what is known of the model's training data."""
    return {"schema": SCHEMA, "model": model["model"], "model_kind": model.get("kind", ""),
            "checkpoint_fingerprint": model.get("fingerprint", ""), "dataset": dataset, "split": split,
            "task": task, "protocol": protocol or Protocol("strict", STRICT).to_result(),
            "metrics": metrics, "metrics_ci95": metrics_ci95 or {}, "per_query_file": per_query_file,
            "bootstrap": bootstrap or {"resamples": 0, "seed": None},
            "training_data": _training_field(training, dataset, split),
            "settings": settings or {}, "versions": versions(),
            "device": device, "host": socket.gethostname(), "timing": timing,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_result(output: Path, result: Dict[str, Any]) -> Path:
    """Write ``result`` atomically (temp file + rename: two concurrent runs leave one complete file)."""
    path = result_path(output, result["model"], result["dataset"], result["task"], result["split"],
                       result.get("checkpoint_fingerprint", ""), (result.get("protocol") or {}).get("name", "official"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    logger.info("wrote %s", path)
    return path


def load_result_file(path: Path, root: Optional[Path] = None) -> Dict[str, Any]:
    """One result JSON, read within bounds (a regular file inside ``root``, default its folder); ``_path`` set.
    Raises ``ValueError`` naming the file when it is unsafe, unreadable or not a result."""
    try:
        data = read_json(path, optional_root(path, root))
    except UnsafeFileError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a ccmb-bench result (schema {SCHEMA!r} expected)")
    data["_path"] = str(path)
    return data


def iter_results(directory: Path) -> Iterator[Dict[str, Any]]:
    """Every result JSON under ``directory`` (recursively, ``cache`` folders aside), read within bounds;
    unsafe or unreadable files are reported (one warning each) and skipped, foreign JSONs skipped silently."""
    root = real_root(directory)
    for path in json_files(directory):
        try:
            data = read_json(path, root)
        except UnsafeFileError as exc:
            logger.warning("%s: skipped, %s", path, exc)
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            continue
        data["_path"] = str(path)
        yield data


def load_results(directory: Path) -> List[Dict[str, Any]]:
    return list(iter_results(directory))
