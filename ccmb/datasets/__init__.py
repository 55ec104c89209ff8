"""Downstream datasets of CCMB: one registry of loaders for every evaluation set.

>>> from ccmb import datasets
>>> [s.name for s in datasets.list_datasets()]          # doctest: +SKIP
>>> data = datasets.load_dataset("flickr30k-cna", "/data/ccmb")   # split: the paper's (test)
>>> data.texts[0], data.text_to_images[0], data.load_image(0)     # doctest: +SKIP

Torch wrappers (``ImageDataset``, ``TextDataset``, ``PairDataset``, collate helpers) are imported
lazily so that plain use does not pay for importing torch. See ``docs/datasets.md``.
"""
from __future__ import annotations

from typing import Any

from .base import (DatasetError, DatasetFormatError, DatasetNotFoundError, MissingImageError,
                   ParseLog, UnknownDatasetError, UnknownSplitError, UnsafeFileError)
from .data import (TASK_NAMES, CaptionData, ClassificationData, ImageData, MatchingData, RetrievalData,
                   TextToImageData)
from .imagesource import FolderImages, TsvImages, build_tsv_index, load_tsv_index
from .registry import DatasetSpec, get_spec, list_datasets, load_dataset, register
from .templates import get_templates

_TORCH_NAMES = ("ImageDataset", "TextDataset", "PairDataset", "collate_images", "collate_texts",
                "collate_pairs", "make_loader")

__all__ = ["DatasetError", "DatasetFormatError", "DatasetNotFoundError", "MissingImageError",
           "ParseLog", "UnknownDatasetError", "UnknownSplitError", "UnsafeFileError", "TASK_NAMES", "CaptionData", "ClassificationData", "ImageData",
           "MatchingData", "RetrievalData", "TextToImageData", "FolderImages", "TsvImages",
           "build_tsv_index", "load_tsv_index", "DatasetSpec", "get_spec", "list_datasets",
           "load_dataset", "register", "get_templates", *_TORCH_NAMES]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from . import torch_data

        return getattr(torch_data, name)
    raise AttributeError(f"module 'ccmb.datasets' has no attribute {name!r}")
