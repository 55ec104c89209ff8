"""The Chinese-CLIP layout (MUGE, Flickr30k-CN, COCO-CN): ``{split}_imgs.tsv`` + ``{split}_texts.jsonl``.

``{split}_imgs.tsv``: ``<image_id>\\t<base64 image>`` per line (read through a cached byte-offset
index, :class:`ccmb.datasets.imagesource.TsvImages`). ``{split}_texts.jsonl``: ``{"text_id", "text",
"image_ids": [...]}`` per line; MUGE's original files use ``query_id``/``query_text``/``item_ids``.
Hidden test splits have empty ``image_ids``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..base import ParseLog, PathLike, iter_json_objects

KEYS = (("text_id", "text", "image_ids"), ("query_id", "query_text", "item_ids"))


@dataclass
class TextRow:
    line: int
    text_id: str
    text: str
    image_ids: List[str]


def _id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"ids must be integers or strings, got {value!r}")
    out = str(value).strip()
    if not out:
        raise ValueError("empty id")
    return out


def parse_texts_jsonl(path: PathLike, log: ParseLog) -> List[TextRow]:
    """Rows of a ``*_texts.jsonl``; a repeated text id keeps the first row."""
    rows: List[TextRow] = []
    seen: Dict[str, int] = {}
    for number, obj in iter_json_objects(path, log):
        keys = next((k for k in KEYS if k[0] in obj or k[1] in obj), None)
        if keys is None:
            log.bad(path, number, "expected keys text_id/text/image_ids (or query_id/query_text/item_ids)")
            continue
        id_key, text_key, images_key = keys
        try:
            text_id = _id(obj.get(id_key))
            images = obj.get(images_key, [])
            if images is None:
                images = []
            if not isinstance(images, list):
                raise ValueError(f"{images_key!r} must be a list")
            image_ids = [_id(v) for v in images]
        except ValueError as exc:
            log.bad(path, number, str(exc))
            continue
        text = obj.get(text_key)
        if not isinstance(text, str):
            log.bad(path, number, f"missing or non-string {text_key!r}")
            continue
        text = text.strip()
        if not text:
            log.empty_text(path, number, f"empty text for id {text_id}")
            continue
        if text_id in seen:
            log.duplicate(path, number, f"text id {text_id!r} (first on line {seen[text_id]})")
            continue
        seen[text_id] = number
        rows.append(TextRow(number, text_id, text, list(dict.fromkeys(image_ids))))
    return rows


def text_ground_truth(rows: Sequence[TextRow], gallery: Sequence[str]
                      ) -> Tuple[List[str], List[str], List[str], List[List[int]]]:
    """(image_ids, texts, text_ids, text_to_images). The gallery is every image of the TSV; ids that
    texts reference but the TSV lacks are appended (loading them raises ``MissingImageError``)."""
    images: Dict[str, int] = {image_id: i for i, image_id in enumerate(gallery)}
    order = list(gallery)
    t2i: List[List[int]] = []
    for r in rows:
        idx = []
        for image_id in r.image_ids:
            if image_id not in images:
                images[image_id] = len(order)
                order.append(image_id)
            idx.append(images[image_id])
        t2i.append(idx)
    return order, [r.text for r in rows], [r.text_id for r in rows], t2i
