"""``ccmb decontaminate``: drop corpus samples that copy images of the downstream evaluation sets.

The evaluation sets come through the :mod:`ccmb.datasets` registry (any dataset, any split; default: the
split the benchmark evaluates). Index, per evaluation image: the SHA-256 of its bytes and pHash variants
of the image and of its mirror image (:mod:`ccmb.corpus.phash`: whole image, central 90% and 80%). Scan,
per corpus image (the tars are read once, never extracted): its pHash variants. A corpus sample is an
evaluation copy (reason ``eval_overlap``, ``duplicate_of`` = ``<dataset>/<split>/<image id>``) when

* its ``sha256`` equals an evaluation image's (exact bytes), or
* the exact variant distance of the pHash level (:func:`ccmb.corpus.phash.variant_distance`), against the
  image or its mirror image, is at most ``phash_threshold`` (default 6, chosen on ``perf/bench_neardup.py``:
  re-encoding, resizing, brightness, small crops and overlays, flips). The comparison is exhaustive
  (every corpus image against every evaluation hash, vectorised), so nothing is left to an index.

Captions: normalised corpus captions whose exact character n-gram Jaccard with an evaluation text is at
least ``caption_threshold`` (MinHash LSH proposes candidates; texts shorter than ``min_caption_chars``
never match) are counted in the report; with ``drop_caption_matches`` they are dropped too.

The decision table has the usual schema (:mod:`ccmb.corpus.table`); the report (JSON) gives per
evaluation set how many images and texts have copies in the corpus, with examples. ``engine="spark"``
(:mod:`ccmb.corpus.decontaminate_spark`) applies the same rule on the executors: tars hashed and matched,
captions normalised and matched, the decision table written as a partitioned table, nothing per row on
the driver.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import groups, minhash
from .combine import REASON_EVAL_OVERLAP
from .parallel import map_jobs
from .phash import VARIANT_PAIRS, VARIANTS, phash_tar, phash_with_mirror
from .table import (ENGINES, REASON_NOT_DOWNLOADED, CurationError, Decisions, ReasonCodes, Summary, as_numpy_bool,
                    check_unique_keys, load_metadata, sha256_to_binary, write_decisions)
from ..types import PathLike

logger = logging.getLogger(__name__)

REASON_UNDECODABLE = "undecodable_image"
MAX_EXAMPLES = 10
CHUNK_ROWS = 512


@dataclass
class DecontaminationConfig:
    phash_threshold: int = 6
    caption_threshold: float = 0.8
    min_caption_chars: int = 8
    drop_caption_matches: bool = False
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
    texts: List[str] = field(default_factory=list)           # normalised evaluation texts
    text_image: List[int] = field(default_factory=list)      # per text: its (first) image row
    set_sizes: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def name_of(self, row: int) -> str:
        return f"{self.sets[self.set_of[row]]}/{self.image_ids[row]}"

    def add(self, set_name: str, image_ids: Sequence[str], hashes: np.ndarray,
            texts_per_image: Sequence[Sequence[str]], sha256: Sequence[bytes]) -> None:
        """Add one evaluation set: image ids, their hashes (n, 2 * VARIANTS), texts, SHA-256 digests."""
        s = len(self.sets)
        self.sets.append(set_name)
        base = len(self.image_ids)
        self.image_ids.extend(image_ids)
        self.set_of.extend([s] * len(image_ids))
        self.sha256.extend(sha256)
        h = np.asarray(hashes, np.uint64).reshape(-1, 2 * VARIANTS)
        self.hashes = np.concatenate([self.hashes, h]) if len(self.hashes) else h
        n_texts = 0
        for i, texts in enumerate(texts_per_image):
            for t in texts:
                self.texts.append(t)
                self.text_image.append(base + i)
                n_texts += 1
        self.set_sizes[set_name] = {"images": len(image_ids), "texts": n_texts}


def default_split(name: str) -> str:
    from ..datasets.registry import get_spec

    return get_spec(name).default_split


def build_index(against: Sequence[str], root: PathLike, split: Optional[str] = None,
                progress: bool = False) -> EvalIndex:
    """Index the evaluation sets ``against`` (registry names; ``name:split`` picks a split per set)."""
    from ..datasets.registry import load_dataset
    from ..images import ImageDecodeError

    index = EvalIndex()
    for entry in against:
        name, _, own_split = entry.partition(":")
        sp = own_split or split or default_split(name)
        data = load_dataset(name, root, split=sp)
        set_name = f"{name}/{sp}"
        ids, hashes, texts, digests = [], [], [], []
        rng = range(data.num_images)
        if progress:
            from tqdm import tqdm

            rng = tqdm(rng, desc=f"index {set_name}", unit="img")
        for i in rng:
            where = f"{set_name}: image {data.image_ids[i]}"
            try:
                b = data.image_bytes(i)
                hashes.append(phash_with_mirror(b, source=where))
            except (OSError, ImageDecodeError) as exc:
                raise CurationError(f"{where} ({data.image_path(i)}) does not decode: {exc}") from exc
            ids.append(data.image_ids[i])
            digests.append(hashlib.sha256(b).digest())
            texts.append(minhash.normalize_texts(list(data.image_texts(i))).to_pylist())
        index.add(set_name, ids, np.asarray(hashes, np.uint64), texts, digests)
        logger.info("indexed %s: %d images, %d texts", set_name, len(ids), index.set_sizes[set_name]["texts"])
    return index


# ------------------------------------------------------------------------------------ image matching

#: (corpus variant, evaluation column) pairs compared: the pHash level's pairs against the image and
#: against its mirror image (evaluation columns VARIANTS.. are the mirror image's variants).
PAIRS = tuple(VARIANT_PAIRS) + tuple((i, j + VARIANTS) for i, j in VARIANT_PAIRS)


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
    for lo in range(0, len(corpus), CHUNK_ROWS):
        c = corpus[lo: lo + CHUNK_ROWS]
        best = np.full((len(c), len(ev)), 64, np.uint8)
        for ci, ej in PAIRS:
            np.minimum(best, np.bitwise_count(c[:, ci, None] ^ ev[None, :, ej]), out=best)
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
    for lo in range(0, len(corpus), CHUNK_ROWS):
        c = corpus[lo: lo + CHUNK_ROWS]
        best = np.full((len(c), len(ev)), 64, np.uint8)
        for ci, ej in PAIRS:
            np.minimum(best, np.bitwise_count(c[:, ci, None] ^ ev[None, :, ej]), out=best)
        out.extend(np.flatnonzero(row <= threshold) for row in best)
    return out


class TarMatcher:
    """Hash one tar's images and match them against the evaluation hashes (a picklable job: processes and
    Spark tasks run it). Returns (keys matched, evaluation rows, distances, {key: error}, images hashed,
    [(tar, key) requested but absent], hash variants of the matched images)."""

    def __init__(self, eval_hashes: np.ndarray, threshold: int) -> None:
        self.eval_hashes = eval_hashes
        self.threshold = threshold

    def __call__(self, job: Tuple[str, List[str]]):
        path, keys = job
        out_keys, values, errors = phash_tar(path, set(keys))
        rows, ev, dist = match_hashes(values, self.eval_hashes, self.threshold)
        lost = sorted(set(keys) - set(out_keys) - set(errors))
        return ([out_keys[r] for r in rows.tolist()], ev.tolist(), dist.tolist(), errors, len(out_keys),
                [(path, k) for k in lost], values[rows].tolist())


# ----------------------------------------------------------------------------------- text matching

def match_texts(corpus_texts: List[Optional[str]], index: EvalIndex, config: DecontaminationConfig
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corpus texts with exact n-gram Jaccard >= threshold to an evaluation text (MinHash LSH candidates).
    Returns (corpus rows, evaluation text rows, similarity)."""
    z = np.zeros(0, np.int64)
    min_len = config.min_caption_chars
    ev_rows = [i for i, t in enumerate(index.texts) if t and len(t) >= min_len]
    c_rows = [i for i, t in enumerate(corpus_texts) if t and len(t) >= min_len]
    if not ev_rows or not c_rows:
        return z, z, np.zeros(0)
    params = config.minhash
    ev_texts = [index.texts[i] for i in ev_rows]
    c_texts = [corpus_texts[i] for i in c_rows]
    ev_bands = minhash.band_values(minhash.signatures(ev_texts, params)[0], params)
    c_bands = minhash.band_values(minhash.signatures(c_texts, params)[0], params)
    m = len(ev_texts)
    ca, ea = [], []
    for j in range(params.bands):  # candidates: corpus and evaluation items sharing a band bucket
        col = np.concatenate([ev_bands[:, j], c_bands[:, j]])
        for a, b in groups.band_pairs(col):
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            cross = (lo < m) & (hi >= m)
            ca.append(hi[cross] - m)
            ea.append(lo[cross])
    if not ca:
        return z, z, np.zeros(0)
    packed = np.unique(np.concatenate(ca).astype(np.int64) * m + np.concatenate(ea))
    ci, ei = packed // m, packed % m
    texts = c_texts + ev_texts
    sim = minhash.jaccard(texts, ci, ei + len(c_texts), params.ngram)
    ok = sim >= config.caption_threshold
    ci, ei, sim = ci[ok], ei[ok], sim[ok]
    # per corpus text the best evaluation text
    order = np.lexsort((-sim, ci))
    ci, ei, sim = ci[order], ei[order], sim[order]
    first = np.concatenate([[True], ci[1:] != ci[:-1]]) if len(ci) else np.zeros(0, bool)
    ci, ei, sim = ci[first], ei[first], sim[first]
    return (np.asarray(c_rows, np.int64)[ci], np.asarray(ev_rows, np.int64)[ei], sim)


# -------------------------------------------------------------------------------------- the command

@dataclass
class DecontaminationResult:
    table: pa.Table
    report: Dict[str, Any]


def decontamination_table(input_dir: PathLike, index: EvalIndex, config: DecontaminationConfig,
                          engine: str = "local", spark=None) -> DecontaminationResult:
    """The decision table (and report) of decontaminating ``input_dir`` against ``index``."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "spark":  # the same rule on the executors; the table brought back here
        from .decontaminate_spark import spark_decontamination_table
        from .engine_spark import _session

        return spark_decontamination_table(input_dir, index, config, _session(spark))
    start = time.time()
    input_dir = Path(input_dir)
    cols = ["key", "status", "sha256", "caption", "title", "content", "query"]
    meta = load_metadata(input_dir, cols)
    check_unique_keys(meta.column("key"), str(input_dir))
    n = meta.num_rows
    reasons = ReasonCodes(n)
    ok = as_numpy_bool(pc.equal(pc.fill_null(meta.column("status"), ""), "success"))
    reasons.fill(~ok, REASON_NOT_DOWNLOADED)
    eligible = ok & meta.column("key").is_valid().to_numpy(zero_copy_only=False)
    dup_of: List[Optional[str]] = [None] * n
    method = np.zeros(n, np.int8)  # image matches: 1 sha256, 2 phash
    distance = np.full(n, -1, np.int64)
    eval_row = np.full(n, -1, np.int64)

    # 1. exact bytes
    sha = sha256_to_binary(meta.column("sha256"), str(input_dir))
    eval_sha: Dict[bytes, List[int]] = {}
    for i, h in enumerate(index.sha256):
        eval_sha.setdefault(h, []).append(i)
    hits: Dict[int, set] = {}  # corpus row -> every evaluation row it copies (for the report)
    if eval_sha:
        sha_list = sha.to_pylist()
        for r in np.flatnonzero(eligible).tolist():
            js = eval_sha.get(sha_list[r])
            if js is not None:
                method[r], distance[r], eval_row[r] = 1, 0, js[0]
                hits.setdefault(r, set()).update(js)

    # 2. perceptual hashes of every downloaded image, matched in the same pass
    rows = np.flatnonzero(eligible)
    by_tar: Dict[str, List[str]] = {}
    for k, s in zip(meta.column("key").take(pa.array(rows)).to_pylist(),
                    meta.column("shard").take(pa.array(rows)).to_pylist()):
        by_tar.setdefault(s, []).append(k)
    jobs = [(str(input_dir / s), sorted(keys)) for s, keys in sorted(by_tar.items())]
    matcher = TarMatcher(index.hashes, config.phash_threshold)
    hashed = 0
    bad: List[str] = []
    missing: List[Tuple[str, str]] = []
    for keys, ev, dist, errors, count, lost, matched in map_jobs(matcher, jobs, workers=config.workers,
                                                                 progress=config.progress, desc="decontaminate"):
        hashed += count
        missing.extend(lost)
        bad.extend(errors)
        for msg in errors.values():
            logger.warning("decontaminate: %s", msg)
        if keys:
            r = pc.index_in(pa.array(keys, pa.string()), value_set=meta.column("key")).to_numpy(
                zero_copy_only=False).astype(np.int64)
            for ri, j, d, js in zip(r.tolist(), ev, dist, all_matches(np.asarray(matched), index.hashes,
                                                                        config.phash_threshold)):
                if method[ri] == 0:
                    method[ri], distance[ri], eval_row[ri] = 2, d, j
                hits.setdefault(ri, set()).update(js.tolist())
    if missing:
        tar, key = missing[0]
        raise CurationError(f"{tar}: sample {key} is in the parquet as downloaded but not in the tar "
                            f"({len(missing)} such samples)")
    bad_rows = pc.index_in(pa.array(bad, pa.string()), value_set=meta.column("key")).to_numpy(
        zero_copy_only=False).astype(np.int64) if bad else np.zeros(0, np.int64)

    # 3. captions
    texts = minhash.normalize_texts(_texts(meta, config.text_field)).to_pylist()
    texts = [t if eligible[i] else None for i, t in enumerate(texts)]
    t_rows, t_eval, t_sim = match_texts(texts, index, config)

    image_hit = np.flatnonzero(method > 0)
    for r in image_hit.tolist():
        dup_of[r] = index.name_of(int(eval_row[r]))
    reasons.set(image_hit, REASON_EVAL_OVERLAP)
    reasons.fill(bad_rows, REASON_UNDECODABLE)
    if config.drop_caption_matches and len(t_rows):
        new = t_rows[reasons.kept[t_rows]]
        for r, j in zip(t_rows.tolist(), t_eval.tolist()):
            if dup_of[r] is None and reasons.kept[r]:
                dup_of[r] = index.name_of(index.text_image[j])
        reasons.set(new, REASON_EVAL_OVERLAP)
    keys = meta.column("key")
    table = Decisions(keys, meta.column("shard"), reasons.array(), pa.array(dup_of, pa.string())).table()
    report = make_report(index, meta, method, distance, hits, t_rows, t_eval, t_sim, config)
    report.update({"corpus": str(input_dir), "rows": n, "images_scanned": hashed, "undecodable": len(bad),
                   "dropped": int((~reasons.kept).sum() - (~ok).sum())})  # no timings: the table is reproducible
    logger.info("decontaminate: %d rows scanned in %.1fs", n, time.time() - start)
    return DecontaminationResult(table, report)


def _texts(meta: pa.Table, text_field: str):
    text = meta.column(text_field)
    if text_field == "caption":
        text = pc.coalesce(text, meta.column("title"))
    return text


def make_report(index: EvalIndex, meta: pa.Table, method, distance, hits: Dict[int, set], t_rows, t_eval, t_sim,
                config: DecontaminationConfig) -> Dict[str, Any]:
    """Per evaluation set: its images and texts with copies in the corpus (an image in several sets counts in
    each), the corpus samples copying them, by method, with examples."""
    names = {1: "sha256", 2: "phash"}
    keys = meta.column("key")
    per: Dict[str, Dict[str, Any]] = {}
    for s, set_name in enumerate(index.sets):
        per[set_name] = {"images": index.set_sizes[set_name]["images"], "texts": index.set_sizes[set_name]["texts"],
                         "images_with_copies": 0, "texts_with_copies": 0, "corpus_samples_copying_images": 0,
                         "corpus_samples_copying_texts": 0, "by_method": {"sha256": 0, "phash": 0},
                         "examples": [], "text_examples": []}
    images_hit: Dict[str, set] = {s: set() for s in index.sets}
    for r in np.flatnonzero(method > 0).tolist():
        by_set: Dict[str, List[int]] = {}
        for j in sorted(hits.get(r, ())):
            by_set.setdefault(index.sets[index.set_of[j]], []).append(j)
        for set_name, js in by_set.items():
            p = per[set_name]
            p["corpus_samples_copying_images"] += 1
            p["by_method"][names[int(method[r])]] += 1
            images_hit[set_name].update(js)
            if len(p["examples"]) < MAX_EXAMPLES:
                p["examples"].append({"corpus_key": keys[r].as_py(), "eval_image": index.image_ids[js[0]],
                                      "method": names[int(method[r])], "distance": int(distance[r])})
    texts_hit: Dict[str, set] = {s: set() for s in index.sets}
    for r, j, sim in zip(np.asarray(t_rows).tolist(), np.asarray(t_eval).tolist(), np.asarray(t_sim).tolist()):
        set_name = index.sets[index.set_of[index.text_image[j]]]
        p = per[set_name]
        p["corpus_samples_copying_texts"] += 1
        texts_hit[set_name].add(j)
        if len(p["text_examples"]) < MAX_EXAMPLES:
            p["text_examples"].append({"corpus_key": keys[r].as_py(), "eval_text": index.texts[j],
                                       "eval_image": index.image_ids[index.text_image[j]],
                                       "jaccard": round(float(sim), 4)})
    for s in index.sets:
        per[s]["images_with_copies"] = len(images_hit[s])
        per[s]["texts_with_copies"] = len(texts_hit[s])
    return {"against": list(index.sets),
            "settings": {"phash_threshold": config.phash_threshold, "caption_threshold": config.caption_threshold,
                         "min_caption_chars": config.min_caption_chars, "ngram": config.minhash.ngram,
                         "drop_caption_matches": config.drop_caption_matches},
            "datasets": per}


def decontaminate(input_dir: PathLike, against: Sequence[str], root: PathLike, output: PathLike, *,
                  split: Optional[str] = None, report_path: Optional[PathLike] = None,
                  config: Optional[DecontaminationConfig] = None, engine: str = "local", spark=None
                  ) -> Tuple[Summary, Dict[str, Any]]:
    """Index ``against`` under ``root``, scan ``input_dir``, write the decision table (and the report)."""
    from .. import atomic

    start = time.time()
    config = config or DecontaminationConfig()
    if not against:
        raise CurationError("decontaminate: name at least one evaluation set (--against)")
    index = build_index(against, root, split=split, progress=config.progress)
    if engine == "spark":  # on the executors: a partitioned table, nothing per row on the driver
        from .decontaminate_spark import spark_decontaminate_to
        from .engine_spark import _session

        summary, report = spark_decontaminate_to(input_dir, index, config, output, _session(spark))
        if report_path:
            atomic.write_json(report_path, report)
        logger.info("decontaminate: %s", "; ".join(summary.lines()))
        return summary, report
    res = decontamination_table(input_dir, index, config, engine=engine, spark=spark)
    info = json.dumps({"against": res.report["against"], "report": res.report}, ensure_ascii=False)
    write_decisions(output, res.table, kind="decontaminate", info=info, source=input_dir)
    if report_path:
        atomic.write_json(report_path, res.report)
    summary = Summary.of(res.table, output, time.time() - start)
    logger.info("decontaminate: %s", "; ".join(summary.lines()))
    return summary, res.report


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

