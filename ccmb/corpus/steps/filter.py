"""The filter rules (``ccmb filter``), defined once over Arrow batches: image size, aspect ratio, text
length, Chinese share and a blocklist.

Rules (each switchable; a dropped row gets the FIRST failing rule, checked in this order):

=====================  =====================================================================
``not_downloaded``     the download produced no sample (parquet ``status`` is not ``success``)
``unknown_size``       no width/height in the parquet while a size rule is on
``too_small``          short side of the ORIGINAL image < ``min_side`` (default 200 px)
``aspect_ratio``       long side > ``max_ratio`` x short side (default 3)
``text_too_short``     text shorter than ``min_text_len`` characters (default 2; empty text too)
``text_too_long``      text longer than ``max_text_len`` characters (default 512)
``low_chinese_share``  CJK ideographs < ``min_chinese_share`` x text length (default 0.3)
``blocklist``          a blocklist term occurs in any text (case-insensitive substring)
=====================  =====================================================================

Sizes are ``original_width``/``original_height`` (the image before img2dataset resized it), falling
back to ``width``/``height``. The text is the primary text (:func:`ccmb.corpus.primitives.columns.primary_text`:
``caption``, falling back to ``title``); ``text_field`` picks another column. Lengths count Unicode code
points after trimming whitespace. Any engine runs :func:`filter_step` over the folder's batches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..primitives.columns import TEXT_COLUMNS, downloaded, primary_text, text_columns
from ..tables.dataflow import Fn
from ..tables.schema import DECISION_SCHEMA, REASON_NOT_DOWNLOADED, CurationError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Whitespace trimmed from texts (ASCII whitespace and the ideographic space U+3000).
TRIM_CHARS = " \t\n\r\f\v\u3000"
#: CJK ideographs: Unified Ideographs and Extension A (RE2 syntax; :func:`count_cjk` counts the same).
CJK_CLASS = r"[\x{3400}-\x{4dbf}\x{4e00}-\x{9fff}]"
CJK_BLOCK_ROWS = 1 << 16
REGEX_SPECIAL = set("\\^$.|?*+()[]{}")

REASONS = ("not_downloaded", "unknown_size", "too_small", "aspect_ratio", "text_too_short",
           "text_too_long", "low_chinese_share", "blocklist")


@dataclass
class FilterConfig:
    """Thresholds of :func:`filter_samples`; 0 (or None) switches a rule off."""

    min_side: int = 200
    max_ratio: float = 3.0
    min_text_len: int = 2
    max_text_len: int = 512
    min_chinese_share: float = 0.3
    blocklist: List[str] = field(default_factory=list)
    text_field: str = "caption"

    def __post_init__(self) -> None:
        if self.text_field not in TEXT_COLUMNS:
            raise ValueError(f"text_field must be one of {TEXT_COLUMNS}, got {self.text_field!r}")
        self.blocklist = sorted({t.strip().lower() for t in self.blocklist if t and t.strip()})

    @property
    def size_rules(self) -> bool:
        return bool(self.min_side) or bool(self.max_ratio)

    def columns(self) -> List[str]:
        """The download columns the rules read."""
        cols = ["key", "status"]
        if self.size_rules:
            cols += ["width", "height", "original_width", "original_height"]
        cols += [c for c in text_columns(self.text_field) if c not in cols]
        if self.blocklist:
            cols += [c for c in TEXT_COLUMNS if c not in cols]
        return cols

    def blocklist_regex(self) -> Optional[str]:
        """One alternation of the escaped terms (RE2)."""
        if not self.blocklist:
            return None
        return "|".join(escape_regex(t) for t in self.blocklist)


def escape_regex(term: str) -> str:
    """Escape regex metacharacters only."""
    return "".join("\\" + ch if ch in REGEX_SPECIAL else ch for ch in term)


def read_blocklist(path: PathLike) -> List[str]:
    """Terms of a blocklist file: one per line, UTF-8; blank lines and lines starting with ``#`` skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CurationError(f"{path}: blocklist file not found") from None
    except UnicodeDecodeError as exc:
        raise CurationError(f"{path}: blocklist is not UTF-8: {exc}") from exc
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


FILTER_COLUMNS = ["key", "status", "width", "height", "original_width", "original_height", *TEXT_COLUMNS]


def count_cjk(text) -> pa.Array:
    """Number of CJK ideographs (U+3400-U+4DBF, U+4E00-U+9FFF) per string, by scanning UTF-8 lead bytes.

    Equivalent to counting matches of :data:`CJK_CLASS`, ~20x faster: in
    UTF-8 these code points are the 3-byte sequences led by E5-E9, by E4 unless the second byte is B7
    (U+4DC0-U+4DFF, not ideographs), and by E3 when the second byte is >= 90 (U+3400-U+3FFF).
    Nulls count 0.
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    text = text.cast(pa.string())
    n = len(text)
    if n == 0:
        return pa.array([], pa.int64())
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, n + 1, text.offset * 4)
    counts = np.zeros(n, np.int64)
    if data_buf is None or offsets[-1] == offsets[0]:
        return pa.array(counts, pa.int64())
    data_all = np.frombuffer(data_buf, np.uint8, int(offsets[-1]))
    for r0 in range(0, n, CJK_BLOCK_ROWS):  # blocks of rows: small, cache-resident temporaries
        r1 = min(n, r0 + CJK_BLOCK_ROWS)
        lo, hi = int(offsets[r0]), int(offsets[r1])
        data = data_all[lo:hi]
        hit = (data - np.uint8(0xE5)) <= 4                       # E5..E9 (uint8 wrap-around)
        lead = np.flatnonzero((data - np.uint8(0xE3)) <= 1)      # E3 / E4: look at the next byte
        lead = lead[lead + 1 < len(data)]
        nxt = data[lead + 1]
        hit[lead] = np.where(data[lead] == 0xE4, nxt != 0xB7, nxt >= 0x90)
        csum = np.zeros(len(data) + 1, np.int32)
        np.cumsum(hit, dtype=np.int32, out=csum[1:])
        rel = offsets[r0: r1 + 1] - lo
        counts[r0:r1] = csum[rel[1:]] - csum[rel[:-1]]
    if text.null_count:
        counts = np.where(text.is_valid().to_numpy(zero_copy_only=False), counts, 0)
    return pa.array(counts, pa.int64())


def _with_columns(table: pa.Table, columns) -> pa.Table:
    """``table`` with null columns added for rules that read columns it lacks."""
    for c in columns:
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(table.num_rows, pa.int32() if "width" in c or "height" in c
                                                    else pa.string()))
    return table


def _text(table: pa.Table, config: FilterConfig):
    return pc.utf8_trim(primary_text(table, config.text_field), characters=TRIM_CHARS)


def filter_reasons(table: pa.Table, config: FilterConfig) -> pa.Array:
    """The drop reason of every row of a metadata table (null = kept), with pyarrow compute."""
    n = table.num_rows
    if n == 0:
        return pa.array([], pa.string())
    conds, values = [], []

    def rule(cond, reason: str) -> None:
        conds.append(pc.fill_null(cond, False))
        values.append(reason)

    rule(pc.invert(downloaded(table)), REASON_NOT_DOWNLOADED)
    table = _with_columns(table, FILTER_COLUMNS)
    if config.size_rules:
        w = pc.cast(pc.coalesce(table.column("original_width"), table.column("width")), pa.float64())
        h = pc.cast(pc.coalesce(table.column("original_height"), table.column("height")), pa.float64())
        rule(pc.or_(pc.is_null(w), pc.is_null(h)), "unknown_size")
        short, long_ = pc.min_element_wise(w, h), pc.max_element_wise(w, h)
        if config.min_side:
            rule(pc.less(short, float(config.min_side)), "too_small")
        if config.max_ratio:
            rule(pc.greater(long_, pc.multiply(short, float(config.max_ratio))), "aspect_ratio")
    text = _text(table, config)
    length = pc.fill_null(pc.utf8_length(text), 0)
    if config.min_text_len:
        rule(pc.less(length, config.min_text_len), "text_too_short")
    if config.max_text_len:
        rule(pc.greater(length, config.max_text_len), "text_too_long")
    if config.min_chinese_share:
        cjk = count_cjk(text)
        rule(pc.less(pc.cast(cjk, pa.float64()),
                     pc.multiply(pc.cast(length, pa.float64()), float(config.min_chinese_share))),
             "low_chinese_share")
    pattern = config.blocklist_regex()
    if pattern:
        joined = pc.binary_join_element_wise(
            *[pc.fill_null(table.column(c), "") for c in TEXT_COLUMNS], "\n")
        rule(pc.match_substring_regex(pc.utf8_lower(joined), pattern), "blocklist")
    cond = pc.make_struct(*conds, field_names=[f"c{i}" for i in range(len(conds))])
    reasons = pc.case_when(cond, *[pa.scalar(v) for v in values])
    if isinstance(reasons, pa.ChunkedArray):
        reasons = reasons.combine_chunks()
    return reasons


def _decisions(config: FilterConfig, table: pa.Table) -> pa.Table:
    reasons = filter_reasons(table, config)
    return pa.Table.from_arrays([table.column("key"), table.column("shard"), pc.is_null(reasons), reasons,
                                 pa.nulls(table.num_rows, pa.string())], schema=DECISION_SCHEMA)


def filter_step(config: FilterConfig) -> Fn:
    """The filter as a step: download batches (:meth:`FilterConfig.columns`, shard) -> decision rows."""
    return Fn(partial(_decisions, config), DECISION_SCHEMA)


def make_config(*, min_side: int = 200, max_ratio: float = 3.0, min_text_len: int = 2, max_text_len: int = 512,
                min_chinese_share: float = 0.3, blocklist: Optional[Union[PathLike, List[str]]] = None,
                text_field: str = "caption") -> FilterConfig:
    """A :class:`FilterConfig`; ``blocklist`` is a file (one term per line) or a list of terms."""
    terms: List[str] = []
    if isinstance(blocklist, (str, Path)):
        terms = read_blocklist(blocklist)
    elif blocklist:
        terms = list(blocklist)
    return FilterConfig(min_side=min_side, max_ratio=max_ratio, min_text_len=min_text_len,
                        max_text_len=max_text_len, min_chinese_share=min_chinese_share, blocklist=terms,
                        text_field=text_field)


def filter_dataset(engine, folder, config: FilterConfig):
    """The decision rows of ``config`` over a download folder, on ``engine``."""
    return engine.read_folder(folder, config.columns(), filter_step(config))
