"""Dedup level 4, ``caption``: near-duplicate primary texts. Texts are normalised (lower-case, punctuation,
symbols and spaces removed); equal texts are one node; MinHash LSH bands of character n-grams propose
candidate pairs; a pair is a duplicate when the exact Jaccard of its n-gram sets reaches
``--caption-threshold``; star groups (:mod:`ccmb.corpus.steps.neardup`)."""
from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...primitives import minhash
from ...primitives.columns import TEXT_COLUMNS, primary_text
from ...tables.dataflow import Fn
from ..neardup import ITEMS, member_schema, near_duplicate_drops
from . import DedupLevel, Option

REASON = "duplicate_caption"


def params(config) -> minhash.MinHashParams:
    return minhash.MinHashParams(num_perm=config["minhash_perm"], ngram=config["ngram"], bands=config["minhash_bands"])


def columns(config) -> tuple:
    return (config["text_field"], "title") if config["text_field"] == "caption" else (config["text_field"],)


def prepare(table: pa.Table, config) -> dict:
    texts = minhash.normalize_texts(primary_text(table, config["text_field"]))
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    return {"cap": pc.if_else(pc.equal(pc.fill_null(texts, ""), ""), pa.scalar(None, pa.string()), texts)}


def _members(t: pa.Table) -> pa.Table:
    t = t.filter(pc.is_valid(t.column("cap")))
    return pa.table({"key": t.column("key"), "_id": t.column("_id"), "v": t.column("cap")})


def band_items(p: minhash.MinHashParams, t: pa.Table) -> pa.Table:
    texts = t.column("v").to_pylist()
    if not texts:
        return ITEMS.empty_table()
    sig, _ = minhash.signatures(texts, p)
    # band values already differ between bands (the band number is hashed in)
    return pa.table({"node": np.repeat(t.column("node").to_numpy(), p.bands),
                     "bucket": minhash.band_values(sig, p).ravel()})


def exact_check(ngram: int, threshold: float, va, vb) -> np.ndarray:
    a, b = va.to_pylist(), vb.to_pylist()
    return np.fromiter((minhash.jaccard_sets(minhash.ngrams(x, ngram), minhash.ngrams(y, ngram)) >= threshold
                        for x, y in zip(a, b)), bool, len(a))


def drops(engine, rows, config, context):
    p = params(config)
    members = engine.map(rows, Fn(_members, member_schema(pa.string())))
    return near_duplicate_drops(engine, members, pa.string(), Fn(partial(band_items, p), ITEMS),
                                partial(exact_check, p.ngram, float(config["caption_threshold"])), REASON,
                                desc="dedup: caption")


def _threshold(v) -> str:
    return None if 0.0 < float(v) <= 1.0 else "must be in (0, 1]"


LEVEL = DedupLevel(
    "caption", REASON, "Level 4: caption near-duplicates (n-gram Jaccard).", order=40, drops=drops,
    columns=columns, prepare=prepare, fields=(pa.field("cap", pa.string()),),
    options=(
        Option("--caption-threshold", "caption_threshold", 0.8,
               "Min exact Jaccard of caption n-grams (MinHash only proposes candidates).", check=_threshold),
        Option("--minhash-perm", "minhash_perm", 64, "MinHash functions."),
        Option("--minhash-bands", "minhash_bands", 16, "LSH bands of the MinHash signature."),
        Option("--ngram", "ngram", 3, "Character n-gram size of captions."),
        Option("--text-field", "text_field", "caption", "Text of the caption level (caption falls back to title).",
               type=TEXT_COLUMNS),
    ))
