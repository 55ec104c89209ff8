"""The options of ``ccmb-bench run`` as data (a light module: the CLI reads its defaults from here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ccmb_bench.protocols import DEFAULT_PROTOCOL

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


@dataclass
class RunOptions:
    root: Path
    output: Path = Path("bench_out")
    split: Optional[str] = None
    device: str = "auto"
    batch_size: int = 64
    top_k: Optional[int] = None  # R2D2 re-ranking candidates (None: the dataset's registry entry, else the model's)
    skip_existing: bool = False
    cache: bool = True
    rerank: bool = True
    params: Dict[str, Any] = field(default_factory=dict)
    predictions: Optional[str] = None
    generated: Optional[str] = None
    caption_pool: str = "train"
    max_hidden_gb: float = 8.0  # matching with cross encoders: stream pairs above this
    setting: str = ""  # free label shown in the leaderboard (e.g. zero-shot, fine-tuned)
    protocol: str = DEFAULT_PROTOCOL  # official (each dataset's reference evaluation) or strict
    bootstrap: int = DEFAULT_RESAMPLES  # resamples of the 95% intervals (0: none)
    bootstrap_seed: int = DEFAULT_SEED
    fetch: bool = False  # fetch missing weights / public data by name (the CLI turns it on; --no-fetch)


def default(name: str) -> Any:
    """The default of option ``name`` of :class:`RunOptions`."""
    for f in dataclasses.fields(RunOptions):
        if f.name == name:
            return f.default
    raise KeyError(name)
