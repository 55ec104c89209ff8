"""The R2D2 JSON-lines format (ICM, IQM, ICR, IQR).

One JSON object per line: ``{"text": ..., "image_path": ..., "label": 0|1}`` (``label`` only in the
matching sets; JSON ``true``/``false`` read as 1/0, as R2D2 does). ``image_path`` is relative; only its
basename names the file in the flat ``IQR_IQM_ICR_ICM_images/`` folder.

:func:`read_r2d2_reference` is R2D2's own reading (``data/icr_dataset.py``, ``data/iqr_dataset.py``,
``data/matching_datasets.py``), used by the official protocol: every line kept (empty texts too, texts as
written), the image identified by its basename without the last four characters (so ``x.jpg`` and ``x.png``
are one image, the first file named), labels as ``np.array(labels)`` reads them; a line R2D2 fails on is
refused with the reason.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

from ...safejson import loads_bounded
from ..base import ParseLog, PathLike, iter_json_objects
from .captions import ReferenceReadError


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
            if raw in (0, 1, "0", "1"):  # JSON true/false too (R2D2 reads them as 1/0)
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


class R2D2Line(NamedTuple):
    line: int
    text: str  # as written (not stripped; may be empty)
    image: str  # the file: basename of image_path (``image_path.split('/')[-1]``)
    key: str  # R2D2's image id: ``image[:-4]``
    label: Optional[int]


def read_r2d2_reference(path: PathLike, *, with_label: bool) -> List[R2D2Line]:
    """Every line as R2D2's evaluation datasets read it (``json.loads(line)``, ``d['text']``,
    ``d['image_path'].split('/')[-1]``, image id ``[:-4]``; matching: ``d['label']`` collated by
    ``np.array`` into int64). Lines R2D2 fails on are refused naming ``file:line``: not JSON, a missing or
    non-string ``text``/``image_path``, a label that is not 0/1, true/false (a string label: numpy makes a
    string array torch cannot convert)."""
    rows: List[R2D2Line] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{path}:{number}"
            try:
                obj = loads_bounded(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise ReferenceReadError(f"{where}: not a JSON line ({str(exc)[:120]}); R2D2's json.loads fails "
                                         "here (a blank line too): remove it, or use --protocol strict") from None
            if not isinstance(obj, dict):
                raise ReferenceReadError(f"{where}: not a JSON object; R2D2's reader fails here")
            text, image_path = obj.get("text"), obj.get("image_path")
            if not isinstance(text, str):
                raise ReferenceReadError(f"{where}: 'text' missing or not a string; R2D2's tokenizer fails here")
            if not isinstance(image_path, str) or not image_path.split("/")[-1]:
                raise ReferenceReadError(f"{where}: 'image_path' missing or empty; R2D2's reader fails here")
            image = image_path.split("/")[-1]
            label: Optional[int] = None
            if with_label:
                value = obj.get("label")
                if isinstance(value, str) or value is None or value not in (0, 1):
                    raise ReferenceReadError(
                        f"{where}: label {value!r}: R2D2 collates labels with np.array(...) into int64 and scores "
                        "them with roc_auc_score; only 0/1 (or true/false) work there")
                label = int(value)
            rows.append(R2D2Line(number, text, image, image[:-4], label))
    return rows
