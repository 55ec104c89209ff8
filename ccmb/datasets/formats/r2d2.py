"""The R2D2 JSON-lines format (ICM, IQM, ICR, IQR).

One JSON object per line: ``{"text": ..., "image_path": ..., "label": 0|1}`` (``label`` only in the
matching sets). ``image_path`` is relative; only its basename names the file in the flat
``IQR_IQM_ICR_ICM_images/`` folder.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

from ..base import ParseLog, PathLike, iter_json_objects


class R2D2Row(NamedTuple):
    line: int
    text: str
    image: str  # basename
    label: Optional[int]


def image_basename(image_path: str) -> str:
    if "\\" in image_path:
        image_path = image_path.replace("\\", "/")
    return image_path.rpartition("/")[2].strip()


def parse_r2d2_jsonl(path: PathLike, log: ParseLog, *, with_label: bool) -> List[R2D2Row]:
    """Rows of an R2D2 annotation file; malformed lines go to ``log`` (file:line)."""
    rows: List[R2D2Row] = []
    for number, obj in iter_json_objects(path, log):
        text, image_path = obj.get("text"), obj.get("image_path")
        if not isinstance(text, str):
            log.bad(path, number, "missing or non-string 'text'")
            continue
        image = image_basename(image_path) if isinstance(image_path, str) else ""
        if not image:
            log.bad(path, number, "missing or empty 'image_path'")
            continue
        label: Optional[int] = None
        if with_label:
            raw = obj.get("label")
            if raw in (0, 1, "0", "1") and not isinstance(raw, bool):
                label = int(raw)
            else:
                log.bad(path, number, f"'label' must be 0 or 1, got {raw!r}")
                continue
        text = text.strip()
        if not text:
            log.empty_text(path, number)
            continue
        rows.append(R2D2Row(number, text, image, label))
    return rows


def retrieval_ground_truth(rows: List[R2D2Row], path: PathLike,
                           log: ParseLog) -> Tuple[List[str], List[str], List[List[int]]]:
    """(image_ids, texts, text_to_images). Identical texts are merged into one query with every image
    they were paired with; a repeated (text, image) line is a duplicate."""
    images: Dict[str, int] = {}
    texts: Dict[str, int] = {}
    t2i: List[List[int]] = []
    for line, text, image, _ in rows:
        i = images.get(image)
        if i is None:
            i = images[image] = len(images)
        t = texts.get(text)
        if t is None:
            texts[text] = len(t2i)
            t2i.append([i])
            continue
        if i in t2i[t]:
            log.duplicate(path, line, f"pair (text, {image})")
            continue
        t2i[t].append(i)
    return list(images), list(texts), t2i


def matching_pairs(rows: List[R2D2Row], path: PathLike,
                   log: ParseLog) -> Tuple[List[str], List[int], List[str], List[int]]:
    """(image_ids, pair_images, pair_texts, labels); a repeated (text, image) pair is a duplicate."""
    images: Dict[str, int] = {}
    seen: set = set()
    pair_images: List[int] = []
    pair_texts: List[str] = []
    labels: List[int] = []
    for r in rows:
        key = (r.text, r.image)
        if key in seen:
            log.duplicate(path, r.line, f"pair (text, {r.image})")
            continue
        seen.add(key)
        pair_images.append(images.setdefault(r.image, len(images)))
        pair_texts.append(r.text)
        labels.append(int(r.label or 0))
    return list(images), pair_images, pair_texts, labels
