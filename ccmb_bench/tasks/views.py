"""What a protocol evaluates: the queries, candidates and ground truth it builds from a loaded dataset.

``strict`` uses the data objects as loaded (identical R2D2 texts merged into one query with several
positives; repeated lines dropped). The official protocols re-read the annotation files the way their
reference code does (:attr:`ccmb_bench.protocols.Rules.reader`), and refuse, with the reason, a file on which
that code fails:

- **R2D2** (ICR, IQR, Flickr30k-CNA, ICM, IQM): every annotation line is one query and one candidate, repeats
  and empty texts included; an image is identified as R2D2 does (retrieval: the basename without its last
  four characters, so ``x.jpg`` and ``x.png`` are one image, loaded from the first file named; a Flickr
  caption key up to its first ``#``); a caption is the second tab-separated field only;
- **Chinese-CLIP** (Flickr30k-CN, COCO-CN, MUGE in the TSV layout): image candidates are the TSV's images
  with their ids read by ``int()`` (``007`` is image 7) in LMDB key order; a text's gold ids match a
  candidate by value (a string id or one missing from the TSV never matches: a miss for text-to-image; for
  image-to-text the reference fails, so ccmb refuses); its evaluation needs 10 predictions per query (at
  least 10 images for text-to-image, 10 texts for image-to-text) and integer text ids.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ccmb.datasets import MatchingData, RetrievalData
from ccmb.datasets.base import unsafe_image_id
from ccmb.datasets.formats import captions, cclip, r2d2
from ccmb_bench.protocols import Rules, clean_text

logger = logging.getLogger(__name__)

PER_LINE_FORMATS = ("r2d2-jsonl", "caption-lines")
CCLIP_NEEDS = 10  # evaluation.py / evaluation_tr.py: read_submission(..., k=10) requires 10 predictions


class ViewError(ValueError):
    """The protocol cannot be applied to this data (names the file and the reason)."""


def image_loader(data: Any, ids: Sequence[str]) -> Callable[[int], Any]:
    """``load(i)`` of image ``ids[i]``: through the data object when it is one of its images (errors name the
    annotation line), else straight from its image source."""
    where = {img: i for i, img in enumerate(data.image_ids)}
    pos = [where.get(img) for img in ids]

    def load(i: int):
        return data.load_image(pos[i]) if pos[i] is not None else data.images.load(ids[i])

    return load


@dataclass
class RetrievalView:
    """Texts (``unique_texts[text_index[t]]`` is text ``t``), ground truth, query ids, candidate orders and
    how to load image ``i`` (default: the data's own images)."""

    unique_texts: List[str]
    text_index: List[int]
    text_ids: List[str]
    image_ids: List[str]
    text_to_images: List[List[int]]
    image_to_texts: List[List[int]] = field(default_factory=list)
    order_keys: Dict[str, np.ndarray] = field(default_factory=dict)
    load_image: Optional[Callable[[int], Any]] = None

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


def _file(data: Any, key: str, what: str) -> Path:
    path = data.files.get(key)
    if not path:
        raise ViewError(f"{data.name}: the official protocol re-reads the {what}, but the data object does not "
                        "name one")
    return Path(path)


def _safe(ids: Sequence[str], path: Path, lines: Sequence[int]) -> None:
    for image, line in zip(ids, lines):
        reason = unsafe_image_id(image)
        if reason is not None:
            raise ViewError(f"{path}:{line}: image {image!r}: {reason}")


def _read(fn: Callable, *args, **kw):
    try:
        return fn(*args, **kw)
    except captions.ReferenceReadError as exc:
        raise ViewError(str(exc)) from None


def r2d2_lines(data: Any, fmt: str, with_label: bool) -> Tuple[Path, List[Tuple[int, str, str, str, Optional[int]]]]:
    """``(line, text, image id, R2D2 image key, label)`` of every annotation line as R2D2 reads it."""
    path = _file(data, "annotations", "annotation file")
    if fmt == "r2d2-jsonl":
        rows = [(r.line, r.text, r.image, r.key, r.label)
                for r in _read(r2d2.read_r2d2_reference, path, with_label=with_label)]
    elif fmt == "caption-lines":
        rows = [(r.line, r.caption, r.image, r.key, None) for r in _read(captions.read_r2d2_caption_lines, path)]
    else:
        raise ViewError(f"{data.name}: no R2D2 reader for format {fmt!r}")
    _safe([r[2] for r in rows], path, [r[0] for r in rows])
    return path, rows


def _r2d2_retrieval(data: RetrievalData, rules: Rules, fmt: str) -> RetrievalView:
    path, rows = r2d2_lines(data, fmt, with_label=False)
    keys: Dict[str, int] = {}
    image_ids: List[str] = []
    for _, _, image, key, _ in rows:  # images numbered by first appearance; the first file of a key is loaded
        if key not in keys:
            keys[key] = len(image_ids)
            image_ids.append(image)
    merged = len(set(r[2] for r in rows)) - len(image_ids)
    if merged:
        logger.warning("%s: %d image file(s) share an image id with another file once the extension is cut "
                       "(R2D2 reads x.jpg and x.png as one image: the first file named is used)", path, merged)
    texts = [clean_text(r[1], rules.clean_text) for r in rows]
    unique, index = _dedup(texts)
    return RetrievalView(unique, index, [f"line{r[0]}" for r in rows], image_ids, [[keys[r[3]]] for r in rows],
                         load_image=image_loader(data, image_ids))


def _cclip_retrieval(data: RetrievalData, rules: Rules) -> RetrievalView:
    texts_path = _file(data, "texts", "texts file")
    tsv = data.files.get("images", "the image TSV")
    lines = _read(cclip.read_cclip_reference, texts_path)
    ids = list(getattr(data.images, "ids", []))
    as_int: Dict[int, int] = {}
    for k, image_id in enumerate(ids):
        try:
            value = int(image_id)
        except ValueError:
            raise ViewError(f"{tsv}: image id {image_id!r} is not an integer; Chinese-CLIP's extract_features reads "
                            "the ids with int() and fails here (use --protocol strict)") from None
        if value in as_int:
            raise ViewError(f"{tsv}: image ids {ids[as_int[value]]!r} and {image_id!r} are both image {value} to "
                            "Chinese-CLIP (int()); its evaluation then fails on duplicate predictions")
        as_int[value] = k
    seen: Dict[Any, int] = {}
    rows = []
    for ln in lines:  # a repeated text_id keeps its first row (documented departure)
        if ln.text_id not in seen:
            seen[ln.text_id] = ln.line
            rows.append(ln)
    if "t2i" in data.directions and len(ids) < CCLIP_NEEDS:
        raise ViewError(f"{tsv}: {len(ids)} images; Chinese-CLIP's evaluation needs {CCLIP_NEEDS} predictions per "
                        "text (evaluation.py read_submission, k=10) and fails below that (use --protocol strict)")
    if "i2t" in data.directions and len(rows) < CCLIP_NEEDS:
        raise ViewError(f"{texts_path}: {len(rows)} texts; Chinese-CLIP's image-to-text evaluation needs "
                        f"{CCLIP_NEEDS} predictions per image (evaluation_tr.py, k=10) and fails below that "
                        "(use --protocol strict)")
    t2i: List[List[int]] = []
    unmatched = 0
    for ln in rows:
        gold = []
        for g in ln.image_ids:
            try:
                hit = as_int.get(g) if isinstance(g, (int, float)) else None  # "7" never equals 7
            except TypeError:
                raise ViewError(f"{texts_path}:{ln.line}: image id {g!r} is not a number or string") from None
            if hit is None:
                unmatched += 1
                if "i2t" in data.directions:
                    raise ViewError(f"{texts_path}:{ln.line}: image {g!r} of text {ln.text_id} is not an integer id "
                                    f"of {tsv}; Chinese-CLIP's image-to-text evaluation (evaluation_tr.py) fails "
                                    "on it ('no prediction'); use --protocol strict")
                continue
            gold.append(hit)
        t2i.append(list(dict.fromkeys(gold)))
    if unmatched:
        logger.warning("%s: %d gold image id(s) match no image of %s (a string id or one missing from the TSV): "
                       "misses, as in Chinese-CLIP's evaluation", texts_path, unmatched, tsv)
    texts = [clean_text(ln.text, rules.clean_text) for ln in rows]
    unique, index = _dedup(texts)
    return RetrievalView(unique, index, [str(ln.text_id) for ln in rows], ids, t2i,
                         load_image=image_loader(data, ids))


def id_bytes_order(ids: Sequence[str]) -> np.ndarray:
    """Position of each id when sorted by its UTF-8 bytes (the order of an LMDB cursor)."""
    order = sorted(range(len(ids)), key=lambda i: str(ids[i]).encode("utf-8", "surrogatepass"))
    key = np.empty(len(ids), dtype=np.int64)
    key[np.asarray(order, dtype=np.int64)] = np.arange(len(ids))
    return key


def retrieval_view(data: RetrievalData, rules: Rules, fmt: str) -> RetrievalView:
    """The queries and candidates ``rules`` evaluate on ``data`` (whose registry format is ``fmt``)."""
    if rules.reader == "r2d2" and fmt in PER_LINE_FORMATS:
        view = _r2d2_retrieval(data, rules, fmt)
    elif rules.reader == "chinese-clip" and fmt == "cclip-tsv" and data.files.get("texts"):
        view = _cclip_retrieval(data, rules)
    else:
        texts = [clean_text(t, rules.clean_text) for t in data.texts]
        unique, index = _dedup(texts)
        view = RetrievalView(unique, index, list(data.text_ids), list(data.image_ids),
                             [list(p) for p in data.text_to_images], load_image=data.load_image)
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
    image_ids: List[str] = field(default_factory=list)
    load_image: Optional[Callable[[int], Any]] = None


def matching_view(data: MatchingData, rules: Rules, fmt: str) -> MatchingView:
    """Every annotation line one pair, as R2D2 reads it (each pair loads its own file, empty texts kept), or the
    loaded pairs (repeated pairs dropped)."""
    if rules.reader == "r2d2" and fmt == "r2d2-jsonl":
        _, rows = r2d2_lines(data, fmt, with_label=True)
        ids = list(dict.fromkeys(r[2] for r in rows))
        pos = {img: k for k, img in enumerate(ids)}
        return MatchingView([pos[r[2]] for r in rows], [clean_text(r[1], rules.clean_text) for r in rows],
                            [int(r[4] or 0) for r in rows], [f"line{r[0]}" for r in rows], ids,
                            image_loader(data, ids))
    return MatchingView(list(data.pair_images), [clean_text(t, rules.clean_text) for t in data.pair_texts],
                        list(data.labels), [f"{data.image_ids[i]}\t{t}" for i, t in zip(data.pair_images,
                                                                                         data.pair_texts)],
                        list(data.image_ids), data.load_image)
