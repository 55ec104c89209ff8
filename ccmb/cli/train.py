"""``ccmb train``: pre-train R2D2/PRD2 on ccmb shards and fine-tune on the downstream sets.

Both commands run unchanged as one process (CPU or one GPU) or under
``torchrun --nproc_per_node N [--nnodes M --node_rank R --master_addr HOST --master_port PORT]``
(``ccmb`` is a console script, so torchrun runs it by path: ``torchrun ... "$(which ccmb)" train ...``;
see docs/training.md).

This module is a composition root: it wires ``ccmb.datasets`` (data), ``models.train`` (trainer) and
``ccmb_bench.tasks`` (the per-epoch evaluation callback ``evaluate_fn(model, epoch) -> metrics``; the
trainer itself never imports the benchmark).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import click

from ..clikit import input_errors_as_click

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ evaluation callback
#: Metric that chooses the best fine-tuning epoch, per task (names of ccmb_bench's task results).
SELECT_METRIC = {"retrieval": "MR", "matching": "AUC"}


def bench_evaluator(task: str, data, tokenizer, batch_size: int = 64) -> Callable:
    """``evaluate_fn(model, epoch) -> metrics`` running ccmb_bench's ``task`` (retrieval: R@1/5/10 per
    direction and ``MR``, two-stage for R2D2; matching: ``AUC`` and accuracy) on ``data`` (a validation
    split), without an embedding cache. Numeric results only."""
    from ccmb.datasets import list_datasets
    from ccmb_bench.adapters import R2D2Adapter
    from ccmb_bench.cache import EmbeddingCache
    from ccmb_bench.protocols import evaluation_rules
    from ccmb_bench.tasks import evaluator

    run = evaluator(task)
    spec = next((sp for sp in list_datasets() if sp.name == getattr(data, "name", None)), None)
    extra = {"top_k": spec.top_k} if task == "retrieval" and spec is not None else {}  # the dataset's top_k
    # the validation numbers (and the best epoch they choose) follow the dataset's official protocol, as
    # ``ccmb-bench run``'s default
    rules, data_format = evaluation_rules(data)
    extra.update(rules=rules, data_format=data_format)
    logger.info("epoch evaluation of %s/%s follows %s", getattr(data, "name", "?"), getattr(data, "split", "?"),
                rules.reference)

    def evaluate(model, epoch: int) -> Dict[str, float]:
        device = str(next(model.parameters()).device)
        adapter = R2D2Adapter(model, tokenizer, name="training", fingerprint=f"epoch{epoch}", device=device)
        cache = EmbeddingCache(None, "training", f"epoch{epoch}", data.name, data.split)
        out = run(adapter, data, cache, batch_size=batch_size, **extra)
        return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return evaluate


# ------------------------------------------------------------------------------------------ checks
# Everything that can be judged from names and paths is checked before torch is imported (within a second).
def _check_config(model_config: str) -> None:
    """A shipped config name, a config JSON or a model folder whose config builds (``models.config``, light)."""
    from models.config import get_config

    get_config(model_config)  # ConfigError (a ValueError): "did you mean", or the file and the field


def _check_shards(shards: str) -> None:
    """A local shard set: tars that exist and a ``sizes.json`` beside them (remote URLs are left to the run)."""
    from ..shards import SIZES_FILE, list_shards

    if "://" in shards:
        return
    try:
        paths = list_shards(shards)
    except FileNotFoundError as exc:
        raise click.BadParameter(f"{exc} (a folder of NNNNN.tar, a tar, or DIR/{{00000..00099}}.tar)",
                                 param_hint="--shards") from None
    if not paths:
        raise click.BadParameter(f"no NNNNN.tar shards in {shards} (make them with `ccmb build-shards` or "
                                 "`ccmb download`)", param_hint="--shards")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise click.BadParameter(f"shard not found: {missing[0]} (from {shards})", param_hint="--shards")
    for folder in dict.fromkeys(p.parent for p in paths):
        if not (folder / SIZES_FILE).is_file():
            raise click.BadParameter(f"{folder / SIZES_FILE}: missing (not a finished shard set: finish it with "
                                     "`ccmb build-shards` or `ccmb shards finalize`)", param_hint="--shards")


def _check_dataset(dataset: str, *splits: str, task: Optional[str] = None, root: Optional[str] = None):
    """A registered dataset with these splits (and of ``task``); returns its spec."""
    from ..datasets import get_spec

    spec = get_spec(dataset)  # UnknownDatasetError: "did you mean"
    for split in splits:
        spec.check_split(split)  # UnknownSplitError: the splits it has
    if task is not None and spec.task != task:
        raise click.UsageError(f"{spec.name} is a {spec.task} dataset, not {task}")
    return spec


# ------------------------------------------------------------------------------------------ CLI
def _checkpoint_errors_as_click(func: Callable) -> Callable:
    """A corrupt checkpoint or model file (``models.CheckpointError``, its message names the file) is shown as
    ``Error: ...`` like other input errors."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # a CheckpointError means models.loading (and torch) is loaded: never import it here
            loading = sys.modules.get("models.loading")
            if loading is None or not isinstance(exc, loading.CheckpointError):
                raise
            logger.debug("traceback", exc_info=True)
            raise click.ClickException(str(exc)) from exc
    return wrapper


#: files a trainer's run folder holds (``models/train``): a folder with them and no owner marker is an older run
RUN_FILES = ("train_config.json", "run_args.json")


def _is_older_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in RUN_FILES)


def _claim_run(output: str):
    """The run folder, claimed (a new or empty folder, or a run of ours: a user's folder is never written, since
    the trainer replaces ``model/``, ``best/`` and old checkpoints) and locked for the run; on the main rank
    only (``RANK`` of torchrun): the other ranks write nothing there but their share of the log."""
    import contextlib
    import os

    from ..outdir import FolderLock, claim

    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    folder = claim(output, "training run", legacy=_is_older_run,
                   hint="choose a new --output (or the run folder itself to resume it)")
    return FolderLock(folder)


def _print_record(record: Dict[str, Any]) -> None:
    from models.train.config import LOG_LOSS_KEYS

    if "eval" in record:
        metrics = " ".join(f"{k} {v:.2f}" for k, v in record["eval"].items())
        click.echo(f"eval epoch {record['epoch']} step {record['step']}: {metrics}")
        return
    losses = " ".join(f"{k} {record[k]:.4f}" for k in LOG_LOSS_KEYS if record.get(k) is not None)
    total = record.get("total_steps")
    where = f"step {record['step']}/{total}" if total else f"step {record['step']}"
    eta = record.get("eta_s")
    eta_text = f" | ETA {_duration(eta)}" if eta is not None else ""
    click.echo(f"{where} epoch {record['epoch']} | {losses} | lr {record['lr']:.3e} "
               f"temp {record['temp']:.4f} | {record['samples_per_s']:.1f} samples/s "
               f"({record['samples_per_s_per_device']:.1f}/{record.get('device_kind', 'device')}){eta_text}",
               nl=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _defaults(field: str) -> str:
    """' [default: pretrain X, finetune Y]' from the config dataclasses (the one source of defaults)."""
    from models.train.config import TrainConfig, finetune_defaults

    def get(cfg):
        return getattr(cfg.losses, field[5:]) if field.startswith("loss_") else getattr(cfg, field)

    pre, ret, mat = get(TrainConfig()), get(finetune_defaults("retrieval")), get(finetune_defaults("matching"))
    if pre == ret == mat:
        return f" [default: {pre}]"
    fine = ret if ret == mat else f"retrieval {ret}, matching {mat}"
    return f" [default: pretrain {pre}; finetune {fine}]"


#: (option, TrainConfig field, type, help): the flags that override the training config.
_POSITIVE = click.IntRange(1)
_NATURAL = click.IntRange(0)
_CONFIG_OPTIONS = (
    ("--steps", "steps", _POSITIVE, "Optimizer steps (wins over --epochs)."),
    ("--epochs", "epochs", _POSITIVE, "Epochs (pre-training: virtual epochs from sizes.json)."),
    ("--batch-size", "batch_size", _POSITIVE, "Samples per process per micro-batch."),
    ("--grad-accum", "grad_accum", _POSITIVE, "Micro-batches per optimizer step."),
    ("--lr", "lr", click.FloatRange(0, min_open=True), "Peak learning rate (AdamW)."),
    ("--weight-decay", "weight_decay", click.FloatRange(0), "AdamW weight decay (matrices only)."),
    ("--warmup-steps", "warmup_steps", _NATURAL, "Linear warm-up steps."),
    ("--clip-grad", "clip_grad", click.FloatRange(0), "Max global grad norm (0: off)."),
    ("--num-workers", "num_workers", _NATURAL, "DataLoader workers per process."),
    ("--seed", "seed", _NATURAL, "Seed of weights, data order, augmentation and masking."),
    ("--log-every", "log_every", _POSITIVE, "Log a line every N steps (and at the first step)."),
    ("--save-every", "save_every", _NATURAL, "Checkpoint every N steps (0: only the final model)."),
    ("--keep-last", "keep_last", _POSITIVE, "Checkpoints kept."),
    ("--queue-size", "loss_queue_size", _POSITIVE, "TgD feature-queue length."),
    ("--momentum", "loss_momentum", click.FloatRange(0, 1), "EMA momentum of the distillation teacher."),
    ("--patch-drop-ratio", "loss_patch_drop_ratio", click.FloatRange(0, 1, max_open=True),
     "FgD: share of image patch tokens the student drops."),
)


def _train_options(f):
    """Options shared by pretrain and finetune (None = keep the recipe's default). The loss weights are
    generated from ``models.train.config.LOSSES``; defaults shown come from the config dataclasses."""
    from models.train.config import LOSSES, STUDENT_VIEWS

    opts = [
        click.option("--train-config", type=click.Path(exists=True, dir_okay=False),
                     help="JSON of training hyper-parameters (models.train.TrainConfig); flags override it."),
        click.option("--tokenizer", type=click.Path(exists=True),
                     help="vocab.txt or a tokenizer directory (default: --init-text)."),
    ]
    opts += [click.option(flag, field, type=kind, help=text + _defaults(field))
             for flag, field, kind, text in _CONFIG_OPTIONS]
    opts += [
        click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]),
                     help="auto = bf16 autocast on GPU, fp32 on CPU." + _defaults("precision")),
        click.option("--grad-checkpointing/--no-grad-checkpointing", default=None),
        click.option("--freeze-vision/--train-vision", default=None, help="Freeze the ViT." + _defaults("freeze_vision")),
    ]
    opts += [click.option(f"--{spec.name}", f"loss_{spec.name}", type=click.FloatRange(0),
                          help=f"{spec.name.upper()} weight, 0 disables: {spec.help}." + _defaults(f"loss_{spec.name}"))
             for spec in LOSSES]
    opts += [
        click.option("--fgr-negatives", "loss_fgr_negatives", type=click.Choice(["global", "local"]),
                     help="FGR hard negatives from the global batch (gathers hidden states with gradient) or this "
                          "rank's." + _defaults("loss_fgr_negatives")),
        click.option("--student-view", "loss_student_view", type=click.Choice(list(STUDENT_VIEWS)),
                     help="With FgD on: the student sees the full input plus a masked FgD pass (full), or only "
                          "FgD's masked input, read by every loss (masked: about half the cost at ViT-B/16)."
                          + _defaults("loss_student_view")),
        click.option("--resume", type=str, help="'latest' (of --output; falls back to the newest intact "
                                                "checkpoint) or a checkpoint folder."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _train_keys():
    from models.train.config import LOSS_NAMES

    return ([field for _, field, _, _ in _CONFIG_OPTIONS] + ["precision", "grad_checkpointing", "freeze_vision",
            "loss_fgr_negatives", "loss_student_view"] + [f"loss_{n}" for n in LOSS_NAMES])


def _build_cfg(base, train_config: Optional[str], kw: Dict[str, Any]):
    from models.train.config import TrainConfig

    cfg = TrainConfig.from_json(train_config) if train_config else base
    return cfg.override(**{k: kw.get(k) for k in _train_keys()})


@click.group("train")
def train_group() -> None:
    """Train R2D2/PRD2: pre-training on shards, fine-tuning on downstream sets (1 process or torchrun).

    \b
    Examples:
      ccmb train pretrain --config r2d2-tiny --shards shards/ --tokenizer vocab.txt --output runs/tiny --steps 100
    """
    import os

    # tokenisation runs in forked DataLoader workers: keep the Rust tokenizer single-threaded there
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@train_group.command("pretrain")
@click.option("--config", "model_config", required=True,
              help="Model config: a shipped name (r2d2-tiny, r2d2-vitb16, r2d2-vitl14, prd2-...) or a JSON file.")
@click.option("--shards", required=True, help="Shard folder or brace pattern DIR/{00000..00099}.tar; local or an "
              "fsspec URL (s3://bucket/shards).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--init-vision", type=click.Path(exists=True, file_okay=False), help="HF CLIP directory.")
@click.option("--init-text", type=click.Path(exists=True, file_okay=False), help="HF BERT directory.")
@click.option("--init", "init_dir", type=click.Path(exists=True, file_okay=False),
              help="Start from a saved model folder (config.json + model.safetensors).")
@click.option("--text-choice", type=click.Choice(["random", "title", "content", "query", "txt"]),
              help="Which text of a sample each step uses (default random).")
@click.option("--objective", type=click.Choice(["r2d2", "clip"]), default="r2d2", show_default=True,
              help="clip = InfoNCE alone (baseline).")
@click.option("--eval-dataset", help="Zero-shot retrieval set evaluated after every (virtual) epoch, e.g. icr.")
@click.option("--eval-root", type=click.Path(exists=True, file_okay=False), help="Root of --eval-dataset.")
@click.option("--eval-split", default="val", show_default=True)
@_train_options
@input_errors_as_click
@_checkpoint_errors_as_click
def pretrain_cmd(model_config, shards, output, init_vision, init_text, init_dir, text_choice, objective,
                 eval_dataset, eval_root, eval_split, train_config, tokenizer, resume, device, **kw) -> None:
    """Pre-train on a ccmb shard set (GCPR + FGR + TgD + FgD).

    \b
    Examples:
      ccmb train pretrain --config r2d2-tiny --shards shards/ --tokenizer vocab.txt --output runs/tiny --steps 100
      torchrun --nproc_per_node 8 "$(which ccmb)" train pretrain --config r2d2-vitb16 \\
          --shards '/data/zero/{00000..02299}.tar' --init-vision clip-vit-b16/ --init-text roberta-wwm/ \\
          --output runs/zero2m --epochs 10 --batch-size 128
    """
    _check_config(model_config)
    _check_shards(shards)
    if not (tokenizer or init_text or (init_dir and (Path(init_dir) / "vocab.txt").is_file())):
        raise click.UsageError("a tokenizer is needed: pass --tokenizer (vocab.txt or a directory), --init-text, "
                               "or an --init model folder that holds vocab.txt")
    if eval_dataset:
        if not eval_root:
            raise click.UsageError("--eval-dataset needs --eval-root")
        if eval_split == "test":
            raise click.UsageError("evaluate on a validation split during training, never on test")
        spec = _check_dataset(eval_dataset, eval_split)
        if spec.task != "retrieval":
            raise click.UsageError(f"{eval_dataset} is a {spec.task} dataset; pre-training evaluates retrieval")

    run_lock = _claim_run(output)
    from models.train.config import TrainConfig
    from models.train.pretrain import pretrain

    cfg = _build_cfg(TrainConfig(), train_config, kw)
    if text_choice:
        cfg = cfg.override(text_choice=text_choice)
    evaluate_fn = None
    if eval_dataset:
        from ccmb.datasets import load_dataset
        from models.tokenizer import load_tokenizer

        data = load_dataset(eval_dataset, eval_root, eval_split)
        evaluate_fn = bench_evaluator("retrieval", data, load_tokenizer(tokenizer or init_text))
    with run_lock:
        result = pretrain(model_config, shards, output, cfg, tokenizer_path=tokenizer, init_vision=init_vision,
                          init_text=init_text, init=init_dir, resume=resume, device=device, objective=objective,
                          evaluate_fn=evaluate_fn, on_log=_print_record)
    if result.final_dir:
        click.echo(f"done: {result.steps} steps; model in {result.final_dir}")


@train_group.command("finetune")
@click.option("--task", required=True, type=click.Choice(["retrieval", "matching"]))
@click.option("--dataset", required=True, help="Dataset name of ccmb.datasets (icr, iqr, icm, iqm, flickr30k-cna...).")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False), help="Dataset root.")
@click.option("--init", "init", required=True, type=click.Path(exists=True),
              help="Model folder (config.json + model.safetensors) or an official .pth (with --config).")
@click.option("--config", "model_config", help="Model config for a .pth --init.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--train-split", default="train", show_default=True)
@click.option("--val-split", default="val", show_default=True,
              help="Split evaluated each epoch; the best checkpoint is chosen on it (never on test).")
@click.option("--select-metric", help="Metric choosing the best epoch (default: MR for retrieval, AUC for "
                                      "matching).")
@click.option("--eval-batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--no-eval", is_flag=True, help="Skip the per-epoch evaluation.")
@_train_options
@input_errors_as_click
@_checkpoint_errors_as_click
def finetune_cmd(task, dataset, root, init, model_config, output, train_split, val_split, select_metric,
                 eval_batch_size, no_eval, train_config, tokenizer, resume, device, **kw) -> None:
    """Fine-tune on a downstream set (released recipe: vision frozen, AdamW lr 1e-5 / matching 3e-6,
    wd 0.05, 500 warm-up steps, cosine).

    \b
    Examples:
      ccmb train finetune --task retrieval --dataset icr --root /data/ccmb --init runs/zero2m/model \\
          --tokenizer roberta-wwm/ --output runs/icr
    """
    if val_split == "test" and not no_eval:
        raise click.UsageError("the best checkpoint is chosen on validation, never on test: pick --val-split")
    _check_dataset(dataset, train_split, *([] if no_eval else [val_split]), task=task)
    if Path(init).is_dir():
        _check_config(init)
    elif model_config:
        _check_config(model_config)
    else:
        raise click.UsageError(f"--init {init} is a checkpoint file: pass --config (its model config)")
    if tokenizer is None and Path(init).is_dir() and (Path(init) / "vocab.txt").is_file():
        tokenizer = str(Path(init) / "vocab.txt")  # a trainer output folder carries its tokenizer
    if tokenizer is None:
        raise click.UsageError("--tokenizer is required (vocab.txt or a tokenizer directory) unless --init is a "
                               "model folder with vocab.txt")

    run_lock = _claim_run(output)
    from ccmb.datasets import load_dataset
    from models.tokenizer import load_tokenizer
    from models.train.config import finetune_defaults
    from models.train.finetune import finetune

    cfg = _build_cfg(finetune_defaults(task), train_config, kw)
    cfg = cfg.override(select_metric=select_metric or SELECT_METRIC[task])
    train_data = load_dataset(dataset, root, train_split)
    if getattr(train_data, "task", task) != task:
        raise click.UsageError(f"{dataset} is a {train_data.task} dataset, not {task}")
    evaluate_fn = None
    if not no_eval:
        val_data = load_dataset(dataset, root, val_split)
        tok = load_tokenizer(tokenizer)
        evaluate_fn = bench_evaluator(task, val_data, tok, eval_batch_size)
    else:
        cfg = cfg.override(select_metric="")
    with run_lock:
        result = finetune(task, train_data, init, output, cfg, tokenizer_path=tokenizer, config=model_config,
                          device=device, evaluate_fn=evaluate_fn, resume=resume, on_log=_print_record)
    if result.final_dir:
        msg = f"done: {result.steps} steps; last model in {result.final_dir}"
        if result.best_dir:
            msg += f"; best {cfg.select_metric} {result.best_metric:.2f} in {result.best_dir}"
        click.echo(msg)
