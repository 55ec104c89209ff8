"""Image captioning: score predictions (a file, a generating model, or the retrieval baseline) with
BLEU-4, ROUGE-L and CIDEr on jieba-segmented Chinese.

The retrieval-captioning baseline gives any dual encoder a caption score: each evaluated image is captioned
with the nearest caption (by embedding cosine) from a pool split of the same dataset (default ``train``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ccmb.datasets import CaptionData
from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.caption_metrics import caption_scores
from ccmb_bench.tasks.encode import encode_images, encode_texts

logger = logging.getLogger(__name__)


class PredictionsError(ValueError):
    """A predictions file that cannot be used (names the file and line)."""


def read_predictions(path: Path) -> Dict[str, str]:
    """``{image_id: caption}`` from JSON (an object, or a list of ``{"image_id", "caption"}``) or JSON lines."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    rows: List[Any]
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
        rows = [(i + 1, r) for i, r in enumerate(data)] if isinstance(data, list) else []
    except ValueError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except ValueError as exc:
                raise PredictionsError(f"{path}:{n}: not JSON ({exc})") from exc
    out = {}
    for n, row in rows:
        if not isinstance(row, dict) or "image_id" not in row or "caption" not in row:
            raise PredictionsError(f"{path}:{n}: expected {{\"image_id\", \"caption\"}}")
        out[str(row["image_id"])] = str(row["caption"])
    return out


def _stem(image_id: str) -> str:
    return Path(image_id).stem


def retrieval_baseline(adapter: ModelAdapter, data: CaptionData, pool: CaptionData, cache: EmbeddingCache,
                       pool_cache: EmbeddingCache, batch_size: int) -> List[str]:
    """Per image of ``data``, the pool caption whose embedding is closest to the image's."""
    captions = [c for refs in pool.references for c in refs]
    if not captions:
        raise ValueError(f"{pool.name}/{pool.split}: no captions in the baseline pool")
    cap = encode_texts(adapter, captions, batch_size, pool_cache, part="pool_captions", desc="pool captions")
    img = encode_images(adapter, data.load_image, data.image_ids, batch_size, cache)["embeds"]
    best = []
    for start in range(0, len(img), 1024):
        best += (img[start:start + 1024] @ cap["embeds"].T).argmax(1).tolist()
    return [captions[b] for b in best]


def evaluate(adapter: Optional[ModelAdapter], data: CaptionData, cache: EmbeddingCache, batch_size: int = 64,
             predictions: Optional[str] = None, load_pool: Optional[Callable[[], CaptionData]] = None,
             pool_cache: Optional[EmbeddingCache] = None) -> Dict[str, Any]:
    source: str
    if predictions:
        preds = read_predictions(Path(predictions))
        by_stem = {_stem(k): v for k, v in preds.items()}
        hyps, missing = [], 0
        for image_id in data.image_ids:
            hyp = preds.get(image_id, by_stem.get(_stem(image_id)))
            if hyp is None:
                missing += 1
                hyp = ""
            hyps.append(hyp)
        if missing == len(data.image_ids):
            raise PredictionsError(f"{predictions}: none of the {len(data.image_ids)} image ids of "
                                   f"{data.name}/{data.split} has a prediction (e.g. {data.image_ids[0]!r})")
        if missing:
            logger.warning("%s: %d of %d images have no prediction (scored as empty captions)", predictions,
                        missing, len(data.image_ids))
        ids, stems = set(data.image_ids), {_stem(i) for i in data.image_ids}
        unknown = [k for k in preds if k not in ids and _stem(k) not in stems]
        if unknown:
            logger.warning("%s: %d predictions name images that %s/%s does not have (e.g. %r); ignored", predictions,
                        len(unknown), data.name, data.split, unknown[0])
        source = "predictions"
    elif adapter is not None and adapter.can_generate:
        hyps = []
        for start in range(0, data.num_images, batch_size):
            idx = range(start, min(data.num_images, start + batch_size))
            hyps += adapter.generate_captions(adapter.preprocess([data.load_image(i) for i in idx]))
        missing, source = 0, "generated"
    elif adapter is not None and load_pool is not None:
        hyps = retrieval_baseline(adapter, data, load_pool(), cache, pool_cache or cache, batch_size)
        missing, source = 0, "retrieval-baseline"
    else:
        raise ValueError("captioning needs --predictions FILE, a captioning model, or a model + a pool split")
    out: Dict[str, Any] = caption_scores(hyps, data.references)
    out["missing_predictions"] = missing
    if predictions:
        out["unknown_predictions"] = len(unknown)
    out["caption_source"] = source
    return out
