"""What a protocol evaluates: the queries, candidates and ground truth it builds from a loaded dataset.

``strict`` uses the data objects as loaded (identical R2D2 texts merged into one query with several
positives; repeated lines dropped). R2D2's reference evaluation (``per_line``) reads every annotation line
as one query and one candidate, so its view re-reads the annotation file with the format's own row
parser, keeping repeats. Chinese-CLIP's view cleans the texts and orders image candidates by id bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ccmb.datasets import MatchingData, ParseLog, RetrievalData
from ccmb.datasets.formats import captions, r2d2
from ccmb_bench.protocols import Rules, clean_text

PER_LINE_FORMATS = ("r2d2-jsonl", "caption-lines")


class ViewError(ValueError):
    """The protocol cannot be applied to this data (names the file)."""


@dataclass
class RetrievalView:
    """Texts (``unique_texts[text_index[t]]`` is text ``t``), ground truth, query ids and candidate orders."""

    unique_texts: List[str]
    text_index: List[int]
    text_ids: List[str]
    image_ids: List[str]
    text_to_images: List[List[int]]
    image_to_texts: List[List[int]] = field(default_factory=list)
    order_keys: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.image_to_texts:
            self.image_to_texts = [[] for _ in self.image_ids]
            for t, imgs in enumerate(self.text_to_images):
                for i in imgs:
                    self.image_to_texts[i].append(t)

    @property
    def num_texts(self) -> int:
        return len(self.text_index)


def _dedup(texts: Sequence[str]) -> Tuple[List[str], List[int]]:
    first: Dict[str, int] = {}
    index = [first.setdefault(t, len(first)) for t in texts]
    return list(first), index


def _annotation_file(data, fmt: str) -> Path:
    path = data.files.get("annotations")
    if not path:
        raise ViewError(f"{data.name}: the {fmt} per-line protocol needs the annotation file, but the data object "
                        "does not name one")
    return Path(path)


def _per_line_rows(data, fmt: str, with_label: bool) -> List[Tuple[int, str, str, Optional[int]]]:
    """(line, text, image id, label) of every annotation line, repeats kept."""
    path = _annotation_file(data, fmt)
    log = ParseLog(lenient=True)  # lines the loader refused stay refused (counted in data.stats)
    if fmt == "r2d2-jsonl":
        return [(r.line, r.text, r.image, r.label) for r in r2d2.parse_r2d2_jsonl(path, log, with_label=with_label)]
    if fmt == "caption-lines":
        return [(r.line, r.caption, r.image, None)
                for r in captions.parse_caption_lines(path, log, keep_repeats=True)]
    raise ViewError(f"{data.name}: no per-line reader for format {fmt!r}")


def _image_positions(data, rows, path: str) -> List[int]:
    where = {img: i for i, img in enumerate(data.image_ids)}
    out = []
    for line, _, image, _ in rows:
        if image not in where:
            raise ViewError(f"{path}:{line}: image {image!r} is not among the loaded images of {data.name}")
        out.append(where[image])
    return out


def id_bytes_order(ids: Sequence[str]) -> np.ndarray:
    """Position of each id when sorted by its UTF-8 bytes (the order of an LMDB cursor)."""
    order = sorted(range(len(ids)), key=lambda i: str(ids[i]).encode("utf-8", "surrogatepass"))
    key = np.empty(len(ids), dtype=np.int64)
    key[np.asarray(order, dtype=np.int64)] = np.arange(len(ids))
    return key


def retrieval_view(data: RetrievalData, rules: Rules, fmt: str) -> RetrievalView:
    """The queries and candidates ``rules`` evaluate on ``data`` (whose registry format is ``fmt``)."""
    if rules.per_line and fmt in PER_LINE_FORMATS:
        rows = _per_line_rows(data, fmt, with_label=False)
        images = _image_positions(data, rows, data.files.get("annotations", data.name))
        texts = [clean_text(r[1], rules.clean_text) for r in rows]
        unique, index = _dedup(texts)
        view = RetrievalView(unique, index, [f"line{r[0]}" for r in rows], list(data.image_ids),
                             [[i] for i in images])
    else:
        texts = [clean_text(t, rules.clean_text) for t in data.texts]
        unique, index = _dedup(texts)
        view = RetrievalView(unique, index, list(data.text_ids), list(data.image_ids),
                             [list(p) for p in data.text_to_images])
    if rules.ties == "first":
        for d, how in rules.candidate_order.items():
            if how == "id-bytes":  # candidates of t2i are images, of i2t texts
                view.order_keys[d] = id_bytes_order(view.image_ids if d == "t2i" else view.text_ids)
    return view


@dataclass
class MatchingView:
    pair_images: List[int]
    pair_texts: List[str]
    labels: List[int]
    pair_ids: List[str]


def matching_view(data: MatchingData, rules: Rules, fmt: str) -> MatchingView:
    """Every annotation line one pair (``per_line``), or the loaded pairs (repeated pairs dropped)."""
    if rules.per_line and fmt in PER_LINE_FORMATS:
        rows = _per_line_rows(data, fmt, with_label=True)
        images = _image_positions(data, rows, data.files.get("annotations", data.name))
        return MatchingView(images, [clean_text(r[1], rules.clean_text) for r in rows],
                            [int(r[3] or 0) for r in rows], [f"line{r[0]}" for r in rows])
    return MatchingView(list(data.pair_images), [clean_text(t, rules.clean_text) for t in data.pair_texts],
                        list(data.labels), [f"{data.image_ids[i]}\t{t}" for i, t in zip(data.pair_images,
                                                                                         data.pair_texts)])
