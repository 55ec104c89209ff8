"""The in-process dedup engine with bounded memory (``ccmb dedup --memory-gb G``).

Same decisions as :func:`ccmb.corpus.dedup.dedup_table` (same levels, order, lowest-key rule, star groups),
but memory depends on the budget ``G`` and not on the number of rows:

* one streamed scan of the download's parquets in batches (:func:`ccmb.corpus.spill.plan`) checks that
  keys are unique (keys of a download folder are in order, so this is an adjacent check naming the
  file(s)), computes the key fingerprint and spills, per enabled level, (row, value) partitioned by the
  value's hash into on-disk buckets (:mod:`ccmb.corpus.spill`, a temp folder next to the output);
* ``url`` / ``sha256``: each bucket is grouped alone (first occurrence by a 64-bit hash, every duplicate
  compared in full with its representative, hash collisions regrouped exactly);
* ``caption``: per text bucket, equal normalised texts collapse to one node (numbered by its lowest
  row); MinHash signatures of the distinct texts give band values, spilled by band-value hash; each band
  bucket proposes candidate pairs; only the candidate nodes' texts are fetched back to verify the exact
  Jaccard; star groups are formed over the verified edges in row order (:func:`groups.star_reps_of_edges`);
* the decision table is written batch by batch (a parquet writer on an atomic temp file).

Per row, memory holds 1 byte (reason code, int8) plus 1 byte (eligible) during the levels; per dropped
duplicate 16 bytes (its row and its representative, int64); per verified near-duplicate edge 16 bytes
and per candidate pair 8 bytes (a packed int64) during the caption level. Levels without a bounded
implementation (``phash``, ``semdedup``, registered extras) run through their in-memory function on
the columns they need (their memory grows with the rows; said in docs/curation.md).

A folder whose keys are not in ascending order (never written by ``ccmb download``) falls back to the
in-memory engine (logged).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import atomic
from ..types import PathLike
from . import groups, minhash, spill
from .dedup import (REASON_UNDECODABLE, DedupConfig, LevelDrops, caption_texts, get_level,
                    phash_bands_of_variants)
from .phash import VARIANT_COLUMNS, VARIANTS, compute_phashes, variant_distance
from .table import (DICTIONARY_COLUMNS, KEYS_FINGERPRINT, REASON_NOT_DOWNLOADED, TABLE_KIND, TABLE_SOURCE,
                    CurationError, DECISION_SCHEMA, KeysFingerprint, Summary, _column_names,
                    decision_metadata, iter_shard_batches, list_parquets, load_metadata, release_memory,
                    sha256_to_binary)
from .urlnorm import normalize_urls

logger = logging.getLogger(__name__)


def _progress(items, desc: str, unit: str):
    """A tqdm bar on stderr over ``items`` (long corpora: one tick per parquet or bucket)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False)

BOUNDED_LEVELS = ("url", "sha256", "phash", "caption")
ROW_SCHEMA_URL = pa.schema([pa.field("row", pa.int64()), pa.field("value", pa.string())])
ROW_SCHEMA_SHA = pa.schema([pa.field("row", pa.int64()), pa.field("value", pa.binary(32))])
ROW_SCHEMA_TEXT = pa.schema([pa.field("row", pa.int64()), pa.field("value", pa.string())])
PHASH_SCHEMA = pa.schema([pa.field("row", pa.int64()), pa.field("value", pa.binary(8 * VARIANTS))])
BAND_SCHEMA = pa.schema([pa.field("node", pa.int64()), pa.field("band", pa.int16()),
                         pa.field("value", pa.int64())])


class KeysNotInOrder(Exception):
    """The folder's keys are not ascending (or some are null): the bounded engine cannot number rows."""


def text_columns(config: DedupConfig) -> List[str]:
    return [config.text_field] + (["title"] if config.text_field == "caption" else [])


def folder_rows(parquets: Sequence[Path]) -> int:
    """Rows of the folder from the parquet footers (no data read)."""
    total = 0
    for p in parquets:
        try:
            total += pq.ParquetFile(p).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise CurationError(f"{p}: unreadable parquet: {exc}") from exc
    return total


class _KeyOrder:
    """Checks, batch by batch, that keys ascend strictly; equal neighbours are duplicate keys (an error
    naming the file or files), a descent or a null key means the folder is not in key order."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.last: Optional[str] = None
        self.last_file: Optional[Path] = None

    def check(self, keys: pa.ChunkedArray, path: Path) -> None:
        if not len(keys):
            return
        if keys.null_count:
            raise KeysNotInOrder(f"{path}: null keys")
        first = keys[0].as_py()
        if self.last is not None:
            if first == self.last:
                files = sorted({str(self.last_file), str(path)})
                raise CurationError(f"{self.where}: sample keys are not unique, e.g. [{first!r}] "
                                    f"(in {', '.join(files)})")
            if first < self.last and pc.less(pa.scalar(first), pa.scalar(self.last)).as_py():
                raise KeysNotInOrder(f"{path}: key {first!r} after {self.last!r}")
        if len(keys) > 1:
            a, b = keys.slice(0, len(keys) - 1), keys.slice(1)
            if not pc.all(pc.less(a, b)).as_py():
                equal = np.flatnonzero(pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False))
                if len(equal):
                    dup = sorted({a[int(i)].as_py() for i in equal[:5]})
                    raise CurationError(f"{self.where}: sample keys are not unique, e.g. {dup} (in {path})")
                raise KeysNotInOrder(f"{path}: keys not ascending")
        self.last = keys[len(keys) - 1].as_py()
        self.last_file = path


class BoundedDedup:
    """One run of the bounded engine over a download folder (see the module docstring)."""

    def __init__(self, input_dir: PathLike, config: DedupConfig, output: PathLike, memory_gb: float,
                 buckets: Optional[int] = None) -> None:
        self.input_dir = Path(input_dir)
        self.config = config
        self.output = Path(output)
        self.parquets = list_parquets(self.input_dir)
        estimate = folder_rows(self.parquets)
        self.plan = spill.plan(memory_gb, estimate, buckets)
        self.n = 0
        logger.info("dedup (in-process, --memory-gb %g): %d rows in batches of %d, %d buckets per spill",
                    memory_gb, estimate, self.plan.batch_rows, self.plan.buckets)

    # ------------------------------------------------------------------------------------------ scan
    def scan(self, spills: spill.SpillDir) -> Tuple[np.ndarray, str]:
        """Stream the parquets once: ok mask (downloaded), key fingerprint, and the level spills."""
        levels = set(self.config.levels)
        cols = ["key", "status"]
        if "url" in levels:
            cols.append("url")
        if "sha256" in levels:
            cols.append("sha256")
        if "caption" in levels:
            cols += [c for c in text_columns(self.config) if c not in cols]
        p = self.plan.buckets
        self.spills: Dict[str, spill.Spill] = {}
        if "url" in levels:
            self.spills["url"] = spills.spill("url", ROW_SCHEMA_URL, p)
        if "sha256" in levels:
            self.spills["sha256"] = spills.spill("sha256", ROW_SCHEMA_SHA, p)
        if "caption" in levels:
            self.spills["caption"] = spills.spill("text", ROW_SCHEMA_TEXT, p)
        ok_parts: List[np.ndarray] = []
        fingerprint = KeysFingerprint()
        order = _KeyOrder(str(self.input_dir))
        at = 0
        for path in _progress(self.parquets, "dedup: scan", "parquet"):
            for batch in iter_shard_batches(path, cols, self.plan.batch_rows):
                m = batch.num_rows
                keys = batch.column("key")
                order.check(keys, path)
                fingerprint.update(keys)
                ok = pc.equal(pc.fill_null(batch.column("status"), ""), "success")
                ok_parts.append(pc.fill_null(ok, False).to_numpy(zero_copy_only=False).astype(bool))
                rows = np.arange(at, at + m, dtype=np.int64)
                if "url" in self.spills:
                    self._spill_strings(self.spills["url"], normalize_urls(batch.column("url")), rows)
                if "sha256" in self.spills:
                    self._spill_sha(sha256_to_binary(batch.column("sha256"), str(path)), rows)
                if "caption" in self.spills:
                    texts = minhash.normalize_texts(caption_texts(batch, self.config.text_field))
                    if isinstance(texts, pa.ChunkedArray):
                        texts = texts.combine_chunks()
                    texts = pc.if_else(pc.equal(pc.fill_null(texts, ""), ""), pa.scalar(None, pa.string()), texts)
                    self._spill_strings(self.spills["caption"], texts, rows)
                at += m
                release_memory()
        self.n = at
        ok = np.concatenate(ok_parts) if ok_parts else np.zeros(0, bool)
        return ok, fingerprint.hexdigest()

    @staticmethod
    def _spill_strings(target: spill.Spill, values: pa.Array, rows: np.ndarray) -> None:
        valid = values.is_valid().to_numpy(zero_copy_only=False)
        sel = pa.array(np.flatnonzero(valid))
        values = values.take(sel)
        hashes = groups.string_hashes(values)
        target.add(hashes, pa.table({"row": pa.array(rows[valid]), "value": values}))

    def _spill_sha(self, values: pa.Array, rows: np.ndarray) -> None:
        valid = values.is_valid().to_numpy(zero_copy_only=False)
        values = values.take(pa.array(np.flatnonzero(valid)))
        views, _ = groups.fixed_width_rows(values)
        prefix = np.ascontiguousarray(views[0][:, :8]).view(np.uint64).ravel() if len(values) else \
            np.zeros(0, np.uint64)
        self.spills["sha256"].add(minhash.splitmix64(prefix), pa.table({"row": pa.array(rows[valid]),
                                                                          "value": values}))

    # ---------------------------------------------------------------------------------------- levels
    def exact_level(self, name: str, eligible: np.ndarray) -> LevelDrops:
        """Equal values within each bucket; the lowest row of a group is its representative."""
        drop_rows, drop_reps = [], []
        for i in _progress(range(self.spills[name].buckets), f"dedup: {name}", "bucket"):
            rows, reps = _exact_bucket(self.spills[name].bucket(i), eligible, fixed=name == "sha256")
            drop_rows.append(rows)
            drop_reps.append(reps)
            spill.trim_memory()
        return _drops(get_level(name).reason, drop_rows, drop_reps)

    def caption_level(self, eligible: np.ndarray, spills: spill.SpillDir) -> LevelDrops:
        params = self.config.minhash
        bands = spills.spill("bands", BAND_SCHEMA, self.plan.buckets)
        same_rows, same_nodes = [], []  # rows whose normalised text equals a lower row's (their node)
        # A: nodes (distinct texts), band values spilled
        for i in _progress(range(self.spills["caption"].buckets), "dedup: caption", "bucket"):
            self._caption_nodes(self.spills["caption"].bucket(i), eligible, params, bands, same_rows, same_nodes)
            spill.trim_memory()  # the bucket's arrays are freed on return: hand them back
        logger.debug("caption: band values spilled (peak RSS %d MB)", peak_mb())
        packed = self._band_candidates(bands)
        logger.debug("caption: %d candidate pairs (peak RSS %d MB)", len(packed), peak_mb())
        ea, eb = self._verify(packed, eligible)
        logger.debug("caption: %d verified edges (peak RSS %d MB)", len(ea), peak_mb())
        return _star_drops(get_level("caption").reason, ea, eb, same_rows, same_nodes)

    @staticmethod
    def _caption_nodes(t: pa.Table, eligible: np.ndarray, params: minhash.MinHashParams, bands: spill.Spill,
                       same_rows: List[np.ndarray], same_nodes: List[np.ndarray]) -> None:
        """One text bucket: equal texts collapse to their lowest row's node; nodes' band values spilled."""
        rows = t.column("row").to_numpy()
        keep = eligible[rows]
        if not keep.any():
            return
        rows = rows[keep]
        texts = t.column("value").filter(pa.array(keep))
        local = groups.first_occurrence_strings(texts, np.ones(len(rows), bool))
        is_node = local == np.arange(len(rows))
        same_rows.append(rows[~is_node])
        same_nodes.append(rows[local[~is_node]])
        node_rows = rows[is_node]
        sig, _ = minhash.signatures(texts.filter(pa.array(is_node)).to_pylist(), params)
        del texts, local
        bv = minhash.band_values(sig, params).ravel()  # (nodes x bands)
        del sig
        nb = params.bands
        bands.add(bv, pa.table({"node": pa.array(np.repeat(node_rows, nb)),
                                "band": pa.array(np.tile(np.arange(nb, dtype=np.int16), len(node_rows))),
                                "value": pa.array(bv)}))

    def _band_candidates(self, bands: spill.Spill) -> np.ndarray:
        """Candidate node pairs (packed ``lo * n + hi``, unique) of items with an equal value in one band,
        band by band within each bucket; pairs of one node's items are skipped. The spill is removed."""
        found = []
        for i in range(bands.buckets):
            found.extend(_bucket_pairs(bands.bucket(i), self.n))
            spill.trim_memory()
        bands.remove()
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def _verify(self, packed: np.ndarray, eligible: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Exact Jaccard of every candidate pair; only the candidate nodes' texts are read back."""
        if not len(packed):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        a, b = packed // self.n, packed % self.n
        need = np.unique(np.concatenate([a, b]))
        got_rows, got_texts = [], []
        for t in self.spills["caption"]:
            rows = t.column("row").to_numpy()
            sel = np.isin(rows, need, assume_unique=True)
            if sel.any():
                got_rows.append(rows[sel])
                got_texts.append(t.column("value").filter(pa.array(sel)))
        rows = np.concatenate(got_rows)
        order = np.argsort(rows)
        texts = pa.chunked_array(got_texts).take(pa.array(order)).to_pylist()
        ia, ib = np.searchsorted(rows[order], a), np.searchsorted(rows[order], b)
        threshold = self.config.caption_threshold
        ok = np.zeros(len(a), bool)
        # pairs are sorted by their first node; a chunk's n-gram sets (~4 KB per text) stay within the budget
        step = max(1 << 12, int(self.plan.memory_gb * (1 << 30) / 4 / 8192))
        for lo in range(0, len(a), step):
            ok[lo: lo + step] = minhash.jaccard(texts, ia[lo: lo + step], ib[lo: lo + step],
                                                self.config.minhash.ngram) >= threshold
        return a[ok], b[ok]

    def phash_level(self, eligible: np.ndarray, spills: spill.SpillDir) -> List[LevelDrops]:
        """pHash near-duplicates: tars hashed a group at a time (the eligible keys of those tars only), the
        variant hashes spilled by their value; then as the caption level (equal hashes one node, bands of
        every variant spilled, candidates verified with the exact variant distance, star groups)."""
        hashes = spills.spill("phash", PHASH_SCHEMA, self.plan.buckets)
        bad_rows: List[np.ndarray] = []
        group = max(8, 4 * self.config.workers)
        pending: List[Tuple[Path, np.ndarray, pa.Array]] = []  # (tar, rows, keys) of eligible samples

        def hash_pending() -> None:
            if not pending:
                return
            by_tar = {tar.name: keys.to_pylist() for tar, _, keys in pending}
            ph = compute_phashes([tar for tar, _, _ in pending], by_tar, workers=self.config.workers,
                                 progress=False)
            all_keys = pa.chunked_array([k for _, _, k in pending], pa.string())
            all_rows = np.concatenate([r for _, r, _ in pending])
            idx = pc.index_in(ph.column("key"), value_set=all_keys).to_numpy(zero_copy_only=False)
            idx = idx.astype(np.int64)
            has = ph.column("phash").is_valid().to_numpy(zero_copy_only=False)
            bad_rows.append(np.sort(all_rows[idx[~has]]))
            got = np.zeros(len(all_rows), bool)
            got[idx] = True
            if not got.all():
                i = int(np.flatnonzero(~got)[0])
                tar = next(t for t, r, _ in pending if all_rows[i] in r)
                raise CurationError(f"{tar.name}: sample {all_keys[i].as_py()} is in the parquet as downloaded but "
                                    f"not in the tar ({int((~got).sum())} such samples)")
            good = ph.filter(pa.array(has))
            values = np.stack([good.column(c).to_numpy() for c in VARIANT_COLUMNS], axis=1).astype(np.int64)
            rows = all_rows[idx[has]]
            order = np.argsort(rows)
            rows, values = rows[order], values[order]
            hashes.add(_tuple_hash(values), pa.table({"row": pa.array(rows), "value": _fixed(values)}))
            pending.clear()

        at = 0
        for path in self.parquets:
            tar = path.with_suffix(".tar")
            for batch in iter_shard_batches(path, ["key"], self.plan.batch_rows):
                m = batch.num_rows
                sel = np.flatnonzero(eligible[at: at + m])
                if len(sel):
                    pending.append((tar, sel + at, batch.column("key").take(pa.array(sel)).combine_chunks()))
                at += m
            if len(pending) >= group:
                hash_pending()
        hash_pending()
        bad = np.concatenate(bad_rows) if bad_rows else np.zeros(0, np.int64)

        threshold, nbands = self.config.phash_threshold, self.config.bands
        bands = spills.spill("phash_bands", BAND_SCHEMA, self.plan.buckets)
        same_rows, same_nodes = [], []
        for t in hashes:  # nodes: distinct variant tuples; band values of every variant, spilled
            if not t.num_rows:
                continue
            rows = t.column("row").to_numpy()
            local = groups.first_occurrence_fixed(t.column("value"), np.ones(len(rows), bool))
            is_node = local == np.arange(len(rows))
            same_rows.append(rows[~is_node])
            same_nodes.append(rows[local[~is_node]])
            uniq = _unfixed(t.column("value").filter(pa.array(is_node)), VARIANTS)
            items, node_of_item = phash_bands_of_variants(uniq, nbands)
            node = rows[is_node][node_of_item]
            bands.add(items.ravel(), pa.table({
                "node": pa.array(np.repeat(node, nbands)),
                "band": pa.array(np.tile(np.arange(nbands, dtype=np.int16), len(node))),
                "value": pa.array(items.ravel())}))
        packed = self._band_candidates(bands)
        ea, eb = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(packed):
            a, b = packed // self.n, packed % self.n
            need = np.unique(np.concatenate([a, b]))
            got_rows, got_values = [], []
            for t in hashes:
                rows = t.column("row").to_numpy()
                sel = np.isin(rows, need, assume_unique=True)
                if sel.any():
                    got_rows.append(rows[sel])
                    got_values.append(_unfixed(t.column("value").filter(pa.array(sel)), VARIANTS))
            rows = np.concatenate(got_rows)
            order = np.argsort(rows)
            rows, values = rows[order], np.concatenate(got_values)[order]
            ok = variant_distance(values[np.searchsorted(rows, a)], values[np.searchsorted(rows, b)]) <= threshold
            ea, eb = a[ok], b[ok]
        hashes.remove()
        return [LevelDrops(REASON_UNDECODABLE, bad, np.full(len(bad), -1, np.int64)),
                _star_drops(get_level("phash").reason, ea, eb, same_rows, same_nodes)]

    def fallback_level(self, name: str, eligible: np.ndarray) -> List[LevelDrops]:
        """A level without a bounded implementation: its in-memory function on the columns it reads."""
        level = get_level(name)
        cols = ["key", "status"] + [c for c in level.columns if c not in ("key", "status")]
        meta = load_metadata(self.input_dir, cols)
        if meta.num_rows != self.n:
            raise CurationError(f"{self.input_dir}: the parquets changed during dedup")
        return level.local(self.input_dir, meta, eligible, self.config)

    # ------------------------------------------------------------------------------------------- run
    def run(self, keep_tables: Sequence[PathLike] = ()) -> Summary:
        start = time.time()
        with spill.SpillDir(self.output, ".ccmb-dedup-") as spills:
            ok, fingerprint = self.scan(spills)
            logger.info("dedup scan: %d rows in %.1fs (peak RSS %d MB)", self.n, time.time() - start, peak_mb())
            names: List[str] = []
            codes = np.full(self.n, -1, np.int8)  # reason per row (-1 kept): 1 byte per row

            def code(name: str) -> int:
                if name not in names:
                    names.append(name)
                    if len(names) > 127:
                        raise ValueError("more than 127 distinct reasons")
                return names.index(name)

            codes[~ok] = code(REASON_NOT_DOWNLOADED)
            del ok
            for path in keep_tables:
                self._merge_keep_table(Path(path), fingerprint, codes, code)
            eligible = codes < 0
            drops: List[LevelDrops] = []
            for name in self.config.levels:
                t0 = time.time()
                if name in ("url", "sha256"):
                    level_drops = [self.exact_level(name, eligible)]
                elif name == "caption":
                    level_drops = [self.caption_level(eligible, spills)]
                elif name == "phash":
                    level_drops = self.phash_level(eligible, spills)
                else:
                    level_drops = self.fallback_level(name, eligible)
                for d in level_drops:
                    eligible[d.rows] = False
                    codes[d.rows] = code(d.reason)
                drops.extend(level_drops)
                logger.info("dedup level %s: %s in %.1fs (peak RSS %d MB)", name,
                            ", ".join(f"{d.reason} {len(d.rows)}" for d in level_drops), time.time() - t0, peak_mb())
                release_memory()
            del eligible
            rows, reps = resolve(drops)
            del drops
            self.write(rows, reps, codes, names, fingerprint)
        counts = np.bincount(codes[codes >= 0].astype(np.int64), minlength=len(names))
        dropped = {nm: int(c) for nm, c in zip(names, counts) if c}
        dropped = dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])))
        return Summary(rows=self.n, kept=self.n - int(counts.sum()), dropped=dropped, output=str(self.output),
                       seconds=time.time() - start)

    def _merge_keep_table(self, path: Path, fingerprint: str, codes: np.ndarray, code) -> None:
        """Rows an earlier table drops take its reason (streamed when it lists our keys in our order)."""
        meta = decision_metadata(path)
        if path.is_file() and meta.get("keys_fingerprint") == fingerprint:
            names_in = _column_names(path)
            cols = ["keep"] + (["reason"] if "reason" in names_in else [])
            at = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=self.plan.batch_rows, columns=cols):
                m = batch.num_rows
                keep = pc.fill_null(batch.column("keep"), False).to_numpy(zero_copy_only=False)
                if "reason" in cols:
                    reason = pc.fill_null(batch.column("reason").cast(pa.string()), "dropped")
                    enc = pc.dictionary_encode(reason)
                    remap = np.asarray([code(nm) for nm in enc.dictionary.to_pylist()] + [-1], np.int8)
                    batch_codes = remap[enc.indices.to_numpy(zero_copy_only=False)]
                else:
                    batch_codes = np.full(m, code("dropped"), np.int8)
                part = codes[at: at + m]
                take = (part < 0) & ~keep
                part[take] = batch_codes[take]
                at += m
            if at != self.n:
                raise CurationError(f"{path}: {at} rows, the download folder has {self.n}")
            return
        # another order or a partitioned table: the general lookup (memory grows with the rows)
        from .table import ReasonCodes, prior_reason_codes

        keys = load_metadata(self.input_dir, ["key"]).column("key")
        rc = ReasonCodes(self.n)
        prior_reason_codes(keys, [path], rc)
        del keys
        remap = np.asarray([code(nm) for nm in rc.names] + [-1], np.int8)
        take = (codes < 0) & (rc.codes >= 0)
        codes[take] = remap[rc.codes[take]]

    # ----------------------------------------------------------------------------------------- write
    def write(self, rows: np.ndarray, reps: np.ndarray, codes: np.ndarray, names: List[str],
              fingerprint: str) -> None:
        """The decision table, batch by batch: keys/shards streamed again, duplicate_of keys looked up."""
        from . import parts as partmod

        need = np.unique(reps)
        rep_keys = self._keys_of(need)
        meta = {KEYS_FINGERPRINT: fingerprint.encode(), TABLE_KIND: b"dedup",
                TABLE_SOURCE: json.dumps(partmod.source_of(self.input_dir)).encode()}
        schema = DECISION_SCHEMA.with_metadata(meta)
        reason_names = pa.array(names or [""], pa.string())
        if self.output.is_dir():
            partmod.remove_table(self.output)
        at = 0
        with atomic.atomic_open(self.output, "wb") as fh:
            with pq.ParquetWriter(fh, schema, use_dictionary=DICTIONARY_COLUMNS, write_statistics=False) as w:
                for path in self.parquets:
                    for batch in iter_shard_batches(path, ["key"], self.plan.batch_rows):
                        m = batch.num_rows
                        c = codes[at: at + m]
                        reason = pa.DictionaryArray.from_arrays(pa.array(c, mask=c < 0), reason_names).cast(pa.string())
                        lo, hi = np.searchsorted(rows, [at, at + m])
                        dup_idx = np.full(m, -1, np.int64)
                        dup_idx[rows[lo:hi] - at] = np.searchsorted(need, reps[lo:hi])
                        dup = rep_keys.take(pa.array(dup_idx, mask=dup_idx < 0)) if m else pa.array([], pa.string())
                        w.write_table(pa.Table.from_arrays(
                            [batch.column("key"), batch.column("shard"), pc.is_null(reason), reason, dup],
                            schema=schema))
                        at += m
        if at != self.n:
            raise CurationError(f"{self.input_dir}: the parquets changed during dedup")

    def _keys_of(self, rows: np.ndarray) -> pa.ChunkedArray:
        """Keys of the (sorted) ``rows``, one streamed pass over the key column."""
        out, at = [], 0
        for path in self.parquets:
            for batch in iter_shard_batches(path, ["key"], self.plan.batch_rows):
                m = batch.num_rows
                lo, hi = np.searchsorted(rows, [at, at + m])
                if hi > lo:
                    out.append(batch.column("key").take(pa.array(rows[lo:hi] - at)).combine_chunks())
                at += m
        return pa.chunked_array(out, pa.string())


def peak_mb() -> int:
    """Peak resident memory of this process so far, in MB (0 where unknown)."""
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    except (ImportError, OSError):
        return 0


def _exact_bucket(t: pa.Table, eligible: np.ndarray, fixed: bool) -> Tuple[np.ndarray, np.ndarray]:
    """One bucket of an exact level: (rows that repeat a lower row's value, that lowest row)."""
    rows = t.column("row").to_numpy()
    keep = eligible[rows]
    if not keep.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = rows[keep]
    values = t.column("value").filter(pa.array(keep))
    first = groups.first_occurrence_fixed if fixed else groups.first_occurrence_strings
    local = first(values, np.ones(len(rows), bool))
    dup = np.flatnonzero((local >= 0) & (local != np.arange(len(rows))))
    return rows[dup], rows[local[dup]]


def _bucket_pairs(t: pa.Table, n: int) -> List[np.ndarray]:
    """One bucket of band items: node pairs (packed ``lo * n + hi``) with an equal value in one band."""
    found: List[np.ndarray] = []
    if t.num_rows < 2:
        return found
    node = t.column("node").to_numpy()
    band = t.column("band").to_numpy()
    value = t.column("value").to_numpy()
    for j in np.unique(band).tolist():
        sel = np.flatnonzero(band == j)
        for a, b in groups.band_pairs(np.ascontiguousarray(value[sel])):
            a, b = node[sel[a]], node[sel[b]]
            other = a != b
            if other.any():
                a, b = a[other], b[other]
                found.append(np.unique(np.minimum(a, b) * n + np.maximum(a, b)))
    return found


def _tuple_hash(values: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of an int64 matrix (bucketing only; equality is checked in full)."""
    h = np.zeros(len(values), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(values.shape[1]):
            h = minhash.splitmix64(h ^ values[:, j].view(np.uint64))
    return h


def _fixed(values: np.ndarray) -> pa.Array:
    """Rows of an int64 matrix as fixed-size binaries (compared in full by the exact grouping)."""
    values = np.ascontiguousarray(values)
    width = values.shape[1] * 8
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(values)])


def _unfixed(column, width: int) -> np.ndarray:
    views, _ = groups.fixed_width_rows(column)
    if not views:
        return np.zeros((0, width), np.int64)
    return np.ascontiguousarray(np.concatenate(views)).view(np.int64).reshape(-1, width)


def _star_drops(reason: str, ea: np.ndarray, eb: np.ndarray, same_rows: List[np.ndarray],
                same_nodes: List[np.ndarray]) -> LevelDrops:
    """Star groups in row order over verified node edges (nodes numbered by their lowest row); rows equal
    to a lower row's node follow that node's centre."""
    nodes, centre = groups.star_reps_of_edges(ea, eb)
    moved = centre != nodes
    drop_rows, drop_reps = [nodes[moved]], [centre[moved]]
    if same_rows:
        rows, node = np.concatenate(same_rows), np.concatenate(same_nodes)
        if len(nodes):
            pos = np.minimum(np.searchsorted(nodes, node), len(nodes) - 1)
            node = np.where(nodes[pos] == node, centre[pos], node)
        drop_rows.append(rows)
        drop_reps.append(node)
    return _drops(reason, drop_rows, drop_reps)


def _drops(reason: str, rows: List[np.ndarray], reps: List[np.ndarray]) -> LevelDrops:
    if not rows:
        return LevelDrops(reason, np.zeros(0, np.int64), np.zeros(0, np.int64))
    r, p = np.concatenate(rows).astype(np.int64), np.concatenate(reps).astype(np.int64)
    order = np.argsort(r)
    return LevelDrops(reason, r[order], p[order])


def resolve(drops: Sequence[LevelDrops]) -> Tuple[np.ndarray, np.ndarray]:
    """Dropped rows with a representative (sorted) and the finally kept row each stands for (pointers into
    rows a later level dropped are followed, as :func:`groups.resolve_chains` does)."""
    with_rep = [(d.rows[d.reps >= 0], d.reps[d.reps >= 0]) for d in drops]
    rows = np.concatenate([r for r, _ in with_rep]) if with_rep else np.zeros(0, np.int64)
    reps = np.concatenate([p for _, p in with_rep]) if with_rep else np.zeros(0, np.int64)
    order = np.argsort(rows, kind="stable")
    rows, reps = rows[order], reps[order]
    # a row dropped twice keeps the later level's pointer (as assemble's overwrite does)
    last = np.ones(len(rows), bool)
    last[:-1] = rows[1:] != rows[:-1]
    rows, reps = rows[last], reps[last]
    for _ in range(64):
        pos = np.minimum(np.searchsorted(rows, reps), max(len(rows) - 1, 0))
        chained = (rows[pos] == reps) if len(rows) else np.zeros(0, bool)
        if not chained.any():
            break
        reps = np.where(chained, reps[pos], reps)
    else:
        raise RuntimeError("duplicate_of pointers form a cycle")
    return rows, reps


def dedup_bounded(input_dir: PathLike, config: DedupConfig, output: PathLike, memory_gb: float,
                  keep_tables: Sequence[PathLike] = (), buckets: Optional[int] = None) -> Optional[Summary]:
    """Run the bounded engine; None when the folder's keys are not in order (the caller falls back)."""
    try:
        return BoundedDedup(input_dir, config, output, memory_gb, buckets).run(keep_tables)
    except KeysNotInOrder as exc:
        logger.warning("dedup: %s; keys are not in ascending order, using the in-memory engine "
                       "(memory grows with the rows)", exc)
        return None
