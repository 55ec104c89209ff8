"""The implicit fetch of ``ccmb-bench run``: weights and public data that are missing are fetched by name
(``models.hub``, ``ccmb.datasets.sources``) before the run gives up; ``--no-fetch`` forbids it.

Only what is missing is fetched: the model when loading it raised :class:`MissingCheckpointError` (a registered
name without ``--checkpoint``), a dataset when loading it raised ``MissingDataError`` and the set has sources.
When a fetch fails too, the original error is raised with the fetch's report (sources tried, manual steps)
appended; sets without sources get their manual steps appended.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

logger = logging.getLogger(__name__)


def load_adapter_or_fetch(load: Callable[..., Any], model: str, checkpoint: Optional[str], device: str,
                          tokenizer: Optional[str], fetch: bool):
    """``load(model, checkpoint=..., device=..., tokenizer=...)``; on a missing checkpoint of a name with a
    weights entry, fetch it into ``$CCMB_HOME/models/<name>`` and load again."""
    from ccmb_bench.adapters import MissingCheckpointError

    try:
        return load(model, checkpoint=checkpoint, device=device, tokenizer=tokenizer)
    except MissingCheckpointError as exc:
        from models import hub

        if checkpoint is not None or model not in hub.weights_names():
            raise
        if not fetch:
            raise MissingCheckpointError(f"{exc}\n(--no-fetch or CCMB_OFFLINE=1: not fetched; `ccmb fetch model {model}` "
                                         "downloads it)") from exc
        from ccmb.fetch import FetchError, VerificationError

        logger.warning("%s: weights missing; fetching them (--no-fetch forbids this)", model)
        try:
            hub.fetch_weights(model)
        except (FetchError, VerificationError, OSError) as fexc:
            raise MissingCheckpointError(f"{exc}\nautomatic fetch failed: {fexc}") from fexc
        return load(model, checkpoint=checkpoint, device=device, tokenizer=tokenizer)


def load_data_or_fetch(load: Callable[..., Any], missing_error: type, name: str, root: Path,
                       split: Optional[str], params: Any, fetch: bool):
    """``load(name, root, split, params)``; when it raises ``missing_error`` and ``name`` has sources, fetch
    the set into ``root`` and load again (sets without sources: the manual steps are appended)."""
    from ccmb.datasets import sources

    try:
        return load(name, root, split, params)
    except missing_error as exc:
        try:
            fetchable = sources.is_fetchable(name)
            steps = sources.manual_steps(name, Path(root))
        except sources.NoSourceError:
            raise exc from None
        if not fetchable:
            raise missing_error(f"{exc}\nhow to get it: {steps}") from exc
        if not fetch:
            raise missing_error(f"{exc}\n(--no-fetch or CCMB_OFFLINE=1: not fetched; `ccmb fetch dataset {name} --root {root}` "
                                "downloads it)") from exc
        from ccmb.fetch import FetchError, VerificationError

        logger.warning("%s: data missing under %s; fetching it (--no-fetch forbids this)", name, root)
        try:
            sources.fetch_dataset(name, Path(root))
        except (FetchError, VerificationError, OSError) as fexc:
            raise missing_error(f"{exc}\nautomatic fetch failed: {fexc}") from fexc
        return load(name, root, split, params)


def prepare_root(names: Sequence[str], root: Path, fetch: bool) -> None:
    """Create a missing data root when one of ``names`` can be fetched into it."""
    from ccmb.datasets import sources

    if fetch and not Path(root).exists() and any(sources.is_fetchable(n) for n in names):
        Path(root).mkdir(parents=True, exist_ok=True)
