"""Image preprocessing for R2D2 without torchvision: CLIP's resize + centre crop + normalisation in PIL/numpy.

``ImageTransform(224)(pil_image)`` -> float32 tensor [3, 224, 224]: bicubic resize of the short side to the
target size (long side ``int(size * long / short)``), centre crop (offsets ``round((dim - size) / 2)``), scale to
[0, 1], normalise with CLIP's mean/std. The same steps as torchvision's ``Resize(size, BICUBIC)``,
``CenterCrop(size)``, ``ToTensor()``, ``Normalize(mean, std)`` on PIL images.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

CLIP_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class ImageTransform:
    """PIL image -> normalised float tensor [3, image_size, image_size]."""

    def __init__(self, image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def resize(self, image: Image.Image) -> Image.Image:
        """Bicubic resize so that the short side equals ``image_size`` (aspect ratio kept)."""
        w, h = image.size
        size = self.image_size
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        if (new_w, new_h) == (w, h):
            return image
        return image.resize((new_w, new_h), Image.BICUBIC)

    def center_crop(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        size = self.image_size
        if w < size or h < size:  # only after a resize that rounded down; pad like torchvision does
            canvas = Image.new(image.mode, (max(w, size), max(h, size)))
            canvas.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
            image, (w, h) = canvas, canvas.size
        top = int(round((h - size) / 2.0))
        left = int(round((w - size) / 2.0))
        return image.crop((left, top, left + size, top + size))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"ImageTransform expects a PIL image, got {type(image).__name__}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = self.center_crop(self.resize(image))
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - self.mean) / self.std)

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size})"


def stack_images(images: Sequence[Union[Image.Image, torch.Tensor]],
                 transform: Optional[Callable[[Image.Image], torch.Tensor]] = None) -> torch.Tensor:
    """Batch images into [N, 3, H, W]: PIL images go through ``transform``; tensors are stacked as they are."""
    tensors = []
    for i, img in enumerate(images):
        if isinstance(img, torch.Tensor):
            tensors.append(img)
        elif transform is None:
            raise ValueError(f"stack_images: item {i} is a PIL image but no transform was given")
        else:
            tensors.append(transform(img))
    if not tensors:
        raise ValueError("stack_images: empty batch")
    return torch.stack(tensors)


class ImageTextCollator:
    """Collate ``(image, text)`` items into ``{"pixel_values", "input_ids", "attention_mask"}`` for a DataLoader.

    ``tokenizer`` is a (fast) BERT tokenizer, e.g. from :func:`models.tokenizer.load_tokenizer`; texts are
    truncated to ``max_length`` tokens and padded to the longest text of the batch.
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], tokenizer, max_length: int = 64) -> None:
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: List[Tuple[Union[Image.Image, torch.Tensor], str]]) -> Dict[str, torch.Tensor]:
        images = [item[0] for item in batch]
        texts = [item[1] for item in batch]
        from models.tokenizer import tokenize

        out = tokenize(self.tokenizer, texts, max_length=self.max_length)
        out["pixel_values"] = stack_images(images, self.transform)
        return out
