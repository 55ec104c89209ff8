"""The pre-training data pipeline: webdataset over a ccmb shard set (``ccmb/shards.py`` format).

* Shards are **resampled** (drawn with replacement) per rank and DataLoader worker from a seeded
  generator, or, with ``resampled=False``, split per rank and worker (shard ``i`` goes to global worker
  ``i % (world * workers)``) and cycled. Every stream is infinite; an *epoch* is virtual: its length in
  steps comes from ``sizes.json``, identical on every rank, so uneven shards never hang DDP.
* Every random choice (shard order, shuffle buffer, crop, flip, text field) comes from generators seeded
  by ``(seed, epoch, global worker, sample counter)``; the data state of a checkpoint is just
  ``(epoch, step in epoch)`` and a resumed run skips the consumed batches without decoding them
  (exact as long as no image in the skipped part fails to decode; a finished, verified shard set has none).
* Decoding, augmentation and tokenisation run in the workers; workers yield whole batches.
* Shards are local paths or fsspec URLs (``s3://bucket/shards``): every tar is opened through
  :mod:`ccmb.storage` and streamed (16 MB read-ahead), so the sample order, the per-rank split and the resume
  point are the same wherever the set lives.
"""
from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch
from webdataset import tariterators
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ccmb import storage
from ccmb.images import ImageDecodeError, decode_image
from ccmb.shards import (SIZES_FILE, TEXT_FIELDS, ShardFormatError, list_shards, read_sizes,
                         sample_from_members)

logger = logging.getLogger(__name__)

TEXT_CHOICES = ("random",) + TEXT_FIELDS + ("txt",)


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    h = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def image_id(meta: Dict[str, Any], key: str) -> int:
    """An int64 id of the *image*: Zero's ``image_key`` (one image, several texts), else the image's sha256
    (identical bytes), else the sample key. Pairs with equal ids are positives of each other."""
    src = meta.get("image_key") or meta.get("sha256") or key
    return mix_seed("img", src)


def choose_text(meta: Dict[str, Any], txt: str, choice: str, rng: random.Random) -> str:
    """One text of the sample: ``random`` among the non-empty title/content/query, or a fixed field
    (``title``/``content``/``query``/``txt``); falls back to the ``.txt`` member when empty."""
    if choice == "random":
        options = [meta[f] for f in TEXT_FIELDS if isinstance(meta.get(f), str) and meta[f].strip()]
        return rng.choice(options) if options else txt
    if choice == "txt":
        return txt
    value = meta.get(choice)
    return value if isinstance(value, str) and value.strip() else txt


class Tokenize:
    """Pads/truncates to a fixed ``max_length`` so every batch has the same shape."""

    def __init__(self, tokenizer, max_length: int = 64) -> None:
        self.tokenizer, self.max_length = tokenizer, int(max_length)

    def __call__(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


def resolve_shards(spec: Union[str, Path, Sequence[str]]) -> List[str]:
    """Tar paths of a shard folder, a brace pattern ``dir/{00000..00009}.tar``, a tar, or a list; local or
    fsspec URLs (``s3://bucket/shards``). Every tar must exist (one listing per folder on object storage)."""
    paths = [str(p) for p in list_shards(spec)]
    if not paths:
        raise FileNotFoundError(f"no NNNNN.tar shards in {spec}")
    listed: Dict[str, set] = {}
    missing = []
    for p in paths:
        if not storage.is_url(p):
            if not Path(p).is_file():
                missing.append(p)
            continue
        folder = str(storage.parent(p))
        if folder not in listed:
            try:
                listed[folder] = set(storage.list_files(folder))
            except FileNotFoundError:
                listed[folder] = set()
        if storage.name(p) not in listed[folder]:
            missing.append(p)
    if missing:
        raise FileNotFoundError(f"shard not found: {missing[0]} (from {spec})")
    return paths


def shard_sizes(paths: Sequence[str]) -> Dict[str, int]:
    """Samples per shard from the ``sizes.json`` next to each tar (required: run ``ccmb shards``
    finalisation on the set first)."""
    out: Dict[str, int] = {}
    cache: Dict[str, Dict[str, int]] = {}
    for p in paths:
        d = str(storage.parent(p))
        if d not in cache:
            cache[d] = read_sizes(d)
        name = storage.name(p)
        if name not in cache[d]:
            raise ShardFormatError(f"{storage.join(d, SIZES_FILE)}: no entry for {name}")
        out[p] = cache[d][name]
    return out


def open_shards(urls: Iterator[Dict[str, str]]) -> Iterator[Dict[str, Any]]:
    """webdataset's ``url_opener`` through :mod:`ccmb.storage`: ``{"url", "stream"}`` per tar, local or URL;
    each stream is closed when the next one is asked for."""
    for item in urls:
        url = item["url"]
        with storage.open_read(url, block_size=storage.STREAM_BLOCK) as stream:
            yield {"url": url, "stream": stream}


def tar_samples(urls: Iterator[Dict[str, str]]) -> Iterator[Dict[str, Any]]:
    """Raw webdataset samples (``__key__``, ``__url__``, one entry per member) of the tars in ``urls``."""
    return tariterators.group_by_keys(tariterators.tar_file_expander(open_shards(urls)))


class ShardStream(IterableDataset):
    """Infinite, seeded stream of training batches over shards (see the module docstring).

    Call :meth:`set_epoch` (and :meth:`set_start`, for a resumed epoch) before iterating a DataLoader
    over it with ``batch_size=None``.
    """

    def __init__(self, shards: Sequence[str], batch_size: int, image_transform: Callable,
                 tokenize: Callable[[Sequence[str]], Dict[str, torch.Tensor]], *,
                 text_choice: str = "random", seed: int = 0, shuffle_buffer: int = 1000,
                 resampled: bool = True, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if text_choice not in TEXT_CHOICES:
            raise ValueError(f"text choice {text_choice!r}: use one of {', '.join(TEXT_CHOICES)}")
        self.shards = list(shards)
        self.batch_size = int(batch_size)
        self.image_transform, self.tokenize = image_transform, tokenize
        self.text_choice, self.seed, self.shuffle_buffer = text_choice, int(seed), int(shuffle_buffer)
        self.resampled, self.rank, self.world_size = resampled, int(rank), int(world_size)
        self.epoch = 0
        self.start_batch = 0  # batches of this rank's epoch already consumed (resume)
        self.failures: Dict[str, int] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, batches_done: int) -> None:
        self.start_batch = int(batches_done)

    # -- the stages -------------------------------------------------------------------------
    def _urls(self, worker: int, n_workers: int) -> Iterator[Dict[str, str]]:
        gw, total = self.rank * n_workers + worker, self.world_size * n_workers
        rng = random.Random(mix_seed(self.seed, self.epoch, gw, "shards"))
        own = self.shards
        if not self.resampled:
            own = [s for i, s in enumerate(self.shards) if i % total == gw]
            if not own:
                logger.warning("%d shards < %d global workers: worker %d resamples all shards",
                               len(self.shards), total, gw)
        while True:
            if self.resampled or not own:
                yield {"url": self.shards[rng.randrange(len(self.shards))]}
            else:
                order = list(own)
                rng.shuffle(order)
                for url in order:
                    yield {"url": url}

    def _shuffled(self, samples: Iterator[Dict[str, Any]], rng: random.Random) -> Iterator[Dict[str, Any]]:
        """Shuffle buffer (webdataset's scheme): starts yielding once ``initial`` samples are buffered and
        keeps growing to ``shuffle_buffer`` by reading two samples per yielded one."""
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        initial = min(self.shuffle_buffer, max(self.batch_size, 100))
        buf: List[Dict[str, Any]] = []
        for s in samples:
            buf.append(s)
            if len(buf) < self.shuffle_buffer:
                nxt = next(samples, None)
                if nxt is not None:
                    buf.append(nxt)
            if len(buf) >= initial:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def _decode(self, raw: Dict[str, Any], rng: random.Random) -> Optional[Dict[str, Any]]:
        key = raw.get("__key__", "?")
        src = f"{raw.get('__url__', '?')}:{key}"
        members = {k: v for k, v in raw.items() if not k.startswith("__")}
        try:  # the one reader of the sample layout (ccmb.shards)
            sample = sample_from_members(key, members, source=str(raw.get("__url__", "?")))
        except ShardFormatError as exc:
            self._fail("bad sample", str(exc))
            return None
        meta, txt, ext = sample.meta, sample.text, sample.image_ext
        try:
            img = decode_image(sample.image, source=f"{src}.{ext}")
        except ImageDecodeError as exc:
            self._fail("undecodable image", str(exc))
            return None
        text = choose_text(meta, txt, self.text_choice, rng)
        return {"key": key, "pixel_values": self.image_transform(img, rng), "text": text,
                "image_id": image_id(meta, key)}

    def _fail(self, reason: str, detail: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        logger.warning("skipping sample (%s): %s", reason, detail)

    def _collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
                 "image_ids": torch.tensor([it["image_id"] for it in items], dtype=torch.long),
                 "keys": [it["key"] for it in items]}
        batch.update(self.tokenize([it["text"] for it in items]))
        return batch

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader takes batches from its workers round-robin starting at worker 0. A loader resumed
        # at batch s must first yield what the original worker s % n produced next, so this worker plays
        # the role of original worker (worker + s) % n and skips the batches that role already produced.
        s = self.start_batch
        role = (worker + s) % n_workers
        skip = (s - role + n_workers - 1) // n_workers if s > role else 0
        gw = self.rank * n_workers + role
        shuffle_rng = random.Random(mix_seed(self.seed, self.epoch, gw, "shuffle"))
        raw = tar_samples(self._urls(role, n_workers))
        pending: List[Dict[str, Any]] = []
        batch_index, counter, skipped = 0, 0, 0
        for sample in self._shuffled(iter(raw), shuffle_rng):
            counter += 1
            if batch_index < skip:  # resumed epoch: consume without decoding
                pending.append(sample)
                if len(pending) == self.batch_size:
                    pending, batch_index = [], batch_index + 1
                continue
            item = self._decode(sample, random.Random(mix_seed(self.seed, self.epoch, gw, counter)))
            if item is None:
                skipped += 1
                continue
            pending.append(item)
            if len(pending) == self.batch_size:
                batch = self._collate(pending)
                batch["skipped"] = skipped  # samples dropped (and logged) since this worker's last batch
                yield batch
                pending, batch_index, skipped = [], batch_index + 1, 0


def make_loader(stream: IterableDataset, num_workers: int = 2, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over a stream that yields whole batches."""
    kw: Dict[str, Any] = {}
    if num_workers > 0:
        kw["prefetch_factor"] = 2
        storage.close_clients()  # the forked workers open their own (an inherited client breaks at their exit)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kw)
