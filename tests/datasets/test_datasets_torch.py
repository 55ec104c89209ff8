"""Torch wrappers and collate helpers."""
from __future__ import annotations

import numpy as np
import torch

from ccmb import datasets as ds


def to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0


def test_image_text_pair_datasets(tmp_path, fx):
    fx.build_r2d2(tmp_path)
    data = ds.load_dataset("icr", tmp_path)
    loader = ds.make_loader(ds.ImageDataset(data, to_tensor), batch_size=2)
    batches = list(loader)
    idx = torch.cat([b[0] for b in batches])
    assert idx.tolist() == [0, 1, 2] and batches[0][1].shape == (2, 3, 9, 12)
    assert abs(batches[0][1][0, 0, 0, 0].item() - 200 / 255) < 0.03
    idx, texts = ds.collate_texts([ds.TextDataset(data.texts)[i] for i in range(3)])
    assert idx.tolist() == [0, 1, 2] and texts == data.texts
    m = ds.load_dataset("icm", tmp_path)
    idx, imgs, texts, labels = next(iter(ds.make_loader(ds.PairDataset(m, to_tensor), batch_size=3)))
    assert labels.tolist() == [1, 0, 1] and texts == m.pair_texts and imgs.shape[0] == 3
    # no transform: PIL images come back as a list
    _, pil = ds.collate_images([ds.ImageDataset(data)[0]])
    assert isinstance(pil, list) and pil[0].size == (12, 9)


def test_tsv_images_through_worker_processes(tmp_path, fx):
    fx.build_cclip(tmp_path)
    data = ds.load_dataset("coco-cn", tmp_path)
    data.load_image(0)  # opens the fd in the parent first
    loader = ds.make_loader(ds.ImageDataset(data, to_tensor), batch_size=3, num_workers=1)
    idx, imgs = next(iter(loader))
    assert idx.tolist() == [0, 1, 2] and imgs.shape == (3, 3, 9, 12)
