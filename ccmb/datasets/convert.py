"""Convert a downstream set to shards of the ccmb format (``ccmb.shards``), for fast evaluation and
fine-tuning.

Mapping: **one sample per image**, each image once. ``{key}.txt`` is the image's first text and
``{key}.json`` carries all of them in ``texts`` (retrieval: its positive texts; matching: every paired
text, positives first, with ``labels`` parallel to ``texts``; classification: the Chinese class name,
``label`` = class index; captioning: the references; text-to-image: the prompts whose reference it is),
plus ``image_key`` (the dataset's image id), ``source`` (``<name>/<split>``), ``dataset``, ``split``,
``task``, ``width``/``height``. Image bytes are stored as they are when JPEG/PNG/WebP (re-encoded to
JPEG otherwise). A missing or undecodable image becomes a ``failed_input`` row of the shard's parquet.
Texts without any image (hidden test labels) cannot be samples: they are counted in the manifest.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from .. import shards
from ..images import ImageDecodeError, decode_image
from .base import DatasetError, MissingImageError, PathLike
from .data import ClassificationData, ImageData, MatchingData, RetrievalData
from .registry import load_dataset

logger = logging.getLogger(__name__)

_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def _image_payload(raw: bytes, source: str):
    img = decode_image(raw, mode=None, source=source)
    ext = _EXT.get(img.format or "")
    w, h = img.size
    if ext is None:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=95)
        raw, ext = buf.getvalue(), "jpg"
    return raw, ext, w, h


def _meta(data: ImageData, i: int) -> Dict[str, Any]:
    meta: Dict[str, Any] = {"image_key": data.image_ids[i], "source": f"{data.name}/{data.split}",
                            "dataset": data.name, "split": data.split, "task": data.task}
    texts = data.image_texts(i)
    meta["texts"] = texts
    if isinstance(data, MatchingData):
        ks = sorted(data.pairs_of_image(i), key=lambda k: -data.labels[k])
        meta["labels"] = [data.labels[k] for k in ks]
    elif isinstance(data, ClassificationData):
        meta["label"] = data.labels[i]
        meta["classname"] = data.classnames[data.labels[i]]
    return meta


def convert_dataset(name: str, root: PathLike, output: PathLike, split: Optional[str] = None, *,
                    samples_per_shard: int = 10_000, lenient: bool = False, progress: bool = False,
                    command: Optional[str] = None, **params: Any) -> Dict[str, Any]:
    """Write ``output/NNNNN.tar`` shards (+ parquet, stats, sizes.json, manifest.json); returns the
    manifest. Refuses an output folder that already holds shards."""
    output = Path(output)
    if output.is_dir() and any(shards.SHARD_NAME_RE.match(p.name) for p in output.iterdir()):
        raise DatasetError(f"{output}: already holds shards; choose an empty output folder")
    data = load_dataset(name, root, split, lenient=lenient, **params)
    n = len(data.image_ids)
    indices = range(n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"convert {data.name}", unit="img")
    failures = 0
    writer: Optional[shards.ShardWriter] = None
    try:
        for i in indices:
            shard_index, row = divmod(i, samples_per_shard)
            if row == 0:
                if writer is not None:
                    writer.__exit__(None, None, None)
                writer = shards.ShardWriter(output, shard_index, source=f"{data.name}/{data.split}")
                writer.__enter__()
            assert writer is not None
            key = shards.make_key(shard_index, row, samples_per_shard)
            meta = _meta(data, i)
            try:
                raw, ext, w, h = _image_payload(data.image_bytes(i), data.image_path(i))
            except (MissingImageError, ImageDecodeError) as exc:
                failures += 1
                writer.write_failure(dict(meta, key=key, caption=(meta["texts"] or [""])[0]),
                                     "failed_input", str(exc))
                continue
            meta.update(width=w, height=h, original_width=w, original_height=h)
            writer.write(key, raw, (meta["texts"] or [""])[0], meta, image_ext=ext)
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if writer is not None:
        writer.__exit__(None, None, None)
    output.mkdir(parents=True, exist_ok=True)
    extra: Dict[str, Any] = {"dataset": data.name, "split": data.split, "task": data.task,
                             "input_images": n, "failed_images": failures, "parse_stats": data.stats}
    if isinstance(data, RetrievalData):
        extra["texts_without_image"] = sum(1 for p in data.text_to_images if not p)
    manifest = shards.finalize_shard_set(output, command=command, extra=extra)
    logger.info("%s/%s: %d samples, %d failed images -> %s", data.name, data.split,
                manifest["total_samples"], failures, output)
    return manifest
