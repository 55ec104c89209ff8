"""The R2D2 pre-training losses as small modules on plain tensors.

* :class:`GCPRLoss`  global contrastive pre-ranking: InfoNCE over features gathered from all ranks,
  soft targets where several texts share an image.
* :class:`FGRLoss`   fine-grained ranking: match classification through both cross encoders, one
  hard-negative image and one hard-negative text per pair (:func:`sample_hard_negatives`).
* :class:`TgDLoss`   target-guided distillation: soft targets = (1 - alpha) * ground truth + alpha *
  the EMA teacher's similarity distribution over the batch and the feature queues.
* :class:`FgDLoss`   feature-guided distillation: the student's features of a masked input regress the
  teacher's features of the unmasked input.

Every module returns a scalar; which ones run and their weights are chosen in
:class:`models.train.config.LossConfig`. Nothing here knows about the model.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import gather_nograd, gather_with_local_grad, rank, scale_grad, world_size


def positive_mask(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """[R, C] bool: True where the row's and the column's image ids are equal (a positive pair)."""
    return row_ids.view(-1, 1) == col_ids.view(1, -1)


def soft_targets(row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """Ground-truth distribution per row: uniform over the columns sharing the row's image id."""
    pos = positive_mask(row_ids, col_ids).float()
    return pos / pos.sum(dim=1, keepdim=True).clamp_min(1.0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum(targets * log_softmax(logits))``."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def target_entropy(targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the entropy of (constant) target distributions, ``0 log 0 = 0``."""
    return -_neg_entropy_rows(targets).mean()


def _neg_entropy_rows(targets: torch.Tensor) -> torch.Tensor:
    """``sum(t log t)`` per row of constant targets, ``0 log 0 = 0``: ``log`` of the targets clamped to the
    smallest normal float (the product stays 0 where t = 0), vectorised, where ``xlogy`` is a scalar loop on
    CPU (~8x slower on the TgD logits)."""
    with torch.no_grad():
        t = targets.detach().float()
        return (t * t.clamp_min(torch.finfo(t.dtype).tiny).log()).sum(dim=1)


def kl_to_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``KL(targets || softmax(logits))`` for constant targets: the cross-entropy minus the
    targets' entropy (the gradient is the cross-entropy's)."""
    t = targets.detach().float()
    return (_neg_entropy_rows(t) - (t * F.log_softmax(logits.float(), dim=1)).sum(dim=1)).mean()


class GCPRLoss(nn.Module):
    """Global contrastive pre-ranking (symmetric InfoNCE over the global batch).

    ``image_embeds``/``text_embeds`` are this rank's L2-normalised features [B, D] (pair i = image i,
    text i); they are gathered from every rank with :func:`gather_with_local_grad`, so each rank
    evaluates the full global loss and the gradient is scaled by the world size: after DDP averages,
    the gradient equals the single-process one on the concatenated batch (the temperature, which every
    rank's full loss already differentiates completely, is compensated). ``image_ids`` [B] mark
    pairs that share an image (soft targets); default: every pair its own image.
    """

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, temp: torch.Tensor,
                image_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if image_ids is None:
            image_ids = torch.arange(image_embeds.shape[0], device=image_embeds.device) \
                + rank() * image_embeds.shape[0]
        w = float(world_size())
        img = gather_with_local_grad(image_embeds)
        txt = gather_with_local_grad(text_embeds)
        ids = gather_nograd(image_ids)
        # the temperature sees the whole global loss on every rank: its gradient is complete here, so
        # it is scaled by 1/W to cancel the W below
        logits = img @ txt.t() / scale_grad(temp, 1.0 / w)
        targets = soft_targets(ids, ids)
        loss = 0.5 * (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.t(), targets))
        return scale_grad(loss, w)


def sample_hard_negatives(sims: torch.Tensor, pos_mask: torch.Tensor,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One negative column per row, drawn from ``softmax(sims)`` with positives masked out.

    ``sims`` [R, C] (already divided by the temperature); rows whose every column is positive fall
    back to a uniform draw over all columns (this only happens with a degenerate batch).
    """
    with torch.no_grad():
        logits = sims.float().masked_fill(pos_mask, float("-inf"))
        allpos = pos_mask.all(dim=1)
        if allpos.any():
            logits[allpos] = 0.0
        probs = torch.softmax(logits, dim=1)
        return torch.multinomial(probs.cpu(), 1, generator=generator).view(-1).to(sims.device)


class FGRLoss(nn.Module):
    """Fine-grained ranking: weighted match classification on both cross encoders' logits.

    ``text_logits``/``image_logits`` [N, 2] come from the text-side and image-side cross encoders for
    the same N pairs, ``labels`` [N] (1 = match). Class weights (negative 1, positive 2) follow R2D2:
    each positive comes with two hard negatives, so the weights rebalance the classes.
    """

    def __init__(self, class_weights: Sequence[float] = (1.0, 2.0)) -> None:
        super().__init__()
        self.register_buffer("class_weights", torch.tensor(list(class_weights), dtype=torch.float32),
                             persistent=False)

    def forward(self, text_logits: torch.Tensor, image_logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(text_logits.device)
        lt = F.cross_entropy(text_logits.float(), labels, weight=w)
        li = F.cross_entropy(image_logits.float(), labels, weight=w)
        return 0.5 * (lt + li)


class TgDLoss(nn.Module):
    """Target-guided distillation with an EMA teacher and feature queues (ALBEF-style).

    Student rows are this rank's features; columns are the teacher's features of the global batch
    followed by the queue. Targets per row: ``(1 - alpha) * ground_truth + alpha * softmax(teacher
    row)``; the value is the KL divergence from the targets (cross-entropy minus their entropy: the
    gradient of ALBEF's cross-entropy, a value that reaches 0 when the student matches the targets). The columns carry no gradient, so each rank's mean over its rows averages correctly
    under DDP.
    """

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, temp: torch.Tensor,
                t_image_local: torch.Tensor, t_text_local: torch.Tensor,
                t_image_all: torch.Tensor, t_text_all: torch.Tensor,
                ids_local: torch.Tensor, ids_all: torch.Tensor, alpha: float) -> torch.Tensor:
        col_ids = ids_all
        # the temperature divides the [B, D] rows, not the [B, B + queue] logits (the same values, and the
        # division and its backward run on D columns instead of thousands)
        with torch.no_grad():
            gt = soft_targets(ids_local, col_ids).mul_(1 - alpha)  # shared by both directions
            t_i2t = (t_image_local / temp) @ t_text_all.t()
            t_t2i = (t_text_local / temp) @ t_image_all.t()
            tgt_i2t = torch.softmax(t_i2t.float(), dim=1).mul_(alpha).add_(gt)
            tgt_t2i = torch.softmax(t_t2i.float(), dim=1).mul_(alpha).add_(gt)
        s_i2t = (image_embeds / temp) @ t_text_all.t()
        s_t2i = (text_embeds / temp) @ t_image_all.t()
        # reported as KL(targets || student) = CE - H(targets): the same gradient as ALBEF's cross-entropy, but
        # the value no longer carries the targets' entropy, which grows while the queue fills with features
        # of a young teacher (the logged loss rose for a whole short run although the student improved)
        return 0.5 * (kl_to_targets(s_i2t, tgt_i2t) + kl_to_targets(s_t2i, tgt_t2i))


class FgDLoss(nn.Module):
    """Feature-guided distillation: mean squared distance between L2-normalised student and teacher
    features (= 2 - 2 cos), averaged over the two modalities given."""

    def forward(self, pairs: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        losses = []
        for student, teacher in pairs:
            s = F.normalize(student.float(), dim=-1)
            t = F.normalize(teacher.detach().float(), dim=-1)
            losses.append(((s - t) ** 2).sum(dim=-1).mean())
        return torch.stack(losses).mean()


class MatchLoss(nn.Module):
    """Plain match classification on labelled pairs (fine-tuning for ICM/IQM): mean CE of both heads."""

    def forward(self, text_logits: torch.Tensor, image_logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (F.cross_entropy(text_logits.float(), labels)
                      + F.cross_entropy(image_logits.float(), labels))
