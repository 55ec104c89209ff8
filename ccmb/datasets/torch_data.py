"""Torch ``Dataset`` wrappers over the task data objects, and their collate helpers.

``ImageDataset(data, transform)`` yields ``(index, transform(image))`` for every image of any task data
object (for text-to-image sets: the reference images); ``TextDataset(texts)`` yields ``(index, text)``;
``PairDataset(matching_data, transform)`` yields ``(index, image, text, label)``. Without a transform
images stay ``PIL.Image`` and the collate helpers return them as lists.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .data import ImageData, MatchingData

Transform = Optional[Callable[[Any], Any]]


class ImageDataset(Dataset):
    """Every image of ``data`` (by index in ``data.image_ids``), through ``transform``."""

    def __init__(self, data: ImageData, transform: Transform = None,
                 indices: Optional[Sequence[int]] = None) -> None:
        self.data = data
        self.transform = transform
        self.indices = list(indices) if indices is not None else list(range(len(data.image_ids)))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Tuple[int, Any]:
        i = self.indices[k]
        img = self.data.load_image(i)
        return i, (self.transform(img) if self.transform is not None else img)


class TextDataset(Dataset):
    """Texts by index, optionally through ``tokenize`` (a callable on one string)."""

    def __init__(self, texts: Sequence[str], tokenize: Transform = None) -> None:
        self.texts = list(texts)
        self.tokenize = tokenize

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> Tuple[int, Any]:
        t = self.texts[i]
        return i, (self.tokenize(t) if self.tokenize is not None else t)


class PairDataset(Dataset):
    """Image-text pairs of a matching set: ``(pair index, image, text, label)``."""

    def __init__(self, data: MatchingData, transform: Transform = None) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data.labels)

    def __getitem__(self, k: int) -> Tuple[int, Any, str, int]:
        img = self.data.load_image(self.data.pair_images[k])
        if self.transform is not None:
            img = self.transform(img)
        return k, img, self.data.pair_texts[k], self.data.labels[k]


def _stack(items: List[Any]) -> Any:
    if items and isinstance(items[0], torch.Tensor):
        return torch.stack(items)
    return items


def collate_images(batch: List[Tuple[int, Any]]) -> Tuple[torch.Tensor, Any]:
    """``(LongTensor of indices, stacked images)`` (a list when images are not tensors)."""
    idx, imgs = zip(*batch)
    return torch.tensor(idx, dtype=torch.long), _stack(list(imgs))


def collate_texts(batch: List[Tuple[int, Any]]) -> Tuple[torch.Tensor, List[Any]]:
    """``(LongTensor of indices, list of texts)``."""
    idx, texts = zip(*batch)
    return torch.tensor(idx, dtype=torch.long), list(texts)


def collate_pairs(batch: List[Tuple[int, Any, str, int]]):
    """``(indices, images, texts, labels)`` with tensors for indices/labels (and images if tensors)."""
    idx, imgs, texts, labels = zip(*batch)
    return (torch.tensor(idx, dtype=torch.long), _stack(list(imgs)), list(texts),
            torch.tensor(labels, dtype=torch.long))


def make_loader(dataset: Dataset, batch_size: int = 64, num_workers: int = 0) -> DataLoader:
    """An ordered DataLoader with the matching collate helper."""
    collate = {ImageDataset: collate_images, TextDataset: collate_texts, PairDataset: collate_pairs}
    fn = next((f for cls, f in collate.items() if isinstance(dataset, cls)), None)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=fn)
