"""``ccmb decontaminate`` as steps: drop corpus samples that copy images of the downstream evaluation sets.

The evaluation sets come through the :mod:`ccmb.datasets` registry (any dataset, any split; default: the
split the benchmark evaluates). Index, per evaluation image (built here, small, handed to every task): the
SHA-256 of its bytes and pHash variants of the image and of its mirror image
(:mod:`ccmb.corpus.primitives.phash`: whole image, central 90% and 80%). Scan, per corpus image (the tars
are read once, never extracted): its pHash variants. A corpus sample is an evaluation copy (reason
``eval_overlap``, ``duplicate_of`` = ``<dataset>/<split>/<image id>``) when

* its ``sha256`` equals an evaluation image's (exact bytes), or
* the exact variant distance of the pHash level (:func:`ccmb.corpus.primitives.phash.variant_distance`),
  against the image or its mirror image, is at most ``phash_threshold`` (default 6, chosen on
  ``perf/bench_neardup.py``: re-encoding, resizing, brightness, small crops and overlays, flips) AND the
  second image check agrees (:func:`ccmb.corpus.primitives.imagecheck.same_image`, mirror image included:
  aligned 32x32 thumbnails of both, the evaluation image's computed with the index, the corpus image's
  from the same decode as its pHash); ``image_check=False`` (``--no-image-check``) trusts the distance
  alone. The comparison is exhaustive (every corpus image against every evaluation hash, vectorised); the
  evaluation image a sample copies is the closest confirmed one.

Captions: normalised corpus captions whose exact character n-gram Jaccard with an evaluation text is at
least ``caption_threshold`` (MinHash LSH proposes candidates; texts shorter than ``min_caption_chars``
never match) are counted in the report; with ``drop_caption_matches`` they are dropped too.

On an engine: the folder is scanned once (keys checked unique); exact bytes and captions are matched per
batch, images per tar (rows shuffled by tar); only matches, undecodable images and counts come back to the
driver, which decides those rows and writes the report (one function for every engine); the decision rows
are the scan joined with the matched rows by key.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...datasets.registry import get_spec, load_dataset
from ...images import ImageDecodeError
from ...types import PathLike
from ..primitives import imagecheck, minhash
from ..primitives.columns import downloaded, primary_text, sha256_to_binary, text_columns
from ..primitives.phash import VARIANT_PAIRS, VARIANTS, gray32_variants, phash_with_mirror
from ..tables.dataflow import ROW_ID, Fn
from ..tables.folder import DownloadFolder
from ..tables.schema import DECISION_SCHEMA, REASON_NOT_DOWNLOADED, CurationError
from .dedup import check_unique_keys, decided_rows
from .levels import REASON_UNDECODABLE
logger = logging.getLogger(__name__)

REASON_EVAL_OVERLAP = "eval_overlap"
MAX_EXAMPLES = 10
CHUNK_ROWS = 512


@dataclass
class DecontaminationConfig:
    phash_threshold: int = 6
    caption_threshold: float = 0.8
    min_caption_chars: int = 8
    drop_caption_matches: bool = False
    image_check: bool = True
    text_field: str = "caption"
    minhash: minhash.MinHashParams = field(default_factory=minhash.MinHashParams)
    workers: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.phash_threshold < 64:
            raise ValueError("phash_threshold must be in [0, 63]")
        if not 0.0 < self.caption_threshold <= 1.0:
            raise ValueError("caption_threshold must be in (0, 1]")


# ------------------------------------------------------------------------------------------ the index

@dataclass
class EvalIndex:
    """Hashes and texts of the evaluation images: one row per image of every indexed set."""

    sets: List[str] = field(default_factory=list)            # "<dataset>/<split>"
    set_of: List[int] = field(default_factory=list)          # per image: index into sets
    image_ids: List[str] = field(default_factory=list)
    sha256: List[bytes] = field(default_factory=list)        # 32 bytes
    hashes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2 * VARIANTS), np.uint64))
    thumbs: np.ndarray = field(default_factory=lambda: np.zeros((0, imagecheck.THUMB_BYTES), np.uint8))
    texts: List[str] = field(default_factory=list)           # normalised evaluation texts
    text_image: List[int] = field(default_factory=list)      # per text: its (first) image row
    set_sizes: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def name_of(self, row: int) -> str:
        return f"{self.sets[self.set_of[row]]}/{self.image_ids[row]}"

    def add(self, set_name: str, image_ids: Sequence[str], hashes: np.ndarray,
            texts_per_image: Sequence[Sequence[str]], sha256: Sequence[bytes],
            thumbs: Optional[np.ndarray] = None) -> None:
        """Add one evaluation set: image ids, their hashes (n, 2 * VARIANTS), texts, SHA-256 digests, the
        thumbnails of the second image check (n, THUMB_BYTES)."""
        s = len(self.sets)
        self.sets.append(set_name)
        base = len(self.image_ids)
        self.image_ids.extend(image_ids)
        self.set_of.extend([s] * len(image_ids))
        self.sha256.extend(sha256)
        h = np.asarray(hashes, np.uint64).reshape(-1, 2 * VARIANTS)
        self.hashes = np.concatenate([self.hashes, h]) if len(self.hashes) else h
        if thumbs is None:
            raise ValueError(f"{set_name}: the index needs the images' thumbnails (the second image check)")
        t = np.asarray(thumbs, np.uint8).reshape(-1, imagecheck.THUMB_BYTES)
        if len(t) != len(h):
            raise ValueError(f"{set_name}: {len(t)} thumbnails for {len(h)} images")
        self.thumbs = np.concatenate([self.thumbs, t])
        n_texts = 0
        for i, texts in enumerate(texts_per_image):
            for t in texts:
                self.texts.append(t)
                self.text_image.append(base + i)
                n_texts += 1
        self.set_sizes[set_name] = {"images": len(image_ids), "texts": n_texts}


def index_image(data: bytes, source: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """What the index keeps of one evaluation image: its hash variants and its mirror image's
    (2 * VARIANTS,) and its thumbnails (THUMB_BYTES,) for the second image check."""
    return (phash_with_mirror(data, source=source),
            imagecheck.thumbnails(gray32_variants(data, source=source)[None])[0])


def default_split(name: str) -> str:
    return get_spec(name).default_split


def build_index(against: Sequence[str], root: PathLike, split: Optional[str] = None,
                progress: bool = False) -> EvalIndex:
    """Index the evaluation sets ``against`` (registry names; ``name:split`` picks a split per set)."""
    index = EvalIndex()
    for entry in against:
        name, _, own_split = entry.partition(":")
        sp = own_split or split or default_split(name)
        data = load_dataset(name, root, split=sp)
        set_name = f"{name}/{sp}"
        ids, hashes, texts, digests, thumbs = [], [], [], [], []
        rng = range(data.num_images)
        if progress:
            from tqdm import tqdm

            rng = tqdm(rng, desc=f"index {set_name}", unit="img")
        for i in rng:
            where = f"{set_name}: image {data.image_ids[i]}"
            try:
                b = data.image_bytes(i)
                h, t = index_image(b, where)
                hashes.append(h)
                thumbs.append(t)
            except (OSError, ImageDecodeError) as exc:
                raise CurationError(f"{where} ({data.image_path(i)}) does not decode: {exc}") from exc
            ids.append(data.image_ids[i])
            digests.append(hashlib.sha256(b).digest())
            texts.append(minhash.normalize_texts(list(data.image_texts(i))).to_pylist())
        index.add(set_name, ids, np.asarray(hashes, np.uint64), texts, digests,
                  np.asarray(thumbs, np.uint8).reshape(-1, imagecheck.THUMB_BYTES))
        logger.info("indexed %s: %d images, %d texts", set_name, len(ids), index.set_sizes[set_name]["texts"])
    return index


# ------------------------------------------------------------------------------------ image matching

#: (corpus variant, evaluation column) pairs compared: the pHash level's pairs against the image and
#: against its mirror image (evaluation columns VARIANTS.. are the mirror image's variants).
PAIRS = tuple(VARIANT_PAIRS) + tuple((i, j + VARIANTS) for i, j in VARIANT_PAIRS)


def _distances(corpus: np.ndarray, ev: np.ndarray):
    """(first row, distances of a chunk of corpus rows to every evaluation image), chunk by chunk: the
    smallest Hamming distance over :data:`PAIRS` (variants, the mirror image's too)."""
    for lo in range(0, len(corpus), CHUNK_ROWS):
        c = corpus[lo: lo + CHUNK_ROWS]
        best = np.full((len(c), len(ev)), 64, np.uint8)
        for ci, ej in PAIRS:
            np.minimum(best, np.bitwise_count(c[:, ci, None] ^ ev[None, :, ej]), out=best)
        yield lo, best


def match_hashes(corpus: np.ndarray, eval_hashes: np.ndarray, threshold: int) -> Tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]:
    """Exhaustive exact matching: for each corpus row (variants, shape (n, VARIANTS)) the closest evaluation
    image within ``threshold`` bits. Returns (corpus rows, evaluation rows, distances)."""
    corpus = corpus.view(np.uint64)
    ev = eval_hashes.view(np.uint64)
    rows_out, eval_out, dist_out = [], [], []
    if not len(ev) or not len(corpus):
        z = np.zeros(0, np.int64)
        return z, z, z
    for lo, best in _distances(corpus, ev):
        hit = best.min(axis=1) <= threshold
        if hit.any():
            r = np.flatnonzero(hit)
            j = best[r].argmin(axis=1)
            rows_out.append(r + lo)
            eval_out.append(j)
            dist_out.append(best[r, j].astype(np.int64))
    if not rows_out:
        z = np.zeros(0, np.int64)
        return z, z, z
    return (np.concatenate(rows_out).astype(np.int64), np.concatenate(eval_out).astype(np.int64),
            np.concatenate(dist_out))


def all_matches(corpus: np.ndarray, eval_hashes: np.ndarray, threshold: int) -> List[np.ndarray]:
    """Every evaluation row within ``threshold`` of each corpus row (for the report: one image can be in
    several evaluation sets); the same distance as :func:`match_hashes`."""
    corpus = np.asarray(corpus, np.int64).view(np.uint64).reshape(-1, VARIANTS)
    ev = eval_hashes.view(np.uint64)
    out = []
    for _, best in _distances(corpus, ev):
        out.extend(np.flatnonzero(row <= threshold) for row in best)
    return out


def pairs_within(corpus: np.ndarray, eval_hashes: np.ndarray, threshold: int
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (corpus row, evaluation row, distance) within ``threshold`` bits (the distance of
    :func:`match_hashes`), by corpus row then evaluation row."""
    corpus = np.asarray(corpus, np.int64).view(np.uint64).reshape(-1, VARIANTS)
    ev = eval_hashes.view(np.uint64)
    rows, evs, dist = [], [], []
    if len(ev) and len(corpus):
        for lo, best in _distances(corpus, ev):
            r, j = np.nonzero(best <= threshold)
            rows.append(r + lo)
            evs.append(j)
            dist.append(best[r, j])
    if not rows:
        z = np.zeros(0, np.int64)
        return z, z, z
    return (np.concatenate(rows).astype(np.int64), np.concatenate(evs).astype(np.int64),
            np.concatenate(dist).astype(np.int64))


def confirmed_matches(corpus: np.ndarray, eval_hashes: np.ndarray, threshold: int,
                      thumbs: Optional[np.ndarray] = None, eval_thumbs: Optional[np.ndarray] = None):
    """The image rule of decontamination over corpus hash variants (n, VARIANTS): every evaluation image
    within ``threshold`` (mirror variants included) that the second image check confirms (``thumbs`` of
    the corpus rows and ``eval_thumbs``; None: the distance alone). Returns (corpus rows matched, their
    closest confirmed evaluation row (lowest distance, then lowest row), its distance, every confirmed
    evaluation row per matched corpus row, the number of corpus rows whose candidates were all rejected)."""
    r, j, d = pairs_within(corpus, eval_hashes, threshold)
    candidates = np.unique(r)
    if thumbs is not None and len(r):
        ok = imagecheck.same_image(thumbs[r], eval_thumbs[j], mirror=True)
        r, j, d = r[ok], j[ok], d[ok]
    rows, first = np.unique(r, return_index=True)
    order = np.lexsort((j, d, r))  # per row: lowest distance, then lowest evaluation row
    best = order[np.searchsorted(r[order], rows)]
    hits = np.split(j, first[1:]) if len(r) else []
    return rows, j[best], d[best], [np.sort(h) for h in hits], int(len(candidates) - len(rows))


class TarMatcher:
    """Hash one tar's images and match them against the evaluation images (a picklable job: processes and
    Spark tasks run it; ``eval_thumbs`` None: no second check). Returns (keys matched, closest evaluation
    rows, distances, every confirmed evaluation row per match, {key: error}, images hashed, [(tar, key)
    requested but absent], samples whose pHash candidates the check rejected)."""

    def __init__(self, eval_hashes: np.ndarray, threshold: int, eval_thumbs: Optional[np.ndarray] = None) -> None:
        self.eval_hashes = eval_hashes
        self.threshold = threshold
        self.eval_thumbs = eval_thumbs

    def __call__(self, job: Tuple[str, List[str]]):
        path, keys = job
        out_keys, values, errors, thumbs = imagecheck.tar_hashes_thumbnails(path, set(keys))
        rows, ev, dist, hits, rejected = confirmed_matches(values, self.eval_hashes, self.threshold,
                                                           thumbs if self.eval_thumbs is not None else None,
                                                           self.eval_thumbs)
        lost = sorted(set(keys) - set(out_keys) - set(errors))
        return ([out_keys[r] for r in rows.tolist()], ev.tolist(), dist.tolist(), [h.tolist() for h in hits],
                errors, len(out_keys), [(path, k) for k in lost], rejected)


# ------------------------------------------------------------------------------------------- step functions

STATE = pa.schema([("key", pa.string()), ("shard", pa.string()), (ROW_ID, pa.int64()), ("reason", pa.string()),
                   ("sha", pa.binary()), ("text", pa.string())])
#: Image matches of a row: method (1 exact bytes, 2 pHash), the first evaluation row, its distance, and every
#: evaluation row the image copies (an image can be in several sets).
IMAGE_HITS = pa.schema([("key", pa.string()), ("method", pa.int8()), ("j", pa.int32()), ("distance", pa.int32()),
                        ("hits", pa.list_(pa.int32()))])
#: Per tar: matches (kind m), undecodable images (e: msg), keys absent from the tar (l: msg = tar), images
#: hashed (c: n), samples with pHash candidates the second image check all rejected (x: n).
TAR_ROWS = pa.schema([("kind", pa.string()), ("key", pa.string()), ("j", pa.int32()), ("distance", pa.int32()),
                      ("hits", pa.list_(pa.int32())), ("msg", pa.string()), ("n", pa.int64())])
TEXT_HITS = pa.schema([("key", pa.string()), ("t", pa.int32()), ("sim", pa.float64())])
DECIDED = pa.schema([("key", pa.string()), ("d_reason", pa.string()), ("d_dup", pa.string())])


def _prepare(config: DecontaminationConfig, t: pa.Table) -> pa.Table:
    ok = downloaded(t)
    texts = minhash.normalize_texts(primary_text(t, config.text_field))
    return pa.table({"key": t.column("key"), "shard": t.column("shard"), ROW_ID: t.column(ROW_ID),
                     "reason": pc.if_else(ok, pa.scalar(None, pa.string()), pa.scalar(REASON_NOT_DOWNLOADED)),
                     "sha": sha256_to_binary(t.column("sha256"), f"{t.column('shard')[0]}" if t.num_rows else "")
                     .cast(pa.binary()), "text": texts})


def _eligible(t: pa.Table) -> pa.Table:
    return t.filter(pc.and_(pc.is_null(t.column("reason")), pc.is_valid(t.column("key"))))


def _sha_hits(digests: Dict[bytes, List[int]], t: pa.Table) -> pa.Table:
    """Rows whose image bytes are an evaluation image's (every evaluation row with that digest)."""
    keys, js = [], []
    for k, h in zip(t.column("key").to_pylist(), t.column("sha").to_pylist()):
        rows = digests.get(h) if h is not None else None
        if rows:
            keys.append(k)
            js.append(rows)
    return pa.table({"key": pa.array(keys, pa.string()), "method": pa.array([1] * len(keys), pa.int8()),
                     "j": pa.array([r[0] for r in js], pa.int32()), "distance": pa.array([0] * len(keys), pa.int32()),
                     "hits": pa.array(js, pa.list_(pa.int32()))})


def _tar_rows(folder: str, hashes: np.ndarray, threshold: int, thumbs: Optional[np.ndarray], t: pa.Table
              ) -> pa.Table:
    """One partition of (key, shard) rows (every row of a tar is here): each tar's images hashed and matched
    exhaustively against the evaluation hashes, confirmed by the second image check (``thumbs``: the
    evaluation thumbnails; None: off)."""
    out = {n: [] for n in TAR_ROWS.names}

    def add(kind, key=None, j=None, distance=None, hits=None, msg=None, n=None):
        for name, v in zip(TAR_ROWS.names, (kind, key, j, distance, hits, msg, n)):
            out[name].append(v)

    shards = t.column("shard")
    matcher = TarMatcher(hashes, threshold, thumbs)
    for shard in pc.unique(shards).to_pylist():
        keys = t.filter(pc.equal(shards, shard)).column("key").to_pylist()
        tar = str(DownloadFolder.tar_of(folder, shard))
        got, ev, dist, every, errors, count, lost, rejected = matcher((tar, sorted(keys)))
        for k, j, d, h in zip(got, ev, dist, every):
            add("m", k, int(j), int(d), [int(x) for x in h])
        for k, msg in errors.items():
            add("e", k, msg=str(msg))
        for path, k in lost:
            add("l", k, msg=path)
        add("c", n=int(count))
        add("x", n=int(rejected))
    return pa.table(out, schema=TAR_ROWS)


def text_index(index: EvalIndex, config: DecontaminationConfig):
    """(evaluation text rows that can match, their texts, their band values): small, handed to every task."""
    params = config.minhash
    ev_rows = [i for i, t in enumerate(index.texts) if t and len(t) >= config.min_caption_chars]
    ev_texts = [index.texts[i] for i in ev_rows]
    bands = minhash.band_values(minhash.signatures(ev_texts, params)[0], params) if ev_texts else \
        np.zeros((0, params.bands), np.int64)
    return ev_rows, ev_texts, bands


def _text_hits(table, config: DecontaminationConfig, t: pa.Table) -> pa.Table:
    """Per corpus caption of the batch, the best evaluation text (highest exact Jaccard >= the threshold, then
    the lowest text row) among the evaluation texts sharing a MinHash band bucket with it."""
    params, min_len, threshold = config.minhash, config.min_caption_chars, config.caption_threshold
    ev_rows, ev_texts, ev_bands = table
    out_k, out_t, out_s = [], [], []
    texts = t.column("text").to_pylist()
    rows = [i for i, x in enumerate(texts) if x and len(x) >= min_len]
    if rows and ev_texts:
        buckets: List[Dict[int, List[int]]] = [dict() for _ in range(params.bands)]
        for e in range(len(ev_texts)):
            for j in range(params.bands):
                buckets[j].setdefault(int(ev_bands[e, j]), []).append(e)
        keys = t.column("key").to_pylist()
        c_texts = [texts[i] for i in rows]
        bands = minhash.band_values(minhash.signatures(c_texts, params)[0], params)
        known = [np.fromiter(b.keys(), np.int64, len(b)) for b in buckets]
        any_hit = np.zeros(len(rows), bool)
        for j in range(params.bands):
            any_hit |= np.isin(bands[:, j], known[j])
        ev_grams: Dict[int, frozenset] = {}
        for ci in np.flatnonzero(any_hit).tolist():
            cand = sorted({e for j in range(params.bands) for e in buckets[j].get(int(bands[ci, j]), ())})
            grams = minhash.ngrams(c_texts[ci], params.ngram)
            best, best_sim = -1, -1.0
            for e in cand:
                g = ev_grams.get(e)
                if g is None:
                    g = ev_grams[e] = minhash.ngrams(ev_texts[e], params.ngram)
                sim = minhash.jaccard_sets(grams, g)
                if sim >= threshold and sim > best_sim:
                    best, best_sim = e, sim
            if best >= 0:
                out_k.append(keys[rows[ci]])
                out_t.append(ev_rows[best])
                out_s.append(best_sim)
    return pa.table({"key": pa.array(out_k, pa.string()), "t": pa.array(out_t, pa.int32()),
                     "sim": pa.array(out_s, pa.float64())})


def match_texts(corpus_texts: Sequence[Optional[str]], index: EvalIndex, config: DecontaminationConfig
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In memory (perf, tests): the caption rule of :func:`_text_hits` over a list of normalised texts:
    (corpus rows with a match, their evaluation text rows, the Jaccard)."""
    t = pa.table({"key": pa.array([f"{i:020d}" for i in range(len(corpus_texts))], pa.string()),
                  "text": pa.array(list(corpus_texts), pa.string())})
    hits = _text_hits(text_index(index, config), config, t)
    rows = np.asarray([int(k) for k in hits.column("key").to_pylist()], np.int64)
    return rows, hits.column("t").to_numpy().astype(np.int64), hits.column("sim").to_numpy()


def _key_shard(t: pa.Table) -> pa.Table:
    return t.select(["key", "shard"])


def _base(t: pa.Table) -> pa.Table:
    return t.select(["key", "shard", "reason"])


# ------------------------------------------------------------------------------------------- the pipeline

@dataclass
class DecontaminationResult:
    table: pa.Table
    report: Dict[str, Any]


@dataclass
class Matches:
    """What comes back to the driver: the image and text matches, undecodable images, counts."""

    images: pa.Table   # IMAGE_HITS, one row per matched corpus sample (exact bytes first, then pHash)
    texts: pa.Table    # TEXT_HITS
    undecodable: List[str]
    hashed: int
    rejected: int = 0  # samples whose pHash candidates the second image check all rejected


def match(engine, folder: DownloadFolder, index: EvalIndex, config: DecontaminationConfig):
    """(the scan's rows partitioned by key, :class:`Matches`)."""
    cols = ["key", "status", "sha256"] + text_columns(config.text_field)
    scan = engine.read_folder(folder, cols, Fn(partial(_prepare, config), STATE))
    state = engine.cache(engine.shuffle(scan, ["key"], Fn(partial(check_unique_keys, str(folder.path)), STATE),
                                        desc="decontaminate: scan"))
    elig = engine.map(state, Fn(_eligible, STATE))
    digests: Dict[bytes, List[int]] = {}
    for i, h in enumerate(index.sha256):
        digests.setdefault(h, []).append(i)
    sha = engine.collect(engine.map(elig, Fn(partial(_sha_hits, digests), IMAGE_HITS)))
    tars = engine.shuffle(engine.map(elig, Fn(_key_shard, pa.schema([("key", pa.string()), ("shard", pa.string())]))),
                          ["shard"], Fn(partial(_tar_rows, str(folder.path), np.ascontiguousarray(index.hashes),
                                                config.phash_threshold,
                                                index.thumbs if config.image_check else None), TAR_ROWS),
                          desc="decontaminate: images", min_partitions=4 * config.workers if config.workers > 1 else 1)
    rows = engine.collect(tars)
    lost = rows.filter(pc.equal(rows.column("kind"), "l"))
    if lost.num_rows:
        first = lost.sort_by([("msg", "ascending"), ("key", "ascending")]).to_pylist()[0]
        raise CurationError(f"{first['msg']}: sample {first['key']} is in the parquet as downloaded but not in the "
                            f"tar ({lost.num_rows} such samples)")
    errors = rows.filter(pc.equal(rows.column("kind"), "e")).sort_by([("key", "ascending")])
    for msg in errors.column("msg").to_pylist()[:20]:
        logger.warning("decontaminate: %s", msg)
    hashed = int(pc.sum(rows.filter(pc.equal(rows.column("kind"), "c")).column("n")).as_py() or 0)
    rejected = int(pc.sum(rows.filter(pc.equal(rows.column("kind"), "x")).column("n")).as_py() or 0)
    ph = rows.filter(pc.equal(rows.column("kind"), "m"))
    ph = pa.table({"key": ph.column("key"), "method": pa.array(np.full(ph.num_rows, 2, np.int8)),
                   "j": ph.column("j"), "distance": ph.column("distance"), "hits": ph.column("hits")})
    images = _merge_image_hits(sha, ph)
    texts = engine.collect(engine.map(elig, Fn(partial(_text_hits, text_index(index, config), config), TEXT_HITS)))
    texts = texts.sort_by([("key", "ascending")]) if texts.num_rows else texts
    return state, Matches(images, texts, errors.column("key").to_pylist(), hashed, rejected)


def _merge_image_hits(sha: pa.Table, ph: pa.Table) -> pa.Table:
    """Per matched sample: exact bytes win over pHash for the method, row and distance; hits are all of both."""
    by: Dict[str, Dict[str, Any]] = {}
    for r in sha.to_pylist() + ph.to_pylist():
        cur = by.get(r["key"])
        if cur is None:
            by[r["key"]] = dict(r, hits=set(r["hits"]))
        else:
            cur["hits"].update(r["hits"])
    keys = sorted(by)
    return pa.table({"key": pa.array(keys, pa.string()),
                     "method": pa.array([by[k]["method"] for k in keys], pa.int8()),
                     "j": pa.array([by[k]["j"] for k in keys], pa.int32()),
                     "distance": pa.array([by[k]["distance"] for k in keys], pa.int32()),
                     "hits": pa.array([sorted(by[k]["hits"]) for k in keys], pa.list_(pa.int32()))})


def decide(index: EvalIndex, matches: Matches, config: DecontaminationConfig) -> pa.Table:
    """The rows the matches drop (key, reason, duplicate_of), in the rule's order: an image copy, else an
    undecodable image, else (with ``drop_caption_matches``) a copied caption."""
    decided: Dict[str, Tuple[str, Optional[str]]] = {}
    for k, j in zip(matches.images.column("key").to_pylist(), matches.images.column("j").to_pylist()):
        decided[k] = (REASON_EVAL_OVERLAP, index.name_of(int(j)))
    for k in matches.undecodable:
        decided.setdefault(k, (REASON_UNDECODABLE, None))
    if config.drop_caption_matches:
        for k, t in zip(matches.texts.column("key").to_pylist(), matches.texts.column("t").to_pylist()):
            decided.setdefault(k, (REASON_EVAL_OVERLAP, index.name_of(index.text_image[int(t)])))
    keys = sorted(decided)
    return pa.table({"key": pa.array(keys, pa.string()), "d_reason": pa.array([decided[k][0] for k in keys], pa.string()),
                     "d_dup": pa.array([decided[k][1] for k in keys], pa.string())}, schema=DECIDED)


def decontamination_dataset(engine, folder: DownloadFolder, index: EvalIndex, config: DecontaminationConfig):
    """(the decision rows on ``engine``, the report without its totals)."""
    state, matches = match(engine, folder, index, config)
    decisions = decide(index, matches, config)
    decided = engine.from_arrow(decisions)
    joined = engine.join(engine.map(state, Fn(_base, pa.schema([("key", pa.string()), ("shard", pa.string()),
                                                                 ("reason", pa.string())])), partitioned_by=("key",)),
                         decided, ["key"], "left", desc="decontaminate: table")
    report = make_report(index, matches, config)
    report.update({"corpus": str(folder.path), "rows": folder.rows(), "images_scanned": matches.hashed,
                   "undecodable": len(matches.undecodable), "dropped": decisions.num_rows,
                   "phash_candidates_rejected_by_image_check": matches.rejected})
    return engine.map(joined, Fn(decided_rows, DECISION_SCHEMA)), report


def make_report(index: EvalIndex, matches: Matches, config: DecontaminationConfig) -> Dict[str, Any]:
    """Per evaluation set: its images and texts with copies in the corpus (an image in several sets counts in
    each), the corpus samples copying them, by method, with examples (the lowest keys)."""
    names = {1: "sha256", 2: "phash"}
    per: Dict[str, Dict[str, Any]] = {}
    for set_name in index.sets:
        per[set_name] = {"images": index.set_sizes[set_name]["images"], "texts": index.set_sizes[set_name]["texts"],
                         "images_with_copies": 0, "texts_with_copies": 0, "corpus_samples_copying_images": 0,
                         "corpus_samples_copying_texts": 0, "by_method": {"sha256": 0, "phash": 0},
                         "examples": [], "text_examples": []}
    images_hit: Dict[str, set] = {s: set() for s in index.sets}
    for r in matches.images.to_pylist():  # in key order
        by_set: Dict[str, List[int]] = {}
        for j in sorted(r["hits"]):
            by_set.setdefault(index.sets[index.set_of[j]], []).append(j)
        for set_name, js in by_set.items():
            p = per[set_name]
            p["corpus_samples_copying_images"] += 1
            p["by_method"][names[int(r["method"])]] += 1
            images_hit[set_name].update(js)
            if len(p["examples"]) < MAX_EXAMPLES:
                p["examples"].append({"corpus_key": r["key"], "eval_image": index.image_ids[js[0]],
                                      "method": names[int(r["method"])], "distance": int(r["distance"])})
    texts_hit: Dict[str, set] = {s: set() for s in index.sets}
    for r in matches.texts.to_pylist():  # in key order
        j = int(r["t"])
        set_name = index.sets[index.set_of[index.text_image[j]]]
        p = per[set_name]
        p["corpus_samples_copying_texts"] += 1
        texts_hit[set_name].add(j)
        if len(p["text_examples"]) < MAX_EXAMPLES:
            p["text_examples"].append({"corpus_key": r["key"], "eval_text": index.texts[j],
                                       "eval_image": index.image_ids[index.text_image[j]],
                                       "jaccard": round(float(r["sim"]), 4)})
    for s in index.sets:
        per[s]["images_with_copies"] = len(images_hit[s])
        per[s]["texts_with_copies"] = len(texts_hit[s])
    return {"against": list(index.sets),
            "settings": {"phash_threshold": config.phash_threshold, "caption_threshold": config.caption_threshold,
                         "min_caption_chars": config.min_caption_chars, "ngram": config.minhash.ngram,
                         "drop_caption_matches": config.drop_caption_matches, "image_check": config.image_check,
                         "max_different_share": imagecheck.MAX_DIFFERENT_SHARE},
            "datasets": per}


def format_report(report: Dict[str, Any]) -> List[str]:
    lines = []
    for name, p in report["datasets"].items():
        lines.append(f"{name}: {p['images_with_copies']} of {p['images']} images have copies in the corpus "
                     f"({p['corpus_samples_copying_images']} corpus samples: sha256 {p['by_method']['sha256']}, "
                     f"phash {p['by_method']['phash']}); {p['texts_with_copies']} of {p['texts']} texts "
                     f"({p['corpus_samples_copying_texts']} corpus captions)")
        for ex in p["examples"][:3]:
            lines.append(f"  e.g. corpus {ex['corpus_key']} copies {name}/{ex['eval_image']} "
                         f"({ex['method']}, distance {ex['distance']})")
    return lines
