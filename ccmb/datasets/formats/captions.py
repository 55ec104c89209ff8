"""Caption lines ``<image>#<k>\\t<caption>`` (Flickr30k-CNA, raw Flickr30k-CN).

``<image>`` is a Flickr id with or without ``.jpg``. Raw Flickr30k-CN files may carry word
segmentation (spaces between Chinese words) and part-of-speech tags (``骑:v``); :func:`clean_caption`
removes both, because they hurt every model's scores.
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
        if not hash_ or not image or not k:
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
        text_ids.append(f"{r.image}#{r.k}")
        t2i.append([i])
    return list(images), texts, text_ids, t2i
