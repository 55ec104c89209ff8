"""R2D2 and PRD2: CLIP ViT image encoder + BERT text encoder + projections (+ two cross encoders for R2D2).

Submodule names equal the official checkpoint prefixes: ``visual_encoder`` (transformers' CLIPVisionModel),
``text_encoder`` (BertModel with pooler), ``vision_proj``, ``text_proj``, ``temp``, and for R2D2
``text_joint_layer``, ``img_joint_layer`` (:class:`~models.cross_encoder.CrossEncoder`), ``img_joint_proj``,
``itm_head``, ``itm_head_i``.

Inference API shared by the benchmark harness and the trainer: :meth:`R2D2Model.encode_image`,
:meth:`~R2D2Model.encode_text`, :meth:`~R2D2Model.itm_logits`, :meth:`~R2D2Model.match_prob`,
:meth:`~R2D2Model.rank`, the batched encoders and :meth:`~R2D2Model.save_pretrained`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from models.config import CONFIG_FILE, R2D2Config
from models.cross_encoder import (CrossEncoder, KeyMask, attention, init_bert_weights, init_fan_in_weights,
                                  use_fast_dropout)

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
NO_SCORE = -100.0  # score of pairs outside the top-k pre-ranking (as the official evaluation)


class NoCrossEncoderError(RuntimeError):
    """Raised by the fine-grained ranking methods of a PRD2 model (it has no cross encoders)."""


def clip_vision_config(cfg: R2D2Config) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.vision_width, intermediate_size=cfg.vision_mlp, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        num_channels=3, hidden_act=cfg.vision_act, layer_norm_eps=cfg.vision_eps, attention_dropout=0.0,
    )


def bert_config(cfg: R2D2Config) -> BertConfig:
    return BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_mlp, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_position, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.text_eps, pad_token_id=0,
    )


BERT_ATTENTION = "ccmb_sdpa"  # the text encoder's attention implementation (registered below)
_last_mask: List[Optional[object]] = [None, None]  # (transformers' mask tensor, its KeyMask): shared by the layers


def _bert_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                    **kwargs):
    """transformers' ``sdpa`` attention, except in training on CPU with attention dropout: there
    :func:`models.cross_encoder.attention` computes the same thing with a cheaper dropout (torch's math fallback
    draws a per-element Bernoulli and converts the mask in every layer)."""
    default_scale = scaling is None or scaling == query.shape[-1] ** -0.5
    if not (module.training and dropout > 0.0 and query.device.type == "cpu" and default_scale):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    mask = None
    if attention_mask is not None:
        if _last_mask[0] is not attention_mask:
            _last_mask[:] = [attention_mask, KeyMask(attention_mask)]
        mask = _last_mask[1]
    out = attention(query, key, value, mask, dropout, True)
    return out.transpose(1, 2).contiguous(), None


def _register_bert_attention() -> bool:
    """Register :func:`_bert_attention` (with transformers' sdpa masks) under :data:`BERT_ATTENTION`."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(BERT_ATTENTION, _bert_attention)
        AttentionMaskInterface.register(BERT_ATTENTION, sdpa_mask)
        return True
    except (ImportError, AttributeError):  # another transformers: keep its sdpa attention
        return False


_BERT_ATTENTION_OK = _register_bert_attention()


def use_fast_training_attention(text_encoder: nn.Module) -> None:
    """Training-time internals of the BERT text encoder, no parameter or output changed: :class:`FastDropout`
    for its dropout layers and :func:`_bert_attention` as its attention implementation."""
    use_fast_dropout(text_encoder)
    if _BERT_ATTENTION_OK and hasattr(text_encoder, "set_attn_implementation"):
        try:
            text_encoder.set_attn_implementation(BERT_ATTENTION)
        except (ValueError, ImportError) as e:  # pragma: no cover - depends on the transformers version
            logger.debug("text encoder keeps its attention implementation: %s", e)


class R2D2Model(nn.Module):
    """R2D2 (``config.joint_layers > 0``) or PRD2 (no cross encoders). Build with :func:`models.build_model`
    or :func:`models.load_model`."""

    def __init__(self, config: R2D2Config) -> None:
        super().__init__()
        self.config = config
        self.load_report = None  # set by models.load_model
        self.visual_encoder = CLIPVisionModel(clip_vision_config(config))
        self.text_encoder = BertModel(bert_config(config), add_pooling_layer=True)
        use_fast_training_attention(self.text_encoder)
        self.vision_proj = nn.Linear(config.vision_width, config.embed_dim)
        self.text_proj = nn.Linear(config.text_width, config.embed_dim)
        self.temp = nn.Parameter(torch.full((), float(config.temp_init)))
        if config.has_cross_encoders:
            common = dict(layers=config.joint_layers, width=config.text_width, heads=config.text_heads,
                          mlp=config.text_mlp, eps=config.text_eps, dropout=config.dropout)
            self.text_joint_layer = CrossEncoder(kv_width=config.vision_width, **common)
            self.img_joint_layer = CrossEncoder(kv_width=config.text_width, **common)
            self.img_joint_proj = nn.Linear(config.vision_width, config.text_width)
            self.itm_head = nn.Linear(config.text_width, 2)
            self.itm_head_i = nn.Linear(config.text_width, 2)
        self._init_own_weights()

    def _init_own_weights(self) -> None:
        """Initialise the modules that are not transformers models (BERT style, std 0.02)."""
        own = [self.vision_proj, self.text_proj]
        if self.has_cross_encoders:
            own += [self.itm_head, self.itm_head_i]
        for module in own:
            init_bert_weights(module)
        if self.has_cross_encoders:
            # fan-in scaled (std = 1/sqrt(in)): BERT's fixed std 0.02 gives each matrix a gain of
            # 0.02*sqrt(width) (0.13 at the tiny width 40), so the image reached the match head through
            # cross-attention value + output at ~2 % of the residual and FGR sat on a plateau at ln 2
            # (docs/training.md, "Why FGR did not learn"). At width 768 this is std 0.036 vs 0.02.
            for module in (self.text_joint_layer, self.img_joint_layer, self.img_joint_proj):
                init_fan_in_weights(module)

    # ------------------------------------------------------------------ properties
    @property
    def has_cross_encoders(self) -> bool:
        return self.config.has_cross_encoders

    @property
    def device(self) -> torch.device:
        return self.temp.device

    def _require_cross(self, what: str) -> None:
        if not self.has_cross_encoders:
            raise NoCrossEncoderError(
                f"{what}() needs the cross encoders, but model {self.config.name!r} is a PRD2 dual encoder "
                "(joint_layers=0); rank PRD2 by the cosine similarity image_embeds @ text_embeds.T instead")

    # ------------------------------------------------------------------ encoders
    def encode_image(self, pixel_values: torch.Tensor, return_hidden: bool = False,
                     keep_patches: Optional[torch.Tensor] = None):
        """Normalised image embeddings [N, D]; with ``return_hidden`` also the last hidden state [N, 1+P, Wv]
        of the ViT (before ``post_layernorm``, which R2D2 never applies).

        ``keep_patches`` [N, K] (patch indices, from :func:`models.train.teacher.keep_patch_indices`): the ViT
        sees the class token and only those K patch tokens (with their position embeddings), as in FLIP, so
        the pass costs about K/P of the full one; the hidden state is then [N, 1+K, Wv]."""
        dtype = self.visual_encoder.embeddings.patch_embedding.weight.dtype
        pixel_values = pixel_values.to(self.device, dtype)
        if keep_patches is None:
            hidden = self.visual_encoder(pixel_values=pixel_values).last_hidden_state
        else:
            vision = getattr(self.visual_encoder, "vision_model", self.visual_encoder)
            tokens = vision.embeddings(pixel_values)  # [N, 1+P, Wv], position embeddings added
            idx = keep_patches.to(self.device).long() + 1
            kept = torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            tokens = torch.cat([tokens[:, :1], kept], dim=1)
            hidden = vision.encoder(inputs_embeds=vision.pre_layrnorm(tokens)).last_hidden_state
        embeds = F.normalize(self.vision_proj(hidden[:, 0]), dim=-1)
        return (embeds, hidden) if return_hidden else embeds

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_hidden: bool = False):
        """Normalised text embeddings [N, D]; with ``return_hidden`` also the BERT last hidden state [N, L, Wt]."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=torch.zeros_like(input_ids))
        hidden = out.last_hidden_state
        embeds = F.normalize(self.text_proj(hidden[:, 0]), dim=-1)
        return (embeds, hidden) if return_hidden else embeds

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Both encoders: ``image_embeds``, ``image_hidden``, ``text_embeds``, ``text_hidden``."""
        image_embeds, image_hidden = self.encode_image(pixel_values, return_hidden=True)
        text_embeds, text_hidden = self.encode_text(input_ids, attention_mask, return_hidden=True)
        return {"image_embeds": image_embeds, "image_hidden": image_hidden,
                "text_embeds": text_embeds, "text_hidden": text_hidden}

    @torch.no_grad()
    def encode_images_batched(self, pixel_values: Union[torch.Tensor, Iterable[torch.Tensor]],
                              batch_size: int = 64, hidden_device: Union[str, torch.device] = "cpu",
                              hidden_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode many images in batches: ``pixel_values`` is one tensor [N,3,H,W] (split into ``batch_size``)
        or an iterable of such batches. Returns ``(embeds [N,D], hidden [N,1+P,Wv])`` on ``hidden_device``
        (hidden cast to ``hidden_dtype`` if given, e.g. ``torch.float16`` to halve memory)."""
        batches = pixel_values.split(batch_size) if isinstance(pixel_values, torch.Tensor) else pixel_values
        embeds, hidden = [], []
        for batch in batches:
            e, h = self.encode_image(batch, return_hidden=True)
            embeds.append(e.float().to(hidden_device))
            hidden.append(h.to(hidden_device, hidden_dtype or h.dtype))
        if not embeds:
            raise ValueError("encode_images_batched: no images")
        return torch.cat(embeds), torch.cat(hidden)

    @torch.no_grad()
    def encode_texts_batched(self, input_ids: Union[torch.Tensor, Iterable[Tuple[torch.Tensor, torch.Tensor]]],
                             attention_mask: Optional[torch.Tensor] = None, batch_size: int = 256,
                             hidden_device: Union[str, torch.device] = "cpu",
                             hidden_dtype: Optional[torch.dtype] = None
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode many texts in batches: tensors ``input_ids``/``attention_mask`` [N,L], or an iterable of
        ``(input_ids, attention_mask)`` batches (lengths may differ; hidden states are right-padded).
        Returns ``(embeds [N,D], hidden [N,L,Wt], mask [N,L])`` on ``hidden_device``."""
        if isinstance(input_ids, torch.Tensor):
            if attention_mask is None:
                raise ValueError("encode_texts_batched: attention_mask is required with an input_ids tensor")
            batches = zip(input_ids.split(batch_size), attention_mask.split(batch_size))
        else:
            batches = input_ids
        embeds, hidden, masks = [], [], []
        for ids, mask in batches:
            e, h = self.encode_text(ids, mask, return_hidden=True)
            embeds.append(e.float().to(hidden_device))
            hidden.append(h.to(hidden_device, hidden_dtype or h.dtype))
            masks.append(mask.to(hidden_device))
        if not embeds:
            raise ValueError("encode_texts_batched: no texts")
        length = max(h.shape[1] for h in hidden)
        hidden = [F.pad(h, (0, 0, 0, length - h.shape[1])) for h in hidden]
        masks = [F.pad(m, (0, length - m.shape[1])) for m in masks]
        return torch.cat(embeds), torch.cat(hidden), torch.cat(masks)

    # ------------------------------------------------------------------ cross encoders
    def itm_logits(self, image_hidden: torch.Tensor, text_hidden: torch.Tensor,
                   text_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Match logits of aligned pairs (row n of each input is one pair): ``(text_side [N,2], image_side [N,2])``
        from ``itm_head(text_joint_layer(...)[:, 0])`` and ``itm_head_i(img_joint_layer(...)[:, 0])``."""
        self._require_cross("itm_logits")
        text_out = self.text_joint_layer(text_hidden, text_mask, image_hidden, None, cls_only=True)
        image_out = self.img_joint_layer(self.img_joint_proj(image_hidden), None, text_hidden, text_mask,
                                         cls_only=True)
        return self.itm_head(text_out[:, 0]), self.itm_head_i(image_out[:, 0])

    def itm_logits_pairs(self, image_hidden: torch.Tensor, text_hidden: torch.Tensor, text_mask: torch.Tensor,
                         image_index: torch.Tensor, text_index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`itm_logits` of the pairs ``(image_index[n], text_index[n])`` (same values), for training: the
        parts that depend on one side only (``img_joint_proj`` and the first self-attention of
        ``img_joint_layer`` per image, the first self-attention of ``text_joint_layer`` per text, every
        layer's cross-attention keys/values per image and per text) run once per item, then are gathered per
        pair; gradients flow through the gathers. FGR's 3B pairs use 2B images and 2B texts, so this saves a
        third of those parts (most of the image side's cost at 197+ image tokens)."""
        self._require_cross("itm_logits_pairs")
        mask = text_mask.to(torch.bool)
        first_img = self.img_joint_layer.first_self_attention(self.img_joint_proj(image_hidden), None)
        first_txt = self.text_joint_layer.first_self_attention(text_hidden, mask)
        kv_img = self.text_joint_layer.context_kv(image_hidden)
        kv_txt = self.img_joint_layer.context_kv(text_hidden)
        ii, tt = image_index.to(image_hidden.device), text_index.to(text_hidden.device)
        # index_select, not x[idx]: the same rows, and its backward is an index_add (x[idx]'s is an
        # accumulating index_put, several times slower on CPU)
        pair_mask = KeyMask(mask.index_select(0, tt))  # one mask (and its additive form) for both encoders
        text_out = self.text_joint_layer(first_txt.index_select(0, tt), pair_mask, None, None, cls_only=True,
                                         context_kv=[(k.index_select(0, ii), v.index_select(0, ii)) for k, v in kv_img],
                                         first_self_done=True)
        image_out = self.img_joint_layer(first_img.index_select(0, ii), None, None, pair_mask, cls_only=True,
                                         context_kv=[(k.index_select(0, tt), v.index_select(0, tt)) for k, v in kv_txt],
                                         first_self_done=True)
        return self.itm_head(text_out[:, 0]), self.itm_head_i(image_out[:, 0])

    def match_prob(self, image_hidden: torch.Tensor, text_hidden: torch.Tensor,
                   text_mask: torch.Tensor) -> torch.Tensor:
        """Match probability [N] of aligned pairs: the mean of the two cross encoders' softmax[:, 1]."""
        self._require_cross("match_prob")
        text_logits, image_logits = self.itm_logits(image_hidden, text_hidden, text_mask)
        return (text_logits.float().softmax(-1)[:, 1] + image_logits.float().softmax(-1)[:, 1]) / 2

    @torch.no_grad()
    def pair_match_prob(self, image_hidden: torch.Tensor, text_hidden: torch.Tensor, text_mask: torch.Tensor,
                        image_index: torch.Tensor, text_index: torch.Tensor, pair_batch_size: int = 256,
                        cache_mb: int = 1024) -> torch.Tensor:
        """Match probability of the pairs ``(image_index[n], text_index[n])`` (same values as :meth:`match_prob`).

        Hidden states may live on the CPU; work moves to the model's device. Images are processed in blocks
        whose image-only parts (``img_joint_proj`` + the first self-attention of ``img_joint_layer``, and every
        layer's cross-attention keys/values of ``text_joint_layer``) are computed once per image and fit in
        ``cache_mb``; the pairs of a block run in chunks of ``pair_batch_size``, bucketed by text length and cut
        to the chunk's longest text."""
        self._require_cross("pair_match_prob")
        image_index, text_index = image_index.cpu(), text_index.cpu()
        probs = torch.empty(len(image_index), dtype=torch.float32)
        if len(image_index) == 0:
            return probs
        dtype = self.itm_head.weight.dtype  # hidden states may be stored in half precision
        lengths = text_mask.sum(1).cpu()[text_index]
        per_image = (2 * self.config.joint_layers + 1) * image_hidden.shape[1] * self.config.text_width \
            * torch.finfo(dtype).bits // 8
        block = max(1, cache_mb * 2 ** 20 // per_image)
        images = torch.unique(image_index)
        lookup = torch.full((image_hidden.shape[0],), -1, dtype=torch.long)
        for b in range(0, len(images), block):
            block_images = images[b:b + block]
            lookup[block_images] = torch.arange(len(block_images))
            cache = self._image_side_cache(image_hidden, block_images, pair_batch_size, dtype)
            pairs = torch.nonzero(torch.isin(image_index, block_images)).squeeze(1)
            pairs = pairs[torch.sort(lengths[pairs], stable=True).indices]
            for start in range(0, len(pairs), pair_batch_size):
                sel = pairs[start:start + pair_batch_size]
                rows = lookup[image_index[sel]].to(self.device)
                jj = text_index[sel].to(text_hidden.device)
                length = max(int(lengths[sel].max()), 1)
                probs[sel] = self._cached_match_prob(
                    cache, rows, text_hidden[jj, :length].to(self.device, dtype),
                    text_mask[jj, :length].to(self.device)).float().cpu()
        return probs

    def _image_side_cache(self, image_hidden: torch.Tensor, images: torch.Tensor, batch_size: int,
                          dtype: torch.dtype) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
        """Per image: the first self-attention output of ``img_joint_layer`` and ``text_joint_layer``'s
        cross-attention keys/values, for ``images`` (indices into ``image_hidden``)."""
        firsts, kvs = [], []
        for start in range(0, len(images), batch_size):
            idx = images[start:start + batch_size].to(image_hidden.device)
            ih = image_hidden[idx].to(self.device, dtype)
            firsts.append(self.img_joint_layer.first_self_attention(self.img_joint_proj(ih), None))
            kvs.append(self.text_joint_layer.context_kv(ih))
        kv = [(torch.cat([b[layer][0] for b in kvs]), torch.cat([b[layer][1] for b in kvs]))
              for layer in range(len(kvs[0]))]
        return torch.cat(firsts), kv

    def _cached_match_prob(self, cache, rows: torch.Tensor, text_hidden: torch.Tensor,
                           text_mask: torch.Tensor) -> torch.Tensor:
        first, kv = cache
        text_out = self.text_joint_layer(text_hidden, text_mask, None, None, cls_only=True,
                                         context_kv=[(k[rows], v[rows]) for k, v in kv])
        image_out = self.img_joint_layer(first[rows], None, text_hidden, text_mask, cls_only=True,
                                         first_self_done=True)
        return (self.itm_head(text_out[:, 0]).float().softmax(-1)[:, 1]
                + self.itm_head_i(image_out[:, 0]).float().softmax(-1)[:, 1]) / 2

    @torch.no_grad()
    def rank(self, image_embeds: torch.Tensor, image_hidden: torch.Tensor, text_embeds: torch.Tensor,
             text_hidden: torch.Tensor, text_mask: torch.Tensor, top_k: Optional[int] = None,
             pair_batch_size: int = 256, cache_mb: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
        """The official two-stage ranking. Returns ``(i2t_scores [Ni,Nt], t2i_scores [Nt,Ni])`` (float32, CPU):
        for each query the ``top_k`` candidates by cosine similarity score ``match_prob + cosine``, all others
        -100. Each distinct (image, text) pair is scored once, pairs from both directions together, in
        batches of ``pair_batch_size`` through the cross encoders (see :meth:`pair_match_prob`; ``cache_mb``
        bounds the memory of the per-image precomputed parts)."""
        self._require_cross("rank")
        k = int(top_k or self.config.top_k)
        sims = image_embeds.float() @ text_embeds.float().to(image_embeds.device).T  # [Ni, Nt]
        ni, nt = sims.shape
        ki, kt = min(k, nt), min(k, ni)
        i2t_idx = sims.topk(ki, dim=1).indices.cpu()  # [Ni, ki] texts per image
        t2i_idx = sims.topk(kt, dim=0).indices.T.cpu()  # [Nt, kt] images per text
        sims = sims.cpu()
        img_a = torch.arange(ni).repeat_interleave(ki)
        txt_a = i2t_idx.reshape(-1)
        txt_b = torch.arange(nt).repeat_interleave(kt)
        img_b = t2i_idx.reshape(-1)
        flat = torch.cat([img_a * nt + txt_a, img_b * nt + txt_b])
        unique, inverse = torch.unique(flat, return_inverse=True)
        probs = self.pair_match_prob(image_hidden, text_hidden, text_mask, unique // nt, unique % nt,
                                     pair_batch_size=pair_batch_size, cache_mb=cache_mb)[inverse]
        i2t = torch.full((ni, nt), NO_SCORE)
        i2t[img_a, txt_a] = probs[: len(img_a)] + sims[img_a, txt_a]
        t2i = torch.full((nt, ni), NO_SCORE)
        t2i[txt_b, img_b] = probs[len(img_a):] + sims[img_b, txt_b]
        return i2t, t2i

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``; load it back with
        ``models.load_model(directory)``."""
        from safetensors.torch import save_file

        from ccmb.atomic import commit, temp_path_for, write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        target = directory / WEIGHTS_FILE
        tmp = temp_path_for(target)
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt", "family": self.config.family})
            commit(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        write_json(directory / CONFIG_FILE, self.config.to_dict())
        logger.info("saved %s (%s) to %s", self.config.name, self.config.family, directory)
        return directory
