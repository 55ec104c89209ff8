"""Dedup level 3, ``phash``: perceptual near-duplicate images. Every eligible image is hashed once from its
tar (:mod:`ccmb.corpus.primitives.phash`: three 64-bit pHash variants, whole image and central 90%/80%);
equal variant triples are one node; the bits of every variant cut into ``threshold + 1`` bands propose
candidates (by pigeonhole no pair within the threshold is missed); a pair is a duplicate when the exact
variant distance is at most ``--phash-threshold``; star groups. Images that do not decode are dropped as
``undecodable_image``."""
from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...primitives import groups
from ...primitives.columns import binary_matrix, packed_binary
from ...primitives.phash import VARIANTS, phash_tar, variant_distance
from ...tables.dataflow import Fn
from ...tables.folder import DownloadFolder
from ...tables.schema import CurationError
from ..exact import DROPS_SCHEMA
from ..neardup import ITEMS, band_bucket, constant, member_schema, near_duplicate_drops
from . import REASON_UNDECODABLE, DedupLevel, Option

REASON = "duplicate_phash"
HASHED = pa.schema([("key", pa.string()), ("_id", pa.int64()), ("v", pa.binary()), ("error", pa.string())])


def variants_of(column) -> np.ndarray:
    """(n, VARIANTS) int64 hash variants from their packed binaries (``VARIANTS * 8`` bytes each)."""
    return binary_matrix(column, np.int64, VARIANTS)


def packed(values: np.ndarray) -> pa.Array:
    return packed_binary(np.asarray(values, np.int64))


def hash_tars(folder: str, t: pa.Table) -> pa.Table:
    """One partition of (key, row id, shard) rows (every row of a tar is here): the hash variants of each
    image, read from its tar once; an image that does not decode gets its error. A key missing from its tar
    is an error naming both."""
    out = []
    shards = t.column("shard")
    for shard in pc.unique(shards).to_pylist():
        rows = t.filter(pc.equal(shards, shard))
        keys = rows.column("key").to_pylist()
        ids = dict(zip(keys, rows.column("_id").to_pylist()))
        tar = DownloadFolder.tar_of(folder, shard)
        got, values, errors = phash_tar(tar, set(keys))
        missing = sorted(set(keys) - set(got) - set(errors))
        if missing:
            raise CurationError(f"{shard}: sample {missing[0]} is in the parquet as downloaded but not in the tar "
                                f"({len(missing)} such samples)")
        bad = sorted(errors)
        out.append(pa.table({"key": pa.array(got + bad, pa.string()),
                             "_id": pa.array([ids[k] for k in got + bad], pa.int64()),
                             "v": pa.concat_arrays([packed(values), pa.nulls(len(bad), pa.binary())]),
                             "error": pa.array([None] * len(got) + [errors[k] for k in bad], pa.string())}))
    return pa.concat_tables(out) if out else HASHED.empty_table()


def _keys(t: pa.Table) -> pa.Table:
    return pa.table({"key": t.column("key"), "_id": t.column("_id"), "shard": t.column("shard")})


def _undecodable(t: pa.Table) -> pa.Table:
    t = t.filter(pc.is_valid(t.column("error")))
    return pa.table({"key": t.column("key"), "reason": constant(REASON_UNDECODABLE, t.num_rows),
                     "duplicate_of": pa.nulls(t.num_rows, pa.string())})


def _members(t: pa.Table) -> pa.Table:
    t = t.filter(pc.is_null(t.column("error")))
    return pa.table({"key": t.column("key"), "_id": t.column("_id"), "v": t.column("v")})


def band_items(bands: int, t: pa.Table) -> pa.Table:
    uniq = variants_of(t.column("v"))
    if not len(uniq):
        return ITEMS.empty_table()
    items = np.concatenate([groups.phash_bands(np.ascontiguousarray(uniq[:, j]), bands) for j in range(VARIANTS)])
    node = np.tile(t.column("node").to_numpy(), VARIANTS)
    band = np.tile(np.arange(bands, dtype=np.int64), len(node))
    return pa.table({"node": np.repeat(node, bands), "bucket": band_bucket(band, items.ravel())})


def exact_check(threshold: int, va, vb) -> np.ndarray:
    return variant_distance(variants_of(va), variants_of(vb)) <= threshold


def drops(engine, rows, config, context):
    keys = engine.map(rows, Fn(_keys, pa.schema([("key", pa.string()), ("_id", pa.int64()), ("shard", pa.string())])))
    hashed = engine.cache(engine.shuffle(keys, ["shard"], Fn(partial(hash_tars, str(context.folder.path)), HASHED),
                                         desc="dedup: phash", min_partitions=4 * config.workers if config.workers > 1
                                         else 1))
    bands = config["phash_bands"] or config["phash_threshold"] + 1
    near = near_duplicate_drops(engine, engine.map(hashed, Fn(_members, member_schema(pa.binary()))), pa.binary(),
                                Fn(partial(band_items, bands), ITEMS), partial(exact_check, int(config["phash_threshold"])),
                                REASON, desc="dedup: phash")
    return engine.union(engine.map(hashed, Fn(_undecodable, DROPS_SCHEMA)), near)


def _threshold(v) -> str:
    return None if 0 <= int(v) < 64 else "must be in [0, 63]"


LEVEL = DedupLevel(
    "phash", REASON, "Level 3: perceptual near-duplicates (reads the tars).", order=30, drops=drops,
    options=(
        Option("--phash-threshold", "phash_threshold", 4,
               "Max Hamming distance of 64-bit pHashes (best of whole/centre-crop variants).", check=_threshold),
        Option("--phash-bands", "phash_bands", None, "LSH bands of the pHash (default threshold+1: exact recall).",
               type=int),
    ))
