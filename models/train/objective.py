"""The training objectives: one ``nn.Module`` whose ``forward(batch)`` returns the losses.

DDP wraps the objective (not the bare model), so every parameter use happens inside DDP's forward.
The EMA teacher and the queues are kept out of the module tree (DDP must neither reduce nor broadcast
them); :meth:`R2D2Objective.after_step` updates the teacher after each optimizer step.

* ``R2D2Objective(mode="pretrain")``: GCPR + FGR + TgD + FgD (weights from :class:`LossConfig`); also
  fine-tuning for retrieval with ``image_ids`` = dataset image index (soft targets for shared images).
* ``R2D2Objective(mode="match")``: match classification of labelled pairs (ICM/IQM fine-tuning).
* ``mode="clip"``: the symmetric InfoNCE alone (the baseline of ``perf/bench_train.py``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from .config import LossConfig
from .distributed import gather_nograd, gather_with_local_grad, rank
from .losses import (FGRLoss, FgDLoss, GCPRLoss, MatchLoss, TgDLoss, positive_mask,
                     sample_hard_negatives)
from .teacher import EMATeacher, FeatureQueue, drop_patches, mask_tokens

MODES = ("pretrain", "match", "clip")


def _has_cross_encoders(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "has_cross_encoders"):
        return bool(cfg.has_cross_encoders)
    return hasattr(model, "itm_logits")


class R2D2Objective(nn.Module):
    """Losses of one training step. ``forward`` returns ``{"loss": weighted total, name: value...}``."""

    def __init__(self, model: nn.Module, losses: LossConfig, mode: str = "pretrain",
                 mask_token_id: Optional[int] = None, special_ids: Sequence[int] = (),
                 patch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"objective mode {mode!r}: use one of {MODES}")
        self.model, self.cfg, self.mode = model, losses, mode
        self.cross = _has_cross_encoders(model)
        self.weights: Dict[str, float] = {}
        if mode == "clip":
            self.weights = {"gcpr": 1.0}
        elif mode == "match":
            if not self.cross:
                raise ValueError("matching fine-tuning needs the cross encoders (an R2D2 model, not PRD2)")
            self.weights = {"match": 1.0}
        else:
            self.weights = {k: float(getattr(losses, k)) for k in ("gcpr", "fgr", "tgd", "fgd")
                            if float(getattr(losses, k)) > 0}
            if "fgr" in self.weights and not self.cross:
                self.weights.pop("fgr")  # PRD2: no cross encoders, no fine-grained ranking
        if not self.weights:
            raise ValueError("every loss is disabled (weights gcpr/fgr/tgd/fgd all 0, or only FGR on a PRD2 model)")
        if "fgd" in self.weights and mask_token_id is None:
            raise ValueError("FgD needs the tokenizer's [MASK] id")
        self.gcpr, self.fgr, self.tgd, self.fgd = (GCPRLoss(), FGRLoss(losses.fgr_class_weights),
                                                   TgDLoss(), FgDLoss())
        self.match = MatchLoss()
        self.mask_token_id, self.special_ids, self.patch_size = mask_token_id, list(special_ids), patch_size
        self.seed = seed
        self.step = 0  # set by the trainer: seeds negative sampling and masking reproducibly
        # kept out of the module tree on purpose (see the module docstring)
        self.__dict__["teacher"] = None
        self.__dict__["queue"] = None
        if self.needs_teacher:
            embed_dim = int(getattr(getattr(model, "config", None), "embed_dim", 0)) or None
            self.__dict__["teacher"] = EMATeacher(model, losses.momentum)
            if "tgd" in self.weights:
                if embed_dim is None:
                    raise ValueError("TgD needs model.config.embed_dim for its queues")
                self.__dict__["queue"] = FeatureQueue(losses.queue_size, embed_dim)

    @property
    def needs_teacher(self) -> bool:
        return "tgd" in self.weights or "fgd" in self.weights

    def teacher_state(self) -> Optional[nn.Module]:
        """Teacher + queues as one module (what checkpoints save/restore)."""
        if self.teacher is None:
            return None
        holder = nn.Module()
        holder.teacher = self.teacher.model
        if self.queue is not None:
            holder.queue = self.queue
        return holder

    def to(self, *args: Any, **kw: Any) -> "R2D2Objective":
        super().to(*args, **kw)
        if self.teacher is not None:
            self.teacher.to(*args, **kw)
        if self.queue is not None:
            self.queue.to(*args, **kw)
        return self

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.step * 7919 + rank() * 104729) % (2 ** 62))
        return g

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        temp = getattr(self.model, "temp", None)
        if isinstance(temp, torch.Tensor):
            temp.clamp_(self.cfg.temp_min, self.cfg.temp_max)

    @torch.no_grad()
    def after_step(self) -> None:
        """Clamp the temperature and update the EMA teacher (call after ``optimizer.step()``)."""
        self.clamp_temperature()
        if self.teacher is not None:
            self.teacher.update(self.model)

    # ----------------------------------------------------------------------------- forward
    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if self.mode == "match":
            return self._forward_match(batch)
        model = self.model
        pix, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
        image_ids = batch.get("image_ids")
        if image_ids is None:
            image_ids = torch.arange(pix.shape[0], device=pix.device) + rank() * pix.shape[0]
        need_hidden = "fgr" in self.weights
        if need_hidden:
            img_emb, img_hidden = model.encode_image(pix, return_hidden=True)
            txt_emb, txt_hidden = model.encode_text(ids, mask, return_hidden=True)
        else:
            img_emb, txt_emb = model.encode_image(pix), model.encode_text(ids, mask)
        temp = model.temp
        out: Dict[str, torch.Tensor] = {}
        if "gcpr" in self.weights:
            out["gcpr"] = self.gcpr(img_emb, txt_emb, temp, image_ids)
        gen = self._generator()
        if self.teacher is not None:
            with torch.no_grad():
                t_img = self.teacher.model.encode_image(pix)
                t_txt = self.teacher.model.encode_text(ids, mask)
        if "tgd" in self.weights:
            ids_all = gather_nograd(image_ids)
            t_img_all, t_txt_all = gather_nograd(t_img), gather_nograd(t_txt)
            q_img, q_txt, q_ids = self.queue.contents()
            cols_img = torch.cat([t_img_all, q_img.to(t_img_all.dtype)])
            cols_txt = torch.cat([t_txt_all, q_txt.to(t_txt_all.dtype)])
            cols_ids = torch.cat([ids_all, q_ids])
            out["tgd"] = self.tgd(img_emb, txt_emb, temp, t_img, t_txt, cols_img, cols_txt,
                                  image_ids, cols_ids, self.cfg.alpha)
            if self.training:
                self.queue.enqueue(t_img_all, t_txt_all, ids_all)
        if "fgd" in self.weights:
            m_ids = mask_tokens(ids, mask, self.mask_token_id, self.cfg.text_mask_ratio,
                                self.special_ids, generator=gen)
            m_pix = drop_patches(pix, self.patch_size, self.cfg.patch_drop_ratio, generator=gen)
            s_img, s_txt = model.encode_image(m_pix), model.encode_text(m_ids, mask)
            out["fgd"] = self.fgd([(s_img, t_img), (s_txt, t_txt)])
        if "fgr" in self.weights:
            out["fgr"] = self._fgr(img_emb, txt_emb, img_hidden, txt_hidden, mask, temp, image_ids, gen)
        out["loss"] = sum(self.weights[k] * out[k] for k in self.weights)
        return out

    def _fgr(self, img_emb, txt_emb, img_hidden, txt_hidden, mask, temp, image_ids, gen):
        """Hard negatives over the global batch, then both cross encoders on 3B pairs."""
        b = img_emb.shape[0]
        local = self.cfg.fgr_negatives == "local"
        with torch.no_grad():
            img_all = img_emb.detach() if local else gather_nograd(img_emb)
            txt_all = txt_emb.detach() if local else gather_nograd(txt_emb)
            ids_all = image_ids if local else gather_nograd(image_ids)
            pos = positive_mask(image_ids, ids_all)
            neg_img = sample_hard_negatives(txt_emb.detach() @ img_all.t() / temp, pos, gen)
            neg_txt = sample_hard_negatives(img_emb.detach() @ txt_all.t() / temp, pos, gen)
        img_hidden_all = img_hidden if local else gather_with_local_grad(img_hidden)
        txt_hidden_all = txt_hidden if local else gather_with_local_grad(txt_hidden)
        mask_all = mask if local else gather_nograd(mask)
        image_side = torch.cat([img_hidden, img_hidden_all[neg_img], img_hidden])
        text_side = torch.cat([txt_hidden, txt_hidden, txt_hidden_all[neg_txt]])
        text_mask = torch.cat([mask, mask, mask_all[neg_txt]])
        labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
        t_logits, i_logits = self.model.itm_logits(image_side, text_side, text_mask)
        return self.fgr(t_logits, i_logits, labels.to(t_logits.device))

    def _forward_match(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        _, img_hidden = self.model.encode_image(batch["pixel_values"], return_hidden=True)
        _, txt_hidden = self.model.encode_text(batch["input_ids"], batch["attention_mask"], return_hidden=True)
        t_logits, i_logits = self.model.itm_logits(img_hidden, txt_hidden, batch["attention_mask"])
        loss = self.match(t_logits, i_logits, batch["labels"].to(t_logits.device))
        return {"match": loss, "loss": loss}
