"""Dedup level 2, ``sha256``: equal SHA-256 of the downloaded image bytes (the parquet's ``sha256``, 64 hex
digits in any case; other values take no part)."""
from __future__ import annotations

import pyarrow as pa

from ...primitives.columns import sha256_to_binary
from ..exact import exact_drops
from . import DedupLevel

REASON = "duplicate_sha256"


def prepare(table: pa.Table, config) -> dict:
    return {"sha": sha256_to_binary(table.column("sha256"), str(table.column("shard")[0]) if table.num_rows else "")
            .cast(pa.binary())}


def drops(engine, rows, config, context):
    return exact_drops(engine, rows, "sha", pa.binary(), REASON, desc="dedup: sha256")


LEVEL = DedupLevel("sha256", REASON, "Level 2: exact image bytes.", order=20, drops=drops, columns=("sha256",),
                   prepare=prepare, fields=(pa.field("sha", pa.binary()),), exact=True, value="sha")
