"""Near-duplicate benchmark on real photographs: precision and recall of each image dedup level and of
decontamination, next to ``imagehash``'s pHash (the baseline), and decontamination speed on one core.

Data: the photographs scikit-image ships (``skimage.data``; ``pip install scikit-image imagehash`` - perf
only, not a dependency of ccmb). Each photo is cut into non-overlapping crops (a 2x2 or 3x3 grid): crops of
different regions are DISTINCT images (near-uniform crops, grey std < 8, are left out: they are blank, not
photos). Every crop gets these COPIES: JPEG quality 30, resize to 50%, 5% border crop (each side), +20% and
-20% brightness, a small text overlay, a horizontal flip.

Printed:
1. image dedup levels over all images (originals + copies): per transform the recall of (original, copy)
   pairs, the precision of all reported pairs, and the number of distinct-image pairs merged;
   ours: ``sha256`` and ``phash`` (whole + 90%/80% centre variants, exact Hamming check) at several thresholds;
   baseline: ``imagehash.phash`` (64 bits) at the same thresholds; the alternative considered, a PDQ-like
   256-bit DCT hash, at 4x the thresholds.
2. decontamination: half the originals are the "evaluation set"; the corpus holds every copy of them and
   every other image; recall of evaluation copies found, false corpus drops; ours (``match_hashes``, mirror
   variants) vs imagehash pHash of the whole image.
3. the caption level: distinct captions (templates with numbers, like the issue's ``一只小猫坐在窗台上第48号``
   / ``第42号``) and copies (punctuation, a repost prefix, a suffix, spaces and case); recall of copies and
   the number of distinct captions dropped, ours (exact Jaccard, star groups) next to the old behaviour
   (MinHash estimate trusted, transitive groups).
4. speed, one core: pHash of JPEGs from a tar (images/s), the exhaustive hash matching (corpus rows/s
   against a 5k-image evaluation index) and caption matching; extrapolated to a 1M-row corpus.

    python perf/bench_neardup.py [--thresholds 4,6,8,10] [--speed-images 2000] [--skip-speed]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance, ImageOps  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccmb.corpus.steps.decontaminate import match_hashes  # noqa: E402
from ccmb.corpus.primitives.phash import VARIANT_PAIRS  # noqa: E402
from ccmb.corpus.primitives.phash import VARIANTS, hamming, phash_variants_bytes, phash_with_mirror, variant_distance  # noqa: E402,E501

# photographs bundled with scikit-image (no download); "cat" is chelsea again, logo/colorwheel/horse are drawings
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
          "retina", "moon", "brick", "grass", "gravel", "coins", "page", "text", "clock"]


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def overlay(img: Image.Image) -> Image.Image:
    img = img.copy()
    d = ImageDraw.Draw(img)
    d.text((int(img.width * 0.04), int(img.height * 0.9)), "© ccmb 2024", fill=(255, 255, 255))
    return img


def border_crop(img: Image.Image, share: float = 0.05) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * share), int(h * share)
    return img.crop((dx, dy, w - dx, h - dy))


TRANSFORMS: Dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg30": lambda im: Image.open(io.BytesIO(jpeg(im, 30))).convert("RGB"),
    "resize50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "crop5": border_crop,
    "bright+20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "bright-20": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "overlay": overlay,
    "flip": ImageOps.mirror,
}
CROPS: List[Tuple[str, Image.Image]] = []
GOAL = ("jpeg30", "resize50", "crop5", "bright+20", "bright-20", "overlay")


def load_photos() -> List[Tuple[str, Image.Image]]:
    import skimage.data as data

    out = []
    for name in PHOTOS:
        try:
            arr = getattr(data, name)()
        except Exception as exc:  # a photo that needs a download is skipped
            print(f"(skipping {name}: {exc})")
            continue
        if arr.dtype != np.uint8:
            arr = (arr * 255).clip(0, 255).astype(np.uint8) if arr.max() <= 1 else arr.astype(np.uint8)
        out.append((name, Image.fromarray(arr).convert("RGB")))
    return out


def distinct_crops(photos) -> List[Tuple[str, Image.Image]]:
    out = []
    for name, im in photos:
        w, h = im.size
        g = 3 if min(w, h) >= 600 else 2
        for i in range(g):
            for j in range(g):
                box = (w * j // g, h * i // g, w * (j + 1) // g, h * (i + 1) // g)
                crop = im.crop(box)
                if np.asarray(crop.convert("L"), np.float32).std() < 8:
                    continue
                out.append((f"{name}/{i}{j}", crop))
    return out


def build_set():
    crops = distinct_crops(load_photos())
    images: List[bytes] = []
    group: List[int] = []
    kind: List[str] = []
    for gi, (_, im) in enumerate(crops):
        images.append(jpeg(im))
        group.append(gi)
        kind.append("original")
        for tname, fn in TRANSFORMS.items():
            images.append(jpeg(fn(im), 95) if tname != "jpeg30" else jpeg(im, 30))
            group.append(gi)
            kind.append(tname)
    return crops, images, np.asarray(group), np.asarray(kind)


def imagehash_phash(images: List[bytes]) -> np.ndarray:
    import imagehash

    out = np.zeros(len(images), np.uint64)
    for i, b in enumerate(images):
        h = imagehash.phash(Image.open(io.BytesIO(b)))
        out[i] = np.uint64(int(str(h), 16))
    return out


def dct256(images: List[bytes]) -> np.ndarray:
    """The alternative measured: a PDQ-like 256-bit hash (64x64 gray, 16x16 low DCT block above its
    median, as 4 uint64 words)."""
    import scipy.fft

    out = np.zeros((len(images), 4), np.uint64)
    for i, b in enumerate(images):
        g = np.asarray(Image.open(io.BytesIO(b)).convert("L").resize((64, 64), Image.Resampling.BOX), np.float64)
        c = scipy.fft.dctn(g, type=2)[:16, :16].ravel()
        out[i] = np.packbits(c > np.median(c)).view(">u8").astype(np.uint64)
    return out


def pair_matrix(dist_fn, n: int) -> np.ndarray:
    d = np.zeros((n, n), np.int64)
    for i in range(n):
        d[i] = dist_fn(i)
    return d


def evaluate_pairs(dist: np.ndarray, group, kind, threshold: int):
    n = len(group)
    iu = np.triu_indices(n, 1)
    same = group[iu[0]] == group[iu[1]]
    hit = dist[iu] <= threshold
    tp = int((hit & same).sum())
    fp = int((hit & ~same).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recalls = {}
    orig = np.flatnonzero(kind == "original")
    for t in TRANSFORMS:
        copies = np.flatnonzero(kind == t)
        recalls[t] = float(np.mean([dist[o, c] <= threshold for o, c in zip(orig, copies)]))
    return precision, recalls, fp


def print_table(rows, header):
    print(header)
    for r in rows:
        print(r)


def bench_levels(images, group, kind, thresholds):
    import hashlib

    n = len(images)
    print(f"\n1. image dedup levels: {int((kind == 'original').sum())} distinct images x (1 + {len(TRANSFORMS)} "
          f"copies) = {n} images, {n * (n - 1) // 2:,} pairs")
    ours = phash_variants_bytes(images)
    base = imagehash_phash(images)
    sha = np.array([hashlib.sha256(b).digest() for b in images], object)
    d_ours = pair_matrix(lambda i: variant_distance(np.repeat(ours[i:i + 1], n, 0), ours), n)
    d_base = pair_matrix(lambda i: hamming(np.full(n, base[i]), base), n)
    d_sha = pair_matrix(lambda i: np.where(sha == sha[i], 0, 64), n)
    h256 = dct256(images)
    d_256 = pair_matrix(lambda i: np.bitwise_count(h256[i][None, :] ^ h256).sum(axis=1).astype(np.int64), n)
    cols = list(TRANSFORMS)
    head = f"{'method':34}{'thr':>4}{'prec':>7}{'merged':>8}" + "".join(f"{c:>10}" for c in cols) + f"{'goal ok':>9}"
    print(head)
    results = {}
    for label, dist, thrs in (("ours sha256 (exact bytes)", d_sha, [0]),
                              ("ours phash (variants, exact check)", d_ours, thresholds),
                              ("baseline imagehash.phash", d_base, thresholds),
                              ("alternative 256-bit DCT (PDQ-like)", d_256, [4 * t for t in thresholds])):
        for t in thrs:
            p, rec, fp = evaluate_pairs(dist, group, kind, t)
            ok = all(rec[g] >= 0.95 for g in GOAL) and fp == 0
            results[(label, t)] = (p, rec, fp)
            print(f"{label:34}{t:>4}{p:>7.3f}{fp:>8}" + "".join(f"{rec[c]:>10.3f}" for c in cols)
                  + f"{'yes' if ok else 'no':>9}")
    names = [c[0] for c in CROPS]
    for label, dist in (("ours phash", d_ours), ("baseline", d_base)):
        t = min(thresholds)
        iu = np.triu_indices(n, 1)
        bad = (dist[iu] <= t) & (group[iu[0]] != group[iu[1]])
        pairs = sorted({f"{names[group[a]]}({kind[a]})~{names[group[b]]}({kind[b]})"
                        for a, b in zip(iu[0][bad], iu[1][bad])})
        if pairs:
            print(f"  {label} at {t}: merged distinct pairs: {', '.join(pairs[:8])}"
                  + (f" (+{len(pairs) - 8})" if len(pairs) > 8 else ""))
    return results


def bench_decontamination(images, group, kind, thresholds):
    orig = np.flatnonzero(kind == "original")
    eval_groups = set(group[orig][::2].tolist())  # every other distinct image is an evaluation image
    eval_rows = np.array([i for i in orig if group[i] in eval_groups])
    corpus_rows = np.array([i for i in range(len(images)) if not (kind[i] == "original" and group[i] in eval_groups)])
    positives = np.array([group[i] in eval_groups for i in corpus_rows])
    print(f"\n2. decontamination: {len(eval_rows)} evaluation images; corpus of {len(corpus_rows)} images "
          f"({int(positives.sum())} copies of evaluation images, {int((~positives).sum())} others)")
    ev = np.stack([phash_with_mirror(images[i]) for i in eval_rows])
    cv = phash_variants_bytes([images[i] for i in corpus_rows])
    base = imagehash_phash(images)
    cols = list(TRANSFORMS)
    print(f"{'method':34}{'thr':>4}{'prec':>7}{'false':>7}" + "".join(f"{c:>10}" for c in cols))
    out = {}
    for label in ("ours (variants + mirror)", "baseline imagehash.phash"):
        for t in thresholds:
            if label.startswith("ours"):
                rows, ei, _ = match_hashes(cv, ev, t)
                hit_eval = np.full(len(corpus_rows), -1)
                hit_eval[rows] = ei
            else:
                d = np.stack([hamming(np.full(len(eval_rows), base[c]), base[eval_rows]) for c in corpus_rows])
                hit_eval = np.where(d.min(axis=1) <= t, d.argmin(axis=1), -1)
            hit = hit_eval >= 0
            correct = hit & positives & (group[eval_rows][np.maximum(hit_eval, 0)] == group[corpus_rows])
            false = int((hit & ~correct).sum())
            prec = correct.sum() / hit.sum() if hit.sum() else 1.0
            rec = {}
            for c in cols:
                sel = positives & (kind[corpus_rows] == c)
                rec[c] = float(correct[sel].mean())
            out[(label, t)] = (prec, rec, false)
            print(f"{label:34}{t:>4}{prec:>7.3f}{false:>7}" + "".join(f"{rec[c]:>10.3f}" for c in cols))
    return out


SUBJECTS = ["一只小猫坐在窗台上", "古老的寺庙和石阶", "城市夜景里的高楼", "海边日落时的渔船", "雪山下的湖泊",
            "秋天的银杏树叶", "厨房里的巧克力蛋糕", "街头骑车的年轻人", "草原上奔跑的骏马", "雨中撑伞的行人",
            "桌上的一杯咖啡", "花园里盛开的玫瑰"]
CAPTION_COPIES = {
    "punct": lambda t: t + "！",
    "prefix": lambda t: "转：" + t,
    "suffix": lambda t: t + "高清",
    "spaces": lambda t: " ".join(t[i:i + 4] for i in range(0, len(t), 4)).upper(),
}


def bench_captions(thresholds):
    from ccmb.corpus.api import caption_reps
    from ccmb.corpus.primitives import groups, minhash

    rng = np.random.default_rng(0)
    bases = [f"{s}第{k}号" for s in SUBJECTS for k in range(1, 61)]
    texts, base_of, kind = [], [], []
    for b, t in enumerate(bases):
        texts.append(t)
        base_of.append(b)
        kind.append("original")
    for b in rng.choice(len(bases), 150, replace=False).tolist():
        for name, fn in CAPTION_COPIES.items():
            texts.append(fn(bases[b]))
            base_of.append(b)
            kind.append(name)
    base_of, kind = np.asarray(base_of), np.asarray(kind)
    norm = minhash.normalize_texts(texts).to_pylist()
    n = len(norm)
    print(f"\n3. caption level: {len(bases)} distinct captions + {n - len(bases)} copies")
    print(f"{'method':44}{'thr':>5}{'distinct dropped':>18}" + "".join(f"{c:>9}" for c in CAPTION_COPIES))
    params = minhash.MinHashParams()
    for label in ("ours: exact Jaccard, star groups", "old: MinHash estimate, transitive groups"):
        for t in thresholds:
            if label.startswith("ours"):
                reps = caption_reps(norm, np.arange(n), n, params, t)
            else:
                sig, _ = minhash.signatures(norm, params)
                uniq, node = groups.unique_nodes(sig, np.arange(n), n)
                edges = groups.candidate_edges(minhash.band_values(uniq, params),
                                               lambda a, b: minhash.similarity(uniq, a, b) >= t)
                reps = groups.component_reps(node, len(uniq), edges)
            dropped = reps != np.arange(n)
            wrong = dropped & (base_of[reps] != base_of)
            distinct_dropped = int((wrong & (kind == "original")).sum())
            rec = {c: float((dropped[kind == c] & ~wrong[kind == c]).mean()) for c in CAPTION_COPIES}
            print(f"{label:44}{t:>5.2f}{distinct_dropped:>18}" + "".join(f"{rec[c]:>9.3f}" for c in CAPTION_COPIES))


def bench_speed(n_images: int, repeats: int):
    from ccmb import shards
    from ccmb.corpus.primitives import minhash
    from ccmb.corpus.primitives.phash import phash_tar
    from ccmb.corpus.steps.decontaminate import DecontaminationConfig, EvalIndex, match_texts

    print(f"\n4. speed, one core (medians of {repeats})")
    rng = np.random.default_rng(0)
    photos = distinct_crops(load_photos())
    with tempfile.TemporaryDirectory() as tmp:
        with shards.ShardWriter(Path(tmp), 0) as w:
            for i in range(n_images):
                _, im = photos[i % len(photos)]
                x, y = rng.integers(0, 40, 2)
                img = im.crop((x, y, x + min(im.width - 40, 384), y + min(im.height - 40, 384))).resize((256, 256))
                key = shards.make_key(0, i, n_images)
                w.write(key, jpeg(img, 90), f"caption {i}", {"key": key})
        tar = Path(tmp) / "00000.tar"
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            phash_tar(tar)
            times.append(time.process_time() - t0)
    hash_rate = n_images / statistics.median(times)
    m = 5000
    ev = rng.integers(0, 2**63, size=(m, 2 * VARIANTS), dtype=np.int64).view(np.uint64)
    corpus = rng.integers(0, 2**63, size=(20000, VARIANTS), dtype=np.int64).view(np.uint64)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        match_hashes(corpus, ev, 8)
        times.append(time.process_time() - t0)
    match_rate = len(corpus) / statistics.median(times)
    chars = list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研")
    ev_texts = ["".join(rng.choice(chars, 16)) for _ in range(m)]
    c_texts = ["".join(rng.choice(chars, 16)) for _ in range(50000)]
    index = EvalIndex(texts=ev_texts, text_image=list(range(m)))
    t0 = time.process_time()
    match_texts(c_texts, index, DecontaminationConfig(minhash=minhash.MinHashParams()))
    text_rate = len(c_texts) / (time.process_time() - t0)
    rows = 1_000_000
    total = rows / hash_rate + rows / match_rate + rows / text_rate
    print(f"  pHash variants from a tar of {n_images} JPEGs 256x256: {hash_rate:,.0f} images/s")
    print(f"  exhaustive matching against {m:,} evaluation images ({2 * len(VARIANT_PAIRS)} variant pairs each): {match_rate:,.0f} corpus "
          f"images/s")
    print(f"  caption matching (MinHash candidates + exact Jaccard) against {m:,} texts: {text_rate:,.0f} captions/s")
    print(f"  1M-row corpus vs 5k-image test set, one core: {rows / hash_rate / 60:.1f} min hashing + "
          f"{rows / match_rate / 60:.1f} min matching + {rows / text_rate / 60:.1f} min captions = "
          f"{total / 60:.1f} min (extrapolated)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--thresholds", default="4,6,8,10,12")
    ap.add_argument("--caption-thresholds", default="0.7,0.8,0.9")
    ap.add_argument("--speed-images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    thresholds = [int(t) for t in args.thresholds.split(",")]
    crops, images, group, kind = build_set()
    CROPS[:] = crops
    bench_levels(images, group, kind, thresholds)
    bench_decontamination(images, group, kind, thresholds)
    bench_captions([float(t) for t in args.caption_thresholds.split(",")])
    if not args.skip_speed:
        bench_speed(args.speed_images, args.repeats)


if __name__ == "__main__":
    main()
