"""Caption lines ``<image>#<k>\\t<caption>`` (Flickr30k-CNA, raw Flickr30k-CN).

``<image>`` is a Flickr id with or without ``.jpg``; a key without ``#<k>`` names the image by the whole
field (as R2D2's reader does). Raw Flickr30k-CN files may carry word segmentation (spaces between Chinese
words) and part-of-speech tags (``骑:v``); :func:`clean_caption` removes both, because they hurt every
model's scores.

:func:`read_r2d2_caption_lines` is R2D2's own reading (``data/flickr30k_cna_dataset.py``,
``flickr30k_cna_retrieval_eval``), used by the official protocol: every line one caption, the image id the
key up to its first ``#``, the caption the second tab-separated field only; a line R2D2 cannot read (no
second field: an empty caption, a blank line) is refused with the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

from ..base import ParseLog, PathLike, iter_lines

_TAGGED = re.compile(r"^(.+):([a-zA-Z]{1,4})$")
_CJK = r"\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_SPACE_AFTER_CJK = re.compile(rf"(?<=[{_CJK}])\s+")
_SPACE_BEFORE_CJK = re.compile(rf"\s+(?=[{_CJK}])")


@dataclass
class CaptionRow:
    line: int
    image: str  # id without extension
    k: str
    caption: str


def clean_caption(text: str, strip_tags: bool = True) -> str:
    """Remove part-of-speech tags (``word:v``, when most tokens carry one) and the spaces of word
    segmentation next to Chinese characters. Spaces between Latin words are kept."""
    text = text.strip()
    if strip_tags:
        tokens = text.split()
        tagged = [_TAGGED.match(t) for t in tokens]
        if tokens and sum(1 for m in tagged if m) * 2 > len(tokens):
            tokens = [m.group(1) if m else t for t, m in zip(tokens, tagged)]
            text = " ".join(tokens)
    text = _SPACE_AFTER_CJK.sub("", text)
    return _SPACE_BEFORE_CJK.sub("", text)


def strip_image_ext(image: str) -> str:
    low = image.lower()
    for ext in (".jpg", ".jpeg", ".png"):
        if low.endswith(ext):
            return image[: -len(ext)]
    return image


def parse_caption_lines(path: PathLike, log: ParseLog, *, clean: bool = False,
                        keep_repeats: bool = False) -> List[CaptionRow]:
    """Rows of a caption file; duplicates of ``<image>#<k>`` keep the first caption (``keep_repeats``: every
    line is a row, as R2D2's evaluation reads them)."""
    rows: List[CaptionRow] = []
    seen: Dict[Tuple[str, str], int] = {}
    for number, line in iter_lines(path, log):
        key, tab, caption = line.partition("\t")
        if not tab:
            log.bad(path, number, "expected '<image>#<k>\\t<caption>' (no tab)")
            continue
        image, hash_, k = key.strip().rpartition("#")
        if not hash_:  # '<image>\t<caption>': R2D2 reads the whole field as the image id
            image, k = key.strip(), ""
        if not image or (hash_ and not k):
            log.bad(path, number, f"expected '<image>#<k>' before the tab, got {key!r}")
            continue
        image = strip_image_ext(image)
        caption = clean_caption(caption) if clean else caption.strip()
        if not caption:
            log.empty_text(path, number, f"empty caption for {key}")
            continue
        if (image, k) in seen and not keep_repeats:
            log.duplicate(path, number, f"caption id {key!r} (first on line {seen[(image, k)]})")
            continue
        seen.setdefault((image, k), number)
        rows.append(CaptionRow(number, image, k, caption))
    return rows


def caption_ground_truth(rows: List[CaptionRow]) -> Tuple[List[str], List[str], List[str], List[List[int]]]:
    """(image_ids, texts, text_ids, text_to_images): every caption line is one text."""
    images: Dict[str, int] = {}
    texts: List[str] = []
    text_ids: List[str] = []
    t2i: List[List[int]] = []
    for r in rows:
        i = images.setdefault(r.image, len(images))
        texts.append(r.caption)
        text_ids.append(f"{r.image}#{r.k}" if r.k else r.image)
        t2i.append([i])
    return list(images), texts, text_ids, t2i


class ReferenceReadError(ValueError):
    """A line the reference evaluation's own reader fails on (names ``file:line`` and what the reader does)."""


@dataclass
class R2D2CaptionLine:
    line: int
    key: str  # R2D2's image id: the first field up to its first '#'
    image: str  # the image id of ccmb's loader (``key`` without an image extension)
    caption: str


def read_r2d2_caption_lines(path: PathLike) -> List[R2D2CaptionLine]:
    """Every line as ``flickr30k_cna_retrieval_eval`` reads it: ``line.strip().split('\\t')``, image id
    ``fields[0].split('#')[0]``, caption ``fields[1].strip()`` (a third field is ignored). A line without a
    second field (a blank line, an empty caption) makes R2D2 fail (``IndexError``): refused, naming it. A
    UTF-8 BOM is removed (R2D2 would keep it in the first image id)."""
    rows: List[R2D2CaptionLine] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ReferenceReadError(f"{path}:{number}: not UTF-8 ({exc.reason}); R2D2's reader fails here")
            if number == 1:
                text = text.lstrip("\ufeff")
            fields = text.strip().split("\t")
            if len(fields) < 2:
                what = "a blank line" if not text.strip() else "no caption after the tab"
                raise ReferenceReadError(f"{path}:{number}: {what}; R2D2's reader fails here (IndexError on "
                                         "line.split('\\t')[1]): remove the line, or use --protocol strict")
            key = fields[0].split("#")[0]
            if not key:
                raise ReferenceReadError(f"{path}:{number}: empty image id before '#'")
            rows.append(R2D2CaptionLine(number, key, strip_image_ext(key), fields[1].strip()))
    return rows
