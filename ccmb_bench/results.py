"""Result files: one JSON per (model, dataset, task), written atomically, and reading them back."""
from __future__ import annotations

import json
import logging
import platform
import re
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ccmb.atomic import write_json

log = logging.getLogger(__name__)

SCHEMA = "ccmb-bench/result/v1"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part) or "_"


def result_path(output: Path, model: str, dataset: str, task: str, split: str, fingerprint: str = "") -> Path:
    """``results/<model>__<fingerprint[:8]>__<dataset>__<split>__<task>.json`` (two checkpoints of one
    registered model never overwrite each other)."""
    fp = _safe(fingerprint.split(":")[-1][:8]) if fingerprint else "nofp"
    return Path(output) / "results" / f"{_safe(model)}__{fp}__{_safe(dataset)}__{_safe(split)}__{_safe(task)}.json"


def versions() -> Dict[str, str]:
    import numpy
    import torch
    import transformers

    from ccmb import __version__

    return {"ccmb": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def make_result(model: Dict[str, Any], dataset: str, split: str, task: str, metrics: Dict[str, Any],
                device: str, timing: Dict[str, float], settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"schema": SCHEMA, "model": model["model"], "model_kind": model.get("kind", ""),
            "checkpoint_fingerprint": model.get("fingerprint", ""), "dataset": dataset, "split": split,
            "task": task, "metrics": metrics, "settings": settings or {}, "versions": versions(),
            "device": device, "host": socket.gethostname(), "timing": timing,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_result(output: Path, result: Dict[str, Any]) -> Path:
    """Write ``result`` atomically (temp file + rename: two concurrent runs leave one complete file)."""
    path = result_path(output, result["model"], result["dataset"], result["task"], result["split"],
                       result.get("checkpoint_fingerprint", ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    log.info("wrote %s", path)
    return path


def iter_results(directory: Path) -> Iterator[Dict[str, Any]]:
    """Every result JSON under ``directory`` (recursively); unreadable or foreign files are reported and
    skipped."""
    for path in sorted(Path(directory).rglob("*.json")):
        if "cache" in path.parts:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s: not a readable JSON result (%s); skipped", path, exc)
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            continue
        data["_path"] = str(path)
        yield data


def load_results(directory: Path) -> List[Dict[str, Any]]:
    return list(iter_results(directory))
