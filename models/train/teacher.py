"""The EMA teacher of the two distillations, its feature queues, and the input masking of FgD and MLM."""
from __future__ import annotations

import copy
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class EMATeacher(nn.Module):
    """A frozen copy of the student updated as ``t = m * t + (1 - m) * s`` after every optimizer step.

    The whole model is copied (encoders, projections, cross encoders, so checkpoints hold a complete model);
    it runs in eval mode under ``no_grad``. ``reads``: name prefixes of the parameters the teacher's users
    read (the objective: the two encoders and projections); only those follow the student, the others keep
    their initial copy (an EMA of weights nobody reads is compute spent for nothing). ``None``: every
    parameter. Parameters frozen in the student (a frozen vision tower) are copied unchanged.
    """

    def __init__(self, student: nn.Module, momentum: float = 0.995,
                 reads: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.momentum = momentum
        self.reads = None if reads is None else tuple(reads)
        self._pairs: Optional[Tuple[int, List[torch.Tensor], List[torch.Tensor]]] = None

    def train(self, mode: bool = True) -> "EMATeacher":  # the teacher stays in eval mode
        super().train(False)
        return self

    def tracked_names(self) -> List[str]:
        """Names of the parameters the EMA update moves."""
        return [n for n, _ in self.model.named_parameters() if self.reads is None or n.startswith(self.reads)]

    def _tracked(self, student: nn.Module) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(teacher, student) parameters that the update moves, listed once per student module."""
        if self._pairs is None or self._pairs[0] != id(student):
            names = set(self.tracked_names())
            source = dict(student.named_parameters())
            pairs = [(t, source[n]) for n, t in self.model.named_parameters() if n in names]
            self._pairs = (id(student), [t for t, _ in pairs], [s for _, s in pairs])
        return self._pairs[1], self._pairs[2]

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        teacher, source = self._tracked(student)
        if any(t.dtype != s.dtype or t.device != s.device for t, s in zip(teacher, source)):
            source = [s.to(t.device, t.dtype) for t, s in zip(teacher, source)]  # a student in another precision
        # t + (1 - m) * (s - t) = m * t + (1 - m) * s: one fused kernel per group instead of two
        torch._foreach_lerp_(teacher, source, 1 - self.momentum)
        for t, s in zip(self.model.buffers(), student.buffers()):
            t.copy_(s)


class FeatureQueue(nn.Module):
    """Ring buffers of the teacher's image/text features and their image ids (ALBEF's queues).

    The queue starts full of random unit vectors with id -1 (no real image has a negative id), as ALBEF's
    ``normalize(randn(dim, K))``: the TgD loss sees the same number of columns from the first step, so its
    logged value does not rise while the queue fills. ``valid`` still counts the slots holding real
    features. Every rank enqueues the same gathered features, so the queues stay identical across ranks.
    """

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.size = int(size)
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("image", F.normalize(torch.randn(self.size, dim, generator=g), dim=-1))
        self.register_buffer("text", F.normalize(torch.randn(self.size, dim, generator=g), dim=-1))
        self.register_buffer("ids", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("valid", torch.zeros((), dtype=torch.long))

    def contents(self):
        """All slots (random unit vectors where no real feature arrived yet)."""
        return self.image, self.text, self.ids

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


def mlm_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_token_id: int, vocab_size: int,
             ratio: float = 0.15, special_ids: Iterable[int] = (),
             generator: Optional[torch.Generator] = None):
    """BERT's masking for MLM: choose ``ratio`` of the real (non-special, non-padding) tokens; of those 80 %
    become ``[MASK]``, 10 % a random token, 10 % stay. Returns ``(masked ids, labels)`` with labels -100
    where nothing is predicted. At least one token per batch is chosen when any is eligible."""
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for s in special_ids:
        special |= input_ids == int(s)
    eligible = attention_mask.bool() & ~special
    shape = input_ids.shape
    chosen = eligible & (torch.rand(shape, generator=generator).to(input_ids.device) < ratio)
    if not chosen.any() and eligible.any():  # a short batch drew nothing: predict its first eligible token
        first = int(torch.nonzero(eligible.flatten())[0])
        chosen = torch.zeros_like(eligible).flatten()
        chosen[first] = True
        chosen = chosen.view(shape)
    labels = input_ids.masked_fill(~chosen, -100)
    action = torch.rand(shape, generator=generator).to(input_ids.device)
    random_ids = torch.randint(0, int(vocab_size), shape, generator=generator).to(input_ids.device)
    out = input_ids.masked_fill(chosen & (action < 0.8), int(mask_token_id))
    out = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, out)
    return out, labels


def keep_patch_indices(batch: int, num_patches: int, ratio: float,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[B, K] sorted indices of the patch tokens each image keeps when dropping ``ratio`` of them (FLIP's
    random masking: a uniformly random subset per image, at least one patch kept)."""
    keep = max(1, int(round(num_patches * (1.0 - ratio))))
    order = torch.rand((batch, num_patches), generator=generator).argsort(dim=1)
    return order[:, :keep].sort(dim=1).values


def drop_patches(pixel_values: torch.Tensor, patch_size: int, ratio: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero a ``ratio`` of the ``patch_size`` squares of each (normalised) image: 0 is the dataset mean.
    Works with any image encoder but saves no compute; R2D2 models drop the patch *tokens* instead
    (:meth:`models.r2d2.R2D2Model.encode_image` with ``keep_patches``)."""
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
