"""The EMA teacher of the two distillations, its feature queues, and the input masking of FgD."""
from __future__ import annotations

import copy
from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn


class EMATeacher(nn.Module):
    """A frozen copy of the student updated as ``t = m * t + (1 - m) * s`` after every optimizer step.

    The whole model is copied (encoders, projections, cross encoders); it runs in eval mode under
    ``no_grad``. Parameters frozen in the student (a frozen vision tower) are copied unchanged.
    """

    def __init__(self, student: nn.Module, momentum: float = 0.995) -> None:
        super().__init__()
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.momentum = momentum

    def train(self, mode: bool = True) -> "EMATeacher":  # the teacher stays in eval mode
        super().train(False)
        return self

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        m = self.momentum
        teacher = list(self.model.parameters())
        source = [s.detach().to(t.dtype) for t, s in zip(teacher, student.parameters())]
        torch._foreach_mul_(teacher, m)  # one fused kernel per group instead of two per tensor
        torch._foreach_add_(teacher, source, alpha=1 - m)
        for t, s in zip(self.model.buffers(), student.buffers()):
            t.copy_(s)


class FeatureQueue(nn.Module):
    """Ring buffers of the teacher's image/text features and their image ids (ALBEF's queues).

    ``valid`` counts filled slots, so a young queue contributes only what it holds. Every rank enqueues
    the same gathered features, so the queues stay identical across ranks.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = int(size)
        self.register_buffer("image", torch.zeros(self.size, dim))
        self.register_buffer("text", torch.zeros(self.size, dim))
        self.register_buffer("ids", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("valid", torch.zeros((), dtype=torch.long))

    def contents(self):
        n = int(self.valid)
        return self.image[:n], self.text[:n], self.ids[:n]

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> None:
        n = image.shape[0]
        if self.size == 0 or n == 0:
            return
        if n > self.size:
            image, text, ids, n = image[-self.size:], text[-self.size:], ids[-self.size:], self.size
        idx = (int(self.ptr) + torch.arange(n, device=self.image.device)) % self.size
        self.image[idx] = image.detach().to(self.image.dtype)
        self.text[idx] = text.detach().to(self.text.dtype)
        self.ids[idx] = ids.detach().to(torch.long)
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.valid.fill_(min(self.size, int(self.valid) + n))


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_token_id: int,
                ratio: float, special_ids: Iterable[int] = (),
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Replace a ``ratio`` of the real (non-special, non-padding) tokens by ``mask_token_id``."""
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for s in special_ids:
        special |= input_ids == int(s)
    eligible = attention_mask.bool() & ~special
    rnd = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    chosen = eligible & (rnd < ratio)
    return input_ids.masked_fill(chosen, int(mask_token_id))


def drop_patches(pixel_values: torch.Tensor, patch_size: int, ratio: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero a ``ratio`` of the ``patch_size`` squares of each (normalised) image: 0 is the dataset mean,
    so a dropped patch carries no information; works with any ViT without changing its token count."""
    b, _, h, w = pixel_values.shape
    gh, gw = h // patch_size, w // patch_size
    keep = (torch.rand((b, 1, gh, gw), generator=generator) >= ratio).to(pixel_values.dtype)
    keep = keep.to(pixel_values.device)
    keep = keep.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    out = pixel_values.clone()
    out[:, :, : gh * patch_size, : gw * patch_size] *= keep
    return out


def special_token_ids(tokenizer) -> Sequence[int]:
    """cls/sep/pad/mask ids of a HF tokenizer (those never masked)."""
    ids = []
    for name in ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            ids.append(int(v))
    return ids
