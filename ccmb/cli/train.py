"""``ccmb train``: pre-train R2D2/PRD2 on ccmb shards and fine-tune on the downstream sets.

Both commands run unchanged as one process (CPU or one GPU) or under
``torchrun --nproc_per_node N [--nnodes M --node_rank R --master_addr HOST --master_port PORT]``
(``ccmb`` is a console script, so torchrun runs it by path: ``torchrun ... "$(which ccmb)" train ...``;
see docs/training.md).

This module is a composition root: it wires ``ccmb.datasets`` (data) and ``models.train`` (trainer) and
builds the per-epoch evaluation callback ``evaluate_fn(model, epoch) -> metrics`` that the trainer takes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import click

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ evaluation callbacks
def recall_at_k(scores, positives: Sequence[Sequence[int]], ks: Sequence[int] = (1, 5, 10)) -> Dict[int, float]:
    """Recall@k (0-100) of queries (rows of ``scores``) with sets of positive columns. The rank of a query
    is the number of non-positive candidates scoring >= its best positive (ties count against the query);
    queries without positives are skipped."""
    import torch

    hits = {k: 0 for k in ks}
    n = 0
    for q, pos in enumerate(positives):
        if not pos:
            continue
        row = scores[q]
        pos_t = torch.as_tensor(list(pos), dtype=torch.long)
        best = row[pos_t].max()
        neg = torch.ones_like(row, dtype=torch.bool)
        neg[pos_t] = False
        rank = int(((row >= best) & neg).sum())
        n += 1
        for k in ks:
            hits[k] += rank < k
    return {k: 100.0 * hits[k] / max(1, n) for k in ks}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC-AUC (0-100) by the Mann-Whitney statistic; tied scores count one half."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs both positive and negative pairs")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):  # average ranks of ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    u = r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(100.0 * u / (len(pos) * len(neg)))


def _encode(model, data, tokenizer, batch_size: int, image_indices: Sequence[int], texts: Sequence[str]):
    import torch

    from models.preprocess import ImageTransform

    tf = ImageTransform(model.config.image_size)
    dev = next(model.parameters()).device

    def image_batches():
        for s in range(0, len(image_indices), batch_size):
            yield torch.stack([tf(data.load_image(i)) for i in image_indices[s:s + batch_size]]).to(dev)

    def text_batches():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[s:s + batch_size]), padding="longest", truncation=True,
                            max_length=model.config.max_text_len, return_tensors="pt")
            yield enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    img_e, img_h = model.encode_images_batched(image_batches())
    txt_e, txt_h, txt_m = model.encode_texts_batched(text_batches())
    return img_e, img_h, txt_e, txt_h, txt_m


def retrieval_evaluator(data, tokenizer, batch_size: int = 64, rerank: bool = True) -> Callable:
    """``evaluate_fn`` for a RetrievalData split: R@1/5/10 per direction and their mean ``mean_recall``;
    R2D2 models rank with the official two-stage scores (cosine top-k, then cross encoders)."""
    def evaluate(model, epoch: int) -> Dict[str, float]:
        img_e, img_h, txt_e, txt_h, txt_m = _encode(model, data, tokenizer, batch_size,
                                                    list(range(data.num_images)), data.texts)
        if rerank and getattr(model, "has_cross_encoders", False):
            i2t, t2i = model.rank(img_e, img_h, txt_e, txt_h, txt_m)
        else:
            i2t = img_e.float() @ txt_e.float().T
            t2i = i2t.T
        out: Dict[str, float] = {}
        recalls: List[float] = []
        dirs = getattr(data, "directions", ("i2t", "t2i"))
        if "t2i" in dirs:
            for k, v in recall_at_k(t2i, data.text_to_images).items():
                out[f"t2i_r{k}"] = v
                recalls.append(v)
        if "i2t" in dirs:
            for k, v in recall_at_k(i2t, data.image_to_texts).items():
                out[f"i2t_r{k}"] = v
                recalls.append(v)
        out["mean_recall"] = sum(recalls) / len(recalls)
        return out
    return evaluate


def matching_evaluator(data, tokenizer, batch_size: int = 64) -> Callable:
    """``evaluate_fn`` for a MatchingData split: ROC-AUC (0-100) of the match probability, and accuracy
    at 0.5."""
    import torch

    def evaluate(model, epoch: int) -> Dict[str, float]:
        uniq = sorted(set(data.pair_images))
        where = {i: n for n, i in enumerate(uniq)}
        _, img_h, _, txt_h, txt_m = _encode(model, data, tokenizer, batch_size, uniq, data.pair_texts)
        probs = model.pair_match_prob(img_h, txt_h, txt_m,
                                      torch.tensor([where[i] for i in data.pair_images]),
                                      torch.arange(len(data.pair_texts)))
        labels = data.labels
        acc = 100.0 * sum(int((p >= 0.5) == bool(y)) for p, y in zip(probs.tolist(), labels)) / len(labels)
        return {"auc": roc_auc(probs.tolist(), labels), "accuracy": acc}
    return evaluate


# ------------------------------------------------------------------------------------------ CLI
def _print_record(record: Dict[str, Any]) -> None:
    if "eval" in record:
        metrics = " ".join(f"{k} {v:.2f}" for k, v in record["eval"].items())
        click.echo(f"eval epoch {record['epoch']} step {record['step']}: {metrics}")
        return
    losses = " ".join(f"{k} {record[k]:.4f}" for k in ("loss", "gcpr", "fgr", "tgd", "fgd", "match")
                      if record.get(k) is not None)
    click.echo(f"step {record['step']} epoch {record['epoch']} | {losses} | lr {record['lr']:.3e} "
               f"temp {record['temp']:.4f} | {record['samples_per_s']:.1f} samples/s "
               f"({record['samples_per_s_per_gpu']:.1f}/GPU)", nl=True)


def _train_options(f):
    """Options shared by pretrain and finetune (None = keep the recipe's default)."""
    opts = [
        click.option("--train-config", type=click.Path(exists=True, dir_okay=False),
                     help="JSON of training hyper-parameters (models.train.TrainConfig); flags override it."),
        click.option("--tokenizer", type=click.Path(exists=True),
                     help="vocab.txt or a tokenizer directory (default: --init-text)."),
        click.option("--steps", type=int, help="Optimizer steps (wins over --epochs)."),
        click.option("--epochs", type=int, help="Epochs (pre-training: virtual epochs from sizes.json)."),
        click.option("--batch-size", type=int, help="Samples per process per micro-batch."),
        click.option("--grad-accum", type=int, help="Micro-batches per optimizer step."),
        click.option("--lr", type=float, help="Peak learning rate (AdamW)."),
        click.option("--weight-decay", type=float),
        click.option("--warmup-steps", type=int),
        click.option("--clip-grad", type=float, help="Max global grad norm (0: off)."),
        click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]),
                     help="auto = bf16 autocast on GPU, fp32 on CPU."),
        click.option("--grad-checkpointing/--no-grad-checkpointing", default=None),
        click.option("--freeze-vision/--train-vision", default=None, help="Freeze the ViT."),
        click.option("--num-workers", type=int, help="DataLoader workers per process."),
        click.option("--seed", type=int),
        click.option("--log-every", type=int),
        click.option("--save-every", type=int, help="Checkpoint every N steps."),
        click.option("--keep-last", type=int, help="Checkpoints kept."),
        click.option("--gcpr", "loss_gcpr", type=float, help="GCPR weight (0 disables)."),
        click.option("--fgr", "loss_fgr", type=float, help="FGR weight (0 disables)."),
        click.option("--tgd", "loss_tgd", type=float, help="TgD weight (0 disables)."),
        click.option("--fgd", "loss_fgd", type=float, help="FgD weight (0 disables)."),
        click.option("--queue-size", "loss_queue_size", type=int, help="TgD feature-queue length."),
        click.option("--resume", type=str, help="'latest' (of --output) or a checkpoint folder."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


_TRAIN_KEYS = ("steps", "epochs", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "clip_grad",
               "precision", "grad_checkpointing", "freeze_vision", "num_workers", "seed", "log_every", "save_every",
               "keep_last", "loss_gcpr", "loss_fgr", "loss_tgd", "loss_fgd", "loss_queue_size")


def _build_cfg(base, train_config: Optional[str], kw: Dict[str, Any]):
    from models.train.config import TrainConfig

    cfg = TrainConfig.from_json(train_config) if train_config else base
    return cfg.override(**{k: kw.get(k) for k in _TRAIN_KEYS})


@click.group("train")
def train_group() -> None:
    """Train R2D2/PRD2: pre-training on shards, fine-tuning on downstream sets (1 process or torchrun)."""


@train_group.command("pretrain")
@click.option("--config", "model_config", required=True,
              help="Model config: a shipped name (r2d2-tiny, r2d2-vitb16, r2d2-vitl14, prd2-...) or a JSON file.")
@click.option("--shards", required=True, help="Shard folder or brace pattern DIR/{00000..00099}.tar.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--init-vision", type=click.Path(exists=True, file_okay=False), help="HF CLIP directory.")
@click.option("--init-text", type=click.Path(exists=True, file_okay=False), help="HF BERT directory.")
@click.option("--init", "init_dir", type=click.Path(exists=True, file_okay=False),
              help="Start from a saved model folder (config.json + model.safetensors).")
@click.option("--text-choice", type=click.Choice(["random", "title", "content", "query", "txt"]),
              help="Which text of a sample each step uses (default random).")
@click.option("--objective", type=click.Choice(["r2d2", "clip"]), default="r2d2", show_default=True,
              help="clip = InfoNCE alone (baseline).")
@_train_options
def pretrain_cmd(model_config, shards, output, init_vision, init_text, init_dir, text_choice, objective,
                 train_config, tokenizer, resume, device, **kw) -> None:
    """Pre-train on a ccmb shard set (GCPR + FGR + TgD + FgD).

    \b
    ccmb train pretrain --config r2d2-tiny --shards shards/ --tokenizer vocab.txt --output runs/tiny --steps 100
    torchrun --nproc_per_node 8 "$(which ccmb)" train pretrain --config r2d2-vitb16 \\
        --shards '/data/zero/{00000..02299}.tar' --init-vision clip-vit-b16/ --init-text roberta-wwm/ \\
        --output runs/zero2m --epochs 10 --batch-size 128
    """
    from models.train.config import TrainConfig
    from models.train.pretrain import pretrain

    cfg = _build_cfg(TrainConfig(), train_config, kw)
    if text_choice:
        cfg = cfg.override(text_choice=text_choice)
    result = pretrain(model_config, shards, output, cfg, tokenizer_path=tokenizer, init_vision=init_vision,
                      init_text=init_text, init=init_dir, resume=resume, device=device, objective=objective,
                      on_log=_print_record)
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
@click.option("--select-metric", help="Metric choosing the best epoch (default mean_recall / auc).")
@click.option("--eval-batch-size", type=int, default=64, show_default=True)
@click.option("--no-eval", is_flag=True, help="Skip the per-epoch evaluation.")
@_train_options
def finetune_cmd(task, dataset, root, init, model_config, output, train_split, val_split, select_metric,
                 eval_batch_size, no_eval, train_config, tokenizer, resume, device, **kw) -> None:
    """Fine-tune on a downstream set (released recipe: vision frozen, AdamW lr 1e-5 / matching 3e-6,
    wd 0.05, 500 warm-up steps, cosine).

    \b
    ccmb train finetune --task retrieval --dataset icr --root /data/ccmb --init runs/zero2m/model \\
        --tokenizer roberta-wwm/ --output runs/icr
    """
    from ccmb.datasets import load_dataset
    from models.tokenizer import load_tokenizer
    from models.train.config import finetune_defaults
    from models.train.finetune import finetune

    if val_split == "test" and not no_eval:
        raise click.UsageError("the best checkpoint is chosen on validation, never on test: pick --val-split")
    if tokenizer is None:
        raise click.UsageError("--tokenizer is required (vocab.txt or a tokenizer directory)")
    cfg = _build_cfg(finetune_defaults(task), train_config, kw)
    if select_metric:
        cfg = cfg.override(select_metric=select_metric)
    train_data = load_dataset(dataset, root, train_split)
    if getattr(train_data, "task", task) != task:
        raise click.UsageError(f"{dataset} is a {train_data.task} dataset, not {task}")
    evaluate_fn = None
    if not no_eval:
        val_data = load_dataset(dataset, root, val_split)
        tok = load_tokenizer(tokenizer)
        evaluate_fn = (retrieval_evaluator(val_data, tok, eval_batch_size) if task == "retrieval"
                       else matching_evaluator(val_data, tok, eval_batch_size))
    else:
        cfg = cfg.override(select_metric="")
    result = finetune(task, train_data, init, output, cfg, tokenizer_path=tokenizer, config=model_config,
                      device=device, evaluate_fn=evaluate_fn, resume=resume, on_log=_print_record)
    if result.final_dir:
        msg = f"done: {result.steps} steps; last model in {result.final_dir}"
        if result.best_dir:
            msg += f"; best {cfg.select_metric} {result.best_metric:.2f} in {result.best_dir}"
        click.echo(msg)
