"""Dedup level 1, ``url``: equal normal forms of the image URL (:mod:`ccmb.corpus.primitives.urlnorm`)."""
from __future__ import annotations

import pyarrow as pa

from ...primitives.urlnorm import normalize_urls
from ..exact import exact_drops
from . import DedupLevel

REASON = "duplicate_url"


def prepare(table: pa.Table, config) -> dict:
    return {"url_norm": normalize_urls(table.column("url"))}


def drops(engine, rows, config, context):
    return exact_drops(engine, rows, "url_norm", pa.string(), REASON, desc="dedup: url")


LEVEL = DedupLevel("url", REASON, "Level 1: normalised URL.", order=10, drops=drops, columns=("url",),
                   prepare=prepare, fields=(pa.field("url_norm", pa.string()),), exact=True, value="url_norm")
