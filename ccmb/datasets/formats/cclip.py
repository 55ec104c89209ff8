"""The Chinese-CLIP layout (MUGE, Flickr30k-CN, COCO-CN): ``{split}_imgs.tsv`` + ``{split}_texts.jsonl``.

``{split}_imgs.tsv``: ``<image_id>\\t<base64 image>`` per line (read through a cached byte-offset
index, :class:`ccmb.datasets.imagesource.TsvImages`). ``{split}_texts.jsonl``: ``{"text_id", "text",
"image_ids": [...]}`` per line; MUGE's original files use ``query_id``/``query_text``/``item_ids``.
Hidden test splits have empty ``image_ids``.

:func:`read_cclip_reference` is Chinese-CLIP's own reading of the texts file (``cn_clip/eval/data.py``
``EvalTxtDataset``, ``evaluation.py`` ``read_reference``, ``transform_ir_annotation_to_tr.py``), used by the
official protocol: ids and image ids as JSON gives them (its evaluation compares them with the integer ids of
the image LMDB, so a string id never matches), texts as written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ...safejson import loads_bounded
from ..base import ParseLog, PathLike, iter_json_objects
from .captions import ReferenceReadError

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


@dataclass
class CclipTextLine:
    line: int
    text_id: object  # as in the JSON (Chinese-CLIP's evaluation requires an integer)
    text: str
    image_ids: list  # as in the JSON


def read_cclip_reference(path: PathLike) -> List[CclipTextLine]:
    """Every line of a ``*_texts.jsonl`` as Chinese-CLIP's evaluation reads it (``json.loads(line.strip())``,
    ``obj['text_id']``, ``obj['text']``, ``obj['image_ids']``); MUGE's original keys
    (``query_id``/``query_text``/``item_ids``) are accepted too. A line it fails on is refused naming
    ``file:line``: not JSON (a blank line too), a missing key, a ``text_id`` that is not an integer (its
    evaluation refuses string ids), ``image_ids`` that is not a list."""
    rows: List[CclipTextLine] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{path}:{number}"
            try:
                obj = loads_bounded(raw.decode("utf-8").strip())
            except (UnicodeDecodeError, ValueError) as exc:
                raise ReferenceReadError(f"{where}: not a JSON line ({str(exc)[:120]}); Chinese-CLIP's reader "
                                         "fails here: remove it, or use --protocol strict") from None
            if not isinstance(obj, dict):
                raise ReferenceReadError(f"{where}: not a JSON object; Chinese-CLIP's reader fails here")
            keys = next((k for k in KEYS if k[0] in obj), None)
            if keys is None or keys[1] not in obj:
                raise ReferenceReadError(f"{where}: no 'text_id'/'text' (KeyError in Chinese-CLIP's reader)")
            text_id, text, images = obj[keys[0]], obj[keys[1]], obj.get(keys[2])
            if not isinstance(text_id, int):
                raise ReferenceReadError(f"{where}: text_id {text_id!r} is not an integer; Chinese-CLIP's "
                                         "evaluation.py refuses it ('it should be an integer (not string)')")
            if not isinstance(images, list):
                raise ReferenceReadError(f"{where}: 'image_ids' missing or not a list; Chinese-CLIP's evaluation "
                                         "fails here (read_reference, set(image_ids))")
            rows.append(CclipTextLine(number, text_id, str(text), list(images)))
    return rows
