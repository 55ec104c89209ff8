"""Dedup level 3, ``phash``: perceptual near-duplicate images. Every eligible image is hashed once from its
tar (:mod:`ccmb.corpus.primitives.phash`: three 64-bit pHash variants, whole image and central 90%/80%);
equal variant triples are one node; the bits of every variant cut into ``threshold + 1`` bands propose
candidates (by pigeonhole no pair within the threshold is missed); a pair is a duplicate when the exact
variant distance is at most ``--phash-threshold`` AND the second image check agrees
(:func:`ccmb.corpus.primitives.imagecheck.same_image`: aligned 32x32 thumbnails differ over at most
:data:`~ccmb.corpus.primitives.imagecheck.MAX_DIFFERENT_SHARE` of the picture); star groups. Rows with
identical hash variants are checked against their node the same way (a rejected row is a node of its own).
The thumbnails are computed for the rows of the pairs to check only, from a second read of their tars
(3 KB per image: never carried through the level's shuffles); ``--no-image-check`` turns the check off
(pHash distance alone, as before). Images that do not decode are dropped as ``undecodable_image``."""
from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...primitives import groups, imagecheck
from ...primitives.columns import binary_matrix, packed_binary
from ...primitives.phash import VARIANTS, phash_tar, variant_distance
from ...tables.dataflow import Fn
from ...tables.folder import DownloadFolder
from ...tables.schema import CurationError
from ..exact import DROPS_SCHEMA
from ..neardup import EDGES, ITEMS, band_bucket, constant, member_schema, near_duplicate_drops
from . import REASON_UNDECODABLE, DedupLevel, Option

REASON = "duplicate_phash"
HASHED = pa.schema([("key", pa.string()), ("_id", pa.int64()), ("shard", pa.string()), ("v", pa.binary()),
                    ("error", pa.string())])
LOCATED = pa.schema([("_id", pa.int64()), ("key", pa.string()), ("shard", pa.string())])
IDS = pa.schema([("_id", pa.int64())])
THUMBS = pa.schema([("_id", pa.int64()), ("t", pa.binary())])


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
                             "shard": constant(shard, len(got) + len(bad)),
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


# ---------------------------------------------------------------------- the second check (thumbnails)

def _located(t: pa.Table) -> pa.Table:
    t = t.filter(pc.is_null(t.column("error")))
    return pa.table({"_id": t.column("_id"), "key": t.column("key"), "shard": t.column("shard")})


def _ends(t: pa.Table) -> pa.Table:
    return pa.table({"_id": pa.concat_arrays([t.column("a").combine_chunks(), t.column("b").combine_chunks()])})


def _distinct_ids(t: pa.Table) -> pa.Table:
    return pa.table({"_id": pc.unique(t.column("_id").combine_chunks()) if t.num_rows else pa.array([], pa.int64())})


def thumbnail_tars(folder: str, t: pa.Table) -> pa.Table:
    """One partition of (row id, key, shard) rows (every row of a tar is here): the thumbnails of those
    images, read from their tars (an image that no longer decodes gets none: its pairs are not merged)."""
    out = []
    shards = t.column("shard")
    for shard in pc.unique(shards).to_pylist():
        rows = t.filter(pc.equal(shards, shard))
        ids = dict(zip(rows.column("key").to_pylist(), rows.column("_id").to_pylist()))
        got, thumbs, _ = imagecheck.tar_thumbnails(DownloadFolder.tar_of(folder, shard), set(ids))
        out.append(pa.table({"_id": pa.array([ids[k] for k in got], pa.int64()), "t": imagecheck.to_binary(thumbs)}))
    return pa.concat_tables(out) if out else THUMBS.empty_table()


def _side(name: str, t: pa.Table) -> pa.Table:
    return pa.table({name: t.column("_id"), f"t{name}": t.column("t")})


def _same_images(mirror: bool, t: pa.Table) -> pa.Table:
    if t.num_rows:
        ok = imagecheck.same_image(imagecheck.from_binary(t.column("ta")), imagecheck.from_binary(t.column("tb")),
                                   mirror=mirror)
        t = t.filter(pa.array(ok))
    return pa.table({"a": t.column("a"), "b": t.column("b"), "ka": t.column("ka"), "kb": t.column("kb")})


class ImageCheck:
    """The level's second check as the near-duplicate pipeline's ``confirm``: the thumbnails of the rows of
    the pairs (and only those) are computed from their tars, kept for the next call (each image is read
    again at most once), joined to both sides of every pair, and :func:`imagecheck.same_image` decides."""

    def __init__(self, folder: str, hashed, workers: int, mirror: bool = False) -> None:
        self.folder, self.hashed, self.workers, self.mirror = folder, hashed, workers, mirror
        self.thumbs = None

    def prefetch(self, engine, pairs) -> None:
        """Compute the thumbnails of the rows of ``pairs`` not computed yet (one read of their tars)."""
        ends = engine.shuffle(engine.map(pairs, Fn(_ends, IDS)), ["_id"], Fn(_distinct_ids, IDS))
        if self.thumbs is not None:
            ends = engine.join(ends, engine.map(self.thumbs, Fn(_thumb_ids, IDS)), ["_id"], "anti")
        located = engine.join(ends, engine.map(self.hashed, Fn(_located, LOCATED)), ["_id"], "inner")
        new = engine.cache(engine.shuffle(located, ["shard"], Fn(partial(thumbnail_tars, self.folder), THUMBS),
                                          desc="dedup: phash thumbnails",
                                          min_partitions=4 * self.workers if self.workers > 1 else 1))
        if self.thumbs is None:
            self.thumbs = new
        elif engine.count(new):
            self.thumbs = engine.cache(engine.union(self.thumbs, new))

    def __call__(self, engine, pairs):
        pairs = engine.cache(pairs)
        self.prefetch(engine, pairs)
        x = pairs
        for name in ("a", "b"):
            side = engine.map(self.thumbs, Fn(partial(_side, name), pa.schema([(name, pa.int64()),
                                                                                (f"t{name}", pa.binary())])))
            x = engine.join(x, side, [name], "inner")
        return engine.map(x, Fn(partial(_same_images, self.mirror), EDGES))


def _thumb_ids(t: pa.Table) -> pa.Table:
    return t.select(["_id"])


def drops(engine, rows, config, context):
    keys = engine.map(rows, Fn(_keys, pa.schema([("key", pa.string()), ("_id", pa.int64()), ("shard", pa.string())])))
    hashed = engine.cache(engine.shuffle(keys, ["shard"], Fn(partial(hash_tars, str(context.folder.path)), HASHED),
                                         desc="dedup: phash", min_partitions=4 * config.workers if config.workers > 1
                                         else 1))
    bands = config["phash_bands"] or config["phash_threshold"] + 1
    confirm = ImageCheck(str(context.folder.path), hashed, config.workers) if config["image_check"] else None
    near = near_duplicate_drops(engine, engine.map(hashed, Fn(_members, member_schema(pa.binary()))), pa.binary(),
                                Fn(partial(band_items, bands), ITEMS), partial(exact_check, int(config["phash_threshold"])),
                                REASON, desc="dedup: phash", confirm=confirm)
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
        Option("--image-check/--no-image-check", "image_check", True,
               "Merge a pHash pair only when the second image check (aligned 32x32 thumbnails, at most "
               f"{imagecheck.MAX_DIFFERENT_SHARE:.0%} of the picture differing) agrees; off: pHash distance alone."),
    ))
