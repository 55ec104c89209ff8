"""The R2D2 cross encoders: BERT-layout layers with self-attention, cross-attention and a feed-forward block.

Parameter names follow the official checkpoints (``encoder.layer.N.attention.self.query`` ...,
``crossattention.*``, ``intermediate.dense``, ``output.{dense,LayerNorm}``). The official modules also carry a BERT
embedding layer that is never applied (the input goes straight into layer 0); it is not built here, and its
checkpoint keys are in the loader's ignorable set. Attention uses ``torch.nn.functional.scaled_dot_product_attention``,
except in training on CPU with attention dropout (see :func:`attention`).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

KV = Tuple[torch.Tensor, torch.Tensor]
#: training attention on CPU with fewer keys than this uses the keys-major softmax layout (see :func:`attention`)
SHORT_KEYS = 16


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with the same distribution (each element zeroed with probability ``p``, the others scaled by
    ``1 / (1 - p)``). On CPU the keep mask is drawn as uniform floats compared and scaled in place: about a third
    cheaper, forward + backward, than ``F.dropout``, whose Bernoulli draw is a serial per-element loop. Other
    devices use ``F.dropout`` (a fused kernel there)."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0 or x.device.type != "cpu":
        return F.dropout(x, p, True)
    return x * torch.rand_like(x).ge_(p).div_(1.0 - p)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` through :func:`fast_dropout` (no parameters: swapping it in changes no checkpoint key)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fast_dropout(input, self.p, self.training)


def use_fast_dropout(module: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` under ``module`` by :class:`FastDropout` (same ``p``); returns how many."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))
                swapped += 1
    return swapped


class KeyMask:
    """A key-padding mask [B, Lk] or [B, 1, Lq, Lk] (True = attend) in the forms attention needs, made once per
    stack and shared by its layers: bool [B, 1, 1 or Lq, Lk] for ``scaled_dot_product_attention``, additive
    (0 / dtype minimum) for the training path of :func:`attention`."""

    __slots__ = ("bool4d", "_additive")

    def __init__(self, mask: torch.Tensor) -> None:
        mask = mask.to(torch.bool)
        self.bool4d = mask if mask.dim() == 4 else mask[:, None, None, :]
        self._additive: Optional[torch.Tensor] = None

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        if self._additive is None or self._additive.dtype != dtype:
            self._additive = torch.zeros(self.bool4d.shape, dtype=dtype, device=self.bool4d.device).masked_fill_(
                ~self.bool4d, torch.finfo(dtype).min)
        return self._additive


def as_key_mask(mask: Union[None, torch.Tensor, KeyMask]) -> Optional[KeyMask]:
    """``mask`` as a :class:`KeyMask` (None stays None)."""
    return mask if mask is None or isinstance(mask, KeyMask) else KeyMask(mask)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[KeyMask], dropout_p: float,
              training: bool) -> torch.Tensor:
    """Multi-head attention [B, h, Lq, d] with dropout on the attention probabilities (BERT's and the official
    R2D2 cross encoders' semantics).

    ``scaled_dot_product_attention`` in evaluation, without dropout or off the CPU. With dropout on CPU, torch's
    fused CPU kernel is not allowed and its math fallback adds a Bernoulli draw, a mask conversion and checks per
    call, so the same computation is written out: scaled scores, the stack's shared additive mask, softmax,
    :func:`fast_dropout`, weighted values; a single query (the class token of the last layer) uses an
    elementwise product and sum instead of a batched matmul of 1-row matrices. Rows must keep at least one key
    (they do: every text keeps its [CLS])."""
    if not training or dropout_p <= 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.bool4d,
                                              dropout_p=dropout_p if training else 0.0)
    q = q * (q.shape[-1] ** -0.5)
    additive = None if mask is None else mask.additive(q.dtype)
    if q.shape[2] > 1 and k.shape[2] < SHORT_KEYS:
        # keys-major layout [B, h, Lk, Lq], softmax over the keys' dim -2: the same values, but torch's CPU
        # softmax over a last dim shorter than one vector (9 image tokens kept after FgD's token dropping)
        # runs 3-11x slower; from 16 keys on the row-major layout is as fast or faster
        # (perf/bench_attention_softmax.py)
        scores = torch.matmul(k, q.transpose(-1, -2))
        if additive is not None:
            scores = scores + additive.transpose(-1, -2)
        probs = fast_dropout(torch.softmax(scores, dim=-2), dropout_p)
        return torch.matmul(probs.transpose(-1, -2), v)
    if q.shape[2] == 1:
        scores = (q * k).sum(-1).unsqueeze(2)  # [B, h, 1, Lk]
    else:
        scores = torch.matmul(q, k.transpose(-1, -2))
    if additive is not None:
        scores = scores + additive
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout_p)
    if q.shape[2] == 1:
        return (probs.transpose(-1, -2) * v).sum(-2, keepdim=True)
    return torch.matmul(probs, v)


class _QKV(nn.Module):
    def __init__(self, width: int, kv_width: int) -> None:
        super().__init__()
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)


class _DenseNorm(nn.Module):
    """``dense`` then dropout, residual add, post ``LayerNorm`` (BERT's SelfOutput / Output)."""

    def __init__(self, in_width: int, width: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = FastDropout(dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class CrossAttentionBlock(nn.Module):
    """Multi-head attention from ``hidden`` to ``context`` (``context=None``: self-attention), post-LN."""

    def __init__(self, width: int, kv_width: int, heads: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_dropout = dropout
        self.self = _QKV(width, kv_width)
        self.output = _DenseNorm(width, width, eps, dropout)

    def project_kv(self, context: torch.Tensor) -> KV:
        """Keys and values [B, heads, Lk, head_dim] of ``context`` (reusable for every query of that context)."""
        b, lk, _ = context.shape
        k = self.self.key(context).view(b, lk, self.heads, -1).transpose(1, 2)
        v = self.self.value(context).view(b, lk, self.heads, -1).transpose(1, 2)
        return k, v

    def forward(self, hidden: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Union[None, torch.Tensor, KeyMask] = None, query_len: Optional[int] = None,
                kv: Optional[KV] = None) -> torch.Tensor:
        """``mask``: bool [B, Lk] (True = attend) over the keys or its :class:`KeyMask`, or None for all keys.
        ``query_len``: compute the output for the first ``query_len`` positions only (keys/values still cover
        every position). ``kv``: precomputed :meth:`project_kv` of the context (then ``context`` is not used)."""
        if kv is None:
            kv = self.project_kv(hidden if context is None else context)
        if query_len is not None:
            hidden = hidden[:, :query_len]
        b, lq, width = hidden.shape
        q = self.self.query(hidden).view(b, lq, self.heads, -1).transpose(1, 2)
        k, v = kv
        out = attention(q, k, v, as_key_mask(mask), self.attn_dropout, self.training)
        out = out.transpose(1, 2).reshape(b, lq, width)
        return self.output(out, hidden)


class _Intermediate(nn.Module):
    def __init__(self, width: int, mlp: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, mlp)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))  # BERT "gelu" = exact erf GELU


class CrossLayer(nn.Module):
    """Self-attention -> cross-attention to the other modality -> feed-forward (all post-LN)."""

    def __init__(self, width: int, kv_width: int, heads: int, mlp: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.attention = CrossAttentionBlock(width, width, heads, eps, dropout)
        self.crossattention = CrossAttentionBlock(width, kv_width, heads, eps, dropout)
        self.intermediate = _Intermediate(width, mlp)
        self.output = _DenseNorm(mlp, width, eps, dropout)

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], context: Optional[torch.Tensor],
                context_mask: Optional[torch.Tensor], query_len: Optional[int] = None,
                context_kv: Optional[KV] = None, skip_self: bool = False) -> torch.Tensor:
        """``skip_self``: ``hidden`` already is this layer's self-attention output."""
        if skip_self:
            hidden = hidden if query_len is None else hidden[:, :query_len]
        else:
            hidden = self.attention(hidden, None, mask, query_len=query_len)
        hidden = self.crossattention(hidden, context, context_mask, kv=context_kv)
        return self.output(self.intermediate(hidden), hidden)


class _LayerStack(nn.Module):
    def __init__(self, layers: int, **kwargs) -> None:
        super().__init__()
        self.layer = nn.ModuleList(CrossLayer(**kwargs) for _ in range(layers))


class CrossEncoder(nn.Module):
    """A stack of :class:`CrossLayer` (``encoder.layer.N``) that fuses one modality with the other.

    ``forward(hidden, mask, context, context_mask)`` returns the last hidden state [B, L, width]; masks are
    [B, L] / [B, Lc] with 1 = token, 0 = padding (None = no padding). With ``cls_only=True`` the last layer
    is computed for position 0 only and the result is [B, 1, width] (the same values, less work: the match
    heads read position 0 only).
    """

    def __init__(self, layers: int, width: int, kv_width: int, heads: int, mlp: int,
                 eps: float = 1e-12, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = _LayerStack(layers, width=width, kv_width=kv_width, heads=heads, mlp=mlp,
                                   eps=eps, dropout=dropout)

    def forward(self, hidden: torch.Tensor, mask: Optional[torch.Tensor], context: Optional[torch.Tensor],
                context_mask: Optional[torch.Tensor] = None, cls_only: bool = False,
                context_kv: Optional[List[KV]] = None, first_self_done: bool = False) -> torch.Tensor:
        """Run the stack. For ranking many pairs the parts that depend on one side only can be precomputed once
        per item and gathered: ``context_kv`` (from :meth:`context_kv`, then ``context`` may be None) and
        ``first_self_done`` (``hidden`` is the output of :meth:`first_self_attention`)."""
        mask, context_mask = as_key_mask(mask), as_key_mask(context_mask)  # once for every layer
        last = len(self.encoder.layer) - 1
        for i, layer in enumerate(self.encoder.layer):
            hidden = layer(hidden, mask, context, context_mask, query_len=1 if cls_only and i == last else None,
                           context_kv=None if context_kv is None else context_kv[i],
                           skip_self=first_self_done and i == 0)
        return hidden

    def context_kv(self, context: torch.Tensor) -> List[KV]:
        """Every layer's cross-attention keys/values of ``context`` (they depend on the context only)."""
        return [layer.crossattention.project_kv(context) for layer in self.encoder.layer]

    def first_self_attention(self, hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Layer 0's self-attention output (it depends on this encoder's own input only)."""
        return self.encoder.layer[0].attention(hidden, None, as_key_mask(mask))


class _LMTransform(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class _LMPrediction(nn.Module):
    def __init__(self, width: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.transform = _LMTransform(width, eps)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden)) + self.bias


class MLMHead(nn.Module):
    """BERT's masked-LM head (``BertOnlyMLMHead``): ``predictions.transform.{dense,LayerNorm}``,
    ``predictions.decoder``, ``predictions.bias``. Registered as ``cls`` its parameter names equal those of a
    Hugging Face ``BertForMaskedLM`` checkpoint (``cls.predictions.*``), which can initialise it
    (:func:`models.loading.init_mlm_head_from_hf`)."""

    def __init__(self, width: int, vocab_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.predictions = _LMPrediction(width, vocab_size, eps)
        init_bert_weights(self)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits [..., vocab] of hidden states [..., width]."""
        return self.predictions(hidden)


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation: Linear/Embedding ~ N(0, std), zero bias, LayerNorm = (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_fan_in_weights(module: nn.Module) -> None:
    """Linear ~ N(0, 1/fan_in) (gain ~1 per matrix at any width), zero bias, LayerNorm = (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=m.in_features ** -0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
