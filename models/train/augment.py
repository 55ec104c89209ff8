"""Training image transforms without torchvision: random resized crop, horizontal flip, normalise.

Each call takes an explicit ``random.Random`` so a sample's augmentation depends only on its seed,
which keeps the data order and content reproducible across ``--resume``.
"""
from __future__ import annotations

import math
import random
from typing import Sequence, Tuple

import numpy as np
import torch
from PIL import Image

#: CLIP normalisation (R2D2 uses CLIP's image encoder).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: Tuple[float, float] = (0.5, 1.0),
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """A crop box (left, top, right, bottom) covering ``scale`` of the area with aspect in ``ratio``
    (torchvision's algorithm: 10 tries, then a centre crop at the clamped ratio)."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def to_tensor(img: Image.Image, mean: Sequence[float] = CLIP_MEAN,
              std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """PIL RGB -> normalised float tensor [3, H, W]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


class TrainTransform:
    """Random resized crop (scale ``scale``) to ``size``, random horizontal flip, CLIP normalisation."""

    def __init__(self, size: int, scale: Tuple[float, float] = (0.5, 1.0), flip: bool = True,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        self.size, self.scale, self.flip, self.mean, self.std = int(size), tuple(scale), flip, mean, std

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        img = img.convert("RGB")
        box = random_resized_crop_box(img.width, img.height, rng, self.scale)
        img = img.resize((self.size, self.size), Image.BICUBIC, box=box)
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img, self.mean, self.std)
