"""The training objectives: one ``nn.Module`` whose ``forward(batch)`` returns the losses.

DDP wraps the objective (not the bare model), so every parameter use happens inside DDP's forward.
The EMA teacher and the queues are kept out of the module tree (DDP must neither reduce nor broadcast
them); :meth:`R2D2Objective.after_step` updates the teacher after each optimizer step. The MLM head
(``cls.predictions.*``, BERT's names) is a submodule of the objective: trained, not part of the model.

* ``R2D2Objective(mode="pretrain")``: the losses of :data:`models.train.config.LOSSES` with the weights of
  :class:`LossConfig`; also fine-tuning for retrieval with ``image_ids`` = dataset image index.
* ``R2D2Objective(mode="match")``: match classification of labelled pairs (ICM/IQM fine-tuning).
* ``mode="clip"``: the symmetric InfoNCE alone (the baseline of ``perf/bench_train.py``).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import LossConfig
from .distributed import gather_nograd, gather_with_grad, rank
from .losses import (FGRLoss, FgDLoss, GCPRLoss, MatchLoss, TgDLoss, positive_mask,
                     sample_hard_negatives)
from .teacher import EMATeacher, FeatureQueue, drop_patches, keep_patch_indices, mask_tokens, mlm_mask

logger = logging.getLogger(__name__)

MODES = ("pretrain", "match", "clip")
#: the teacher's parameters the losses read: TgD and FgD call only its ``encode_image`` / ``encode_text``, so
#: its cross encoders and match heads are never updated by the EMA (see :class:`EMATeacher`)
TEACHER_READS = ("visual_encoder.", "text_encoder.", "vision_proj.", "text_proj.")


def _has_cross_encoders(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "has_cross_encoders"):
        return bool(cfg.has_cross_encoders)
    return hasattr(model, "itm_logits")


def text_groups(input_ids: torch.Tensor) -> torch.Tensor:
    """[N] group index per row: rows with identical token ids (the same caption) share a group."""
    return torch.unique(input_ids, dim=0, return_inverse=True)[1]


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
            self.weights = losses.weights()
            if not self.cross:  # PRD2: no cross encoders, no fine-grained ranking, no text-side MLM
                self.weights.pop("fgr", None)
                self.weights.pop("mlm", None)
        if not self.weights:
            raise ValueError("every loss is disabled (all weights 0, or only cross-encoder losses on a PRD2 model)")
        if ("fgd" in self.weights or "mlm" in self.weights) and mask_token_id is None:
            raise ValueError("FgD and MLM need the tokenizer's [MASK] id")
        self.gcpr, self.fgr, self.tgd, self.fgd = (GCPRLoss(), FGRLoss(losses.fgr_class_weights),
                                                   TgDLoss(), FgDLoss())
        self.match = MatchLoss()
        if "mlm" in self.weights:
            from models.cross_encoder import MLMHead

            mcfg = model.config
            self.cls = MLMHead(mcfg.text_width, mcfg.vocab_size, mcfg.text_eps)
        self.mask_token_id, self.special_ids, self.patch_size = mask_token_id, list(special_ids), patch_size
        self.seed = seed
        #: FgD's masked image view: drop patch tokens (True, less compute) or zero patch pixels (False)
        self.drop_tokens = True
        if losses.student_view == "masked" and mode == "pretrain" and not self.masked_view:
            logger.warning("student_view 'masked' reads FgD's masked input, but FgD is off: the student sees the "
                           "full input")
        self.step = 0  # set by the trainer: seeds negative sampling and masking reproducibly
        # kept out of the module tree on purpose (see the module docstring)
        self.__dict__["teacher"] = None
        self.__dict__["queue"] = None
        if self.needs_teacher:
            embed_dim = int(getattr(getattr(model, "config", None), "embed_dim", 0)) or None
            reads = TEACHER_READS if all(hasattr(model, p[:-1]) for p in TEACHER_READS) else None
            self.__dict__["teacher"] = EMATeacher(model, losses.momentum, reads=reads)
            if "tgd" in self.weights:
                if embed_dim is None:
                    raise ValueError("TgD needs model.config.embed_dim for its queues")
                self.__dict__["queue"] = FeatureQueue(losses.queue_size, embed_dim, seed=seed)

    @property
    def needs_teacher(self) -> bool:
        return "tgd" in self.weights or "fgd" in self.weights

    @property
    def uses_all_parameters(self) -> bool:
        """Whether every trainable parameter gets a gradient each step (DDP's ``find_unused_parameters``
        can then stay off): the projections need a contrastive term (GCPR or TgD), the cross encoders and
        match heads need FGR; PRD2 has no cross encoders."""
        w = self.weights
        if self.mode != "pretrain":
            return False
        return ("gcpr" in w or "tgd" in w) and ("fgr" in w or not self.cross)

    def teacher_state(self) -> Optional[nn.Module]:
        """Teacher, queues and the MLM head as one module (what checkpoints save/restore besides the model)."""
        if self.teacher is None and not hasattr(self, "cls"):
            return None
        holder = nn.Module()
        if self.teacher is not None:
            holder.teacher = self.teacher.model
        if self.queue is not None:
            holder.queue = self.queue
        if hasattr(self, "cls"):
            holder.cls = self.cls
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
        need_hidden = "fgr" in self.weights or "mlm" in self.weights
        gen = self._generator()
        s_txt = s_img = None
        if "fgd" in self.weights:  # FgD's masked text (both views)
            m_ids = mask_tokens(ids, mask, self.mask_token_id, self.cfg.text_mask_ratio,
                                self.special_ids, generator=gen)
        if self.masked_view:
            # one student pass over FgD's masked input; every student loss reads it (LossConfig.student_view)
            text = model.encode_text(m_ids.to(ids.device), mask, return_hidden=need_hidden)
            image = self._masked_image(model, pix, gen, return_hidden=need_hidden)
            (txt_emb, txt_hidden), (img_emb, img_hidden) = (text, image) if need_hidden else \
                ((text, None), (image, None))
            s_txt, s_img = txt_emb, img_emb
        elif "fgd" in self.weights:
            # FgD's masked text runs through the student's text encoder in the same call as the unmasked
            # text (one batch of 2B rows, same attention mask: the same values, half the per-call work)
            both = model.encode_text(torch.cat([ids, m_ids.to(ids.device)]), torch.cat([mask, mask]),
                                     return_hidden=need_hidden)
            b = ids.shape[0]
            if need_hidden:
                txt_emb, s_txt, txt_hidden = both[0][:b], both[0][b:], both[1][:b]
            else:
                txt_emb, s_txt = both[:b], both[b:]
            img_emb, img_hidden = model.encode_image(pix, return_hidden=True) if need_hidden \
                else (model.encode_image(pix), None)
        elif need_hidden:
            img_emb, img_hidden = model.encode_image(pix, return_hidden=True)
            txt_emb, txt_hidden = model.encode_text(ids, mask, return_hidden=True)
        else:
            img_emb, txt_emb = model.encode_image(pix), model.encode_text(ids, mask)
        temp = model.temp
        out: Dict[str, torch.Tensor] = {}
        if "gcpr" in self.weights:
            out["gcpr"] = self.gcpr(img_emb, txt_emb, temp, image_ids)
        if "fgr" in self.weights:
            out["fgr"] = self._fgr(img_emb, txt_emb, img_hidden, txt_hidden, ids, mask, temp, image_ids, gen)
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
            if s_img is None:
                s_img = self._masked_image(model, pix, gen)
            out["fgd"] = self.fgd([(s_img, t_img), (s_txt, t_txt)])
        if "mlm" in self.weights:
            out["mlm"] = self._mlm(ids, mask, img_hidden, gen)
        out["loss"] = sum(self.weights[k] * out[k] for k in self.weights)
        return out

    @property
    def masked_view(self) -> bool:
        """Whether the student's single pass sees FgD's masked input (``student_view="masked"`` with FgD on)."""
        return self.mode == "pretrain" and self.cfg.student_view == "masked" and "fgd" in self.weights

    def _masked_image(self, model: nn.Module, pix: torch.Tensor, gen: torch.Generator,
                      return_hidden: bool = False):
        """The student's image embedding of a masked view (and its hidden state with ``return_hidden``): patch
        *tokens* dropped when the model supports it (fewer tokens, less compute), else patches zeroed in
        pixel space."""
        ratio = self.cfg.patch_drop_ratio
        num_patches = getattr(getattr(model, "config", None), "num_patches", None)
        if ratio <= 0:
            return model.encode_image(pix, return_hidden=return_hidden)
        if self.drop_tokens and num_patches and hasattr(model, "visual_encoder"):
            keep = keep_patch_indices(pix.shape[0], num_patches, ratio, generator=gen)
            return model.encode_image(pix, keep_patches=keep, return_hidden=return_hidden)
        return model.encode_image(drop_patches(pix, self.patch_size, ratio, generator=gen),
                                  return_hidden=return_hidden)

    def _mlm(self, ids, mask, img_hidden, gen) -> torch.Tensor:
        """Masked-LM through the text encoder and the text-side cross encoder (attending to the image)."""
        vocab = int(self.model.config.vocab_size)
        m_ids, labels = mlm_mask(ids, mask, self.mask_token_id, vocab, self.cfg.mlm_ratio, self.special_ids,
                                 generator=gen)
        _, m_hidden = self.model.encode_text(m_ids, mask, return_hidden=True)
        fused = self.model.text_joint_layer(m_hidden, mask, img_hidden, None)
        picked = labels != -100
        logits = self.cls(fused[picked])
        return F.cross_entropy(logits.float(), labels[picked])

    def _fgr(self, img_emb, txt_emb, img_hidden, txt_hidden, ids, mask, temp, image_ids, gen):
        """Hard negatives over the global batch, then both cross encoders on 3B pairs.

        A column is a positive of a row (never drawn as a negative) when it shows the same image *or*
        carries the same caption as the row's pair: with repeated captions ("红色圆形" for several images)
        an image whose own caption equals this text matches it, and labelling it 0 teaches noise. Gathered
        hidden states keep their gradient (:func:`gather_with_grad`), so negatives from other ranks train
        their rank's encoders too."""
        b = img_emb.shape[0]
        local = self.cfg.fgr_negatives == "local"
        with torch.no_grad():
            img_all = img_emb.detach() if local else gather_nograd(img_emb)
            txt_all = txt_emb.detach() if local else gather_nograd(txt_emb)
            ids_all = image_ids if local else gather_nograd(image_ids)
            tokens_all = ids if local else gather_nograd(ids)
            groups_all = text_groups(tokens_all)
            start = 0 if local else rank() * b
            groups = groups_all[start:start + b]
            pos = positive_mask(image_ids, ids_all) | positive_mask(groups, groups_all)
            neg_img = sample_hard_negatives(txt_emb.detach() @ img_all.t() / temp, pos, gen)
            neg_txt = sample_hard_negatives(img_emb.detach() @ txt_all.t() / temp, pos, gen)
        img_hidden_all = img_hidden if local else gather_with_grad(img_hidden)
        txt_hidden_all = txt_hidden if local else gather_with_grad(txt_hidden)
        mask_all = mask if local else gather_nograd(mask)
        # 2B images (own, negatives) and 2B texts (own, negatives) make the 3B pairs
        neg_img, neg_txt = neg_img.to(img_hidden_all.device), neg_txt.to(txt_hidden_all.device)
        # index_select: its backward is an index_add (x[idx]'s is a slower accumulating index_put on CPU)
        images = torch.cat([img_hidden, img_hidden_all.index_select(0, neg_img)])
        texts = torch.cat([txt_hidden, txt_hidden_all.index_select(0, neg_txt)])
        text_mask = torch.cat([mask, mask_all.index_select(0, neg_txt.to(mask_all.device))])
        own = torch.arange(b)
        image_index = torch.cat([own, own + b, own])   # (own image, own text), (negative image, own text),
        text_index = torch.cat([own, own, own + b])    # (own image, negative text)
        labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
        if hasattr(self.model, "itm_logits_pairs"):
            t_logits, i_logits = self.model.itm_logits_pairs(images, texts, text_mask, image_index, text_index)
        else:
            t_logits, i_logits = self.model.itm_logits(images[image_index.to(images.device)],
                                                       texts[text_index.to(texts.device)],
                                                       text_mask[text_index.to(text_mask.device)])
        return self.fgr(t_logits, i_logits, labels.to(t_logits.device))

    def _forward_match(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        _, img_hidden = self.model.encode_image(batch["pixel_values"], return_hidden=True)
        _, txt_hidden = self.model.encode_text(batch["input_ids"], batch["attention_mask"], return_hidden=True)
        t_logits, i_logits = self.model.itm_logits(img_hidden, txt_hidden, batch["attention_mask"])
        loss = self.match(t_logits, i_logits, batch["labels"].to(t_logits.device))
        return {"match": loss, "loss": loss}
