"""``ccmb-bench run``: evaluate one model on datasets, with an embedding cache and one result JSON each."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ccmb import datasets as ds
from ccmb_bench import bootstrap as boot
from ccmb_bench.adapters import ModelAdapter, load_adapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.fetching import load_adapter_or_fetch, load_data_or_fetch, prepare_root
from ccmb_bench.options import RunOptions
from ccmb_bench.precheck import check_data, check_model, expand_datasets  # noqa: F401 (expand_datasets: API)
from ccmb_bench.protocols import Protocol, resolve
from ccmb_bench.results import make_result, result_path, training_data, write_per_query, write_result
from ccmb_bench.tasks import evaluator
from ccmb_bench.tasks.views import ViewError

logger = logging.getLogger(__name__)


class MissingDataError(FileNotFoundError):
    """A dataset root without the expected files (the message shows the layout from the registry)."""


class DeviceError(RuntimeError):
    """The requested device is not available."""


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda: CUDA is not available here (torch "
                           f"{torch.__version__}); use --device cpu or auto")
    return device


def load_data(name: str, root: Path, split: Optional[str], params: Dict[str, Any]):
    spec = ds.get_spec(name)
    try:
        return ds.load_dataset(name, root, split=split, **params)
    except FileNotFoundError as exc:  # DatasetNotFoundError, missing images
        raise MissingDataError(f"{name}: {exc}\nexpected layout under {root}:\n"
                               f"{spec.render_layout(split)}") from exc


def task_kwargs(spec: ds.DatasetSpec, opts: RunOptions, adapter: ModelAdapter, protocol: Protocol,
                cache_root: Optional[Path], per_query: Dict[str, Any]) -> Dict[str, Any]:
    """The options the evaluator of ``spec.task`` takes (each evaluator refuses unknown ones)."""
    kw: Dict[str, Any] = {"batch_size": opts.batch_size}
    ranked = {"rules": protocol.rules, "data_format": spec.format, "per_query": per_query}
    if spec.task == "retrieval":
        kw.update(top_k=opts.top_k or spec.top_k, rerank=opts.rerank, **ranked)
    elif spec.task == "matching":
        kw.update(max_hidden_gb=opts.max_hidden_gb, **ranked)
    elif spec.task == "classification":
        kw.update(ranked)
    elif spec.task == "captioning":
        kw["predictions"] = opts.predictions
        if not opts.predictions:
            pool_split = opts.caption_pool
            kw["load_pool"] = lambda: load_data(spec.name, opts.root, pool_split, opts.params)
            kw["pool_cache"] = EmbeddingCache(cache_root, adapter.name, adapter.fingerprint, spec.name, pool_split)
    elif spec.task == "text-to-image":
        kw["generated"] = opts.generated
    return kw


def run_one(adapter: ModelAdapter, name: str, opts: RunOptions, device: str,
            training: Optional[Dict[str, Any]] = None) -> Optional[Path]:
    """Evaluate ``adapter`` on dataset ``name``; returns the result path (None when skipped)."""
    spec = ds.get_spec(name)
    split = opts.split or spec.default_split
    protocol = resolve(opts.protocol, spec)
    path = result_path(opts.output, adapter.name, spec.name, spec.task, split, adapter.fingerprint, protocol.name)
    if opts.skip_existing and path.is_file():
        logger.info("%s exists; skipped (--skip-existing)", path)
        return None
    t0 = time.perf_counter()
    data = load_data_or_fetch(load_data, MissingDataError, spec.name, opts.root, split, opts.params, opts.fetch)
    t_load = time.perf_counter() - t0
    cache_root = opts.output / "cache" if opts.cache else None
    cache = EmbeddingCache(cache_root, adapter.name, adapter.fingerprint, spec.name, split)
    per_query: Dict[str, Any] = {}
    kwargs = task_kwargs(spec, opts, adapter, protocol, cache_root, per_query)
    t1 = time.perf_counter()
    metrics = evaluator(spec.task)(adapter, data, cache, **kwargs)
    t_eval = time.perf_counter() - t1
    settings = {"batch_size": opts.batch_size, "rerank": opts.rerank and adapter.has_reranker,
                "params": {k: str(v) for k, v in opts.params.items()}, "cache_hits": cache.hits,
                "cache_misses": cache.misses}
    if kwargs.get("top_k"):
        settings["top_k"] = kwargs["top_k"]
    if opts.setting:
        settings["setting"] = opts.setting
    timing = {"load_s": round(t_load, 3), "evaluate_s": round(t_eval, 3)}
    uncertainty: Dict[str, Any] = {}
    meta = {"ks": [1, 5, 10] if spec.task == "retrieval" else [1, 5], "threshold": 0.5}
    statistic = boot.statistic_for(spec.task, meta) if per_query else None
    if statistic is not None:
        t2 = time.perf_counter()
        cis = boot.confidence_intervals(statistic, per_query, opts.bootstrap, opts.bootstrap_seed)
        timing["bootstrap_s"] = round(time.perf_counter() - t2, 3)
        uncertainty["metrics_ci95"] = {m: ci for m, ci in cis.items() if m in metrics}
        uncertainty["bootstrap"] = {"resamples": opts.bootstrap, "seed": opts.bootstrap_seed}
        uncertainty["per_query_file"] = write_per_query(path, per_query, meta)
    result = make_result(adapter.describe(), spec.name, split, spec.task, metrics, device, timing, settings,
                         protocol=protocol.to_result(), training=training, **uncertainty)
    return write_result(opts.output, result)


def run(model: str, dataset_names: Sequence[str], opts: RunOptions, checkpoint: Optional[str] = None,
        tokenizer: Optional[str] = None) -> List[Path]:
    """Evaluate ``model`` on every dataset of ``dataset_names`` (``all`` for all); the public API of
    ``ccmb-bench run``. Text-to-image without ``generated`` is skipped with a warning in an ``all`` sweep."""
    names = check_data(dataset_names, opts.root, opts.split, opts.params, opts.fetch)  # before anything heavy
    check_model(model, checkpoint, tokenizer, opts.fetch)
    prepare_root(names, opts.root, opts.fetch)
    device = resolve_device(opts.device)
    adapter = load_adapter_or_fetch(load_adapter, model, checkpoint, device, tokenizer, opts.fetch)
    provenance = training_data(model)
    written: List[Path] = []
    sweep = len(names) > 1
    for name in names:
        spec = ds.get_spec(name)
        if spec.task == "text-to-image" and not opts.generated:
            if sweep:
                logger.warning("%s: skipped (text-to-image needs --generated DIR)", name)
                continue
        if sweep:
            split = opts.split or spec.default_split
            try:
                path = run_one(adapter, name, opts, device, provenance)
            except MissingDataError as exc:
                logger.warning("%s/%s: skipped, data missing: %s", name, split, str(exc).splitlines()[0])
                continue
            except ViewError as exc:  # the protocol refuses this data (names the file); the other sets still run
                logger.warning("%s/%s: skipped, the %s protocol refuses the data: %s", name, split, opts.protocol,
                               str(exc).splitlines()[0])
                continue
        else:
            path = run_one(adapter, name, opts, device, provenance)
        if path is not None:
            written.append(path)
    return written
