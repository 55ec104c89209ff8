"""Near-duplicate benchmark on real photographs: precision and recall of each image dedup level and of
decontamination, with and without the second image check (:mod:`ccmb.corpus.primitives.imagecheck`), next to
``imagehash``'s pHash (the baseline), and decontamination speed on one core.

Data: the photographs scikit-image ships (``skimage.data``; ``pip install 'ccmb[perf]'`` or
``pip install scikit-image imagehash`` - perf only). Each photo is cut into non-overlapping crops (a 2x2 or
3x3 grid): crops of different regions are DISTINCT images (near-uniform crops, grey std < 8, are left out:
they are blank, not photos). HARD NEGATIVES, distinct images built from every crop, the same edit for all:
``dark`` (gray levels x0.3, light blur) and ``fog`` (x0.3 + 150) photos carrying the same caption,
``logo`` (dark photos under the same large centred watermark), ``framed`` (the photo inside the same
"photo of the day" template); a dark or foggy version whose content is no longer visible (grey std < 3
before the caption) is left out, like blank crops. Every distinct image gets these COPIES: JPEG quality
30, resize to 50%, 5% border crop (each side), +20% and -20% brightness, a small text overlay, a
horizontal flip. A hard negative and the crop it was made from are neither copies nor different photos:
their pairs are not counted.

The photos are SPLIT by name into a tuning set and a held-out set (alternating in :data:`PHOTOS`). The
constants of :mod:`ccmb.corpus.primitives.imagecheck` were chosen on the tuning set (section 0 prints what they
were chosen from); every table is printed for both sets, pairs within a set; the held-out numbers are the
result.

Printed:
0. the second check on the tuning set: the share of differing pixels of the pHash candidates (at the
   largest threshold), copies vs different photos, for several tolerances and variant pairs.
1. image dedup levels: per transform the recall of (original, copy) pairs, the precision of all reported
   pairs, and the number of different-photo pairs merged; ours: ``sha256``, ``phash`` (whole + 90%/80%
   centre variants, exact Hamming check) and ``phash + check`` (a candidate merged only when
   :func:`~ccmb.corpus.primitives.imagecheck.same_image` agrees) at several thresholds; baseline:
   ``imagehash.phash`` (64 bits); the alternative considered, a PDQ-like 256-bit DCT hash, at 4x the
   thresholds.
2. decontamination: every other distinct image of a set is an "evaluation" image; the corpus holds every
   copy of them and every other image; recall of evaluation copies found, false corpus drops; ours
   (``all_matches``, mirror variants, with and without the check, mirror included) vs imagehash pHash.
3. the caption level: distinct captions (templates with numbers, like the issue's ``一只小猫坐在窗台上第48号``
   / ``第42号``) and copies (punctuation, a repost prefix, a suffix, spaces and case); recall of copies and
   the number of distinct captions dropped, ours (exact Jaccard, star groups) next to the old behaviour
   (MinHash estimate trusted, transitive groups).
5. THE PIPELINE AS WIRED (the result): each set written as a download folder (tars + parquets; in every
   group the original has the lowest key) and run through ``ccmb dedup``'s pHash level
   (``api.dedup_table``, levels ``phash``, with and without ``--no-image-check``) and ``ccmb decontaminate``
   (``api.decontamination_table`` with the index built by ``index_image``, the evaluation images being
   every other distinct image, the corpus everything else): per transform the share of copies the
   decisions drop pointing into their own group (recall), and the rows dropped pointing to a different
   photo (merges of different photos; pairs of images made from the same crop are not counted).
4. speed, one core: pHash of JPEGs from a tar (images/s), the exhaustive hash matching (corpus rows/s
   against a 5k-image evaluation index), the second check (candidate pairs/s) and caption matching;
   extrapolated to a 1M-row corpus.

    python perf/bench_neardup.py [--thresholds 4,6,8,10] [--speed-images 2000] [--skip-speed] [--only-pipeline]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccmb.corpus.primitives import imagecheck  # noqa: E402
from ccmb.corpus.steps.decontaminate import all_matches, match_hashes  # noqa: E402
from ccmb.corpus.primitives.phash import VARIANT_PAIRS, VARIANTS, gray32_variants, hamming, phash_arrays  # noqa: E402
from ccmb.corpus.primitives.phash import phash_with_mirror, variant_distance  # noqa: E402

# photographs bundled with scikit-image (no download); "cat" is chelsea again, logo/colorwheel/horse are drawings.
# Even positions: the tuning set; odd positions: the held-out set.
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
          "retina", "moon", "brick", "grass", "gravel", "coins", "page", "text", "clock", "cell",
          "stereo_motorcycle"]
SETS = ("tuning", "held-out")


def set_of(photo: str) -> str:
    return SETS[PHOTOS.index(photo) % 2]


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
GOAL = ("jpeg30", "resize50", "crop5", "bright+20", "bright-20", "overlay")


# ---- hard negatives: different photos that share an edit --------------------------------------------------

def levels(im: Image.Image, gain: float, offset: float) -> Image.Image:
    arr = np.asarray(im.convert("RGB").filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    return Image.fromarray((offset + gain * arr).clip(0, 255).astype(np.uint8))


def caption(im: Image.Image, fill=(255, 255, 255), text: str = "SUBSCRIBE FOR MORE") -> Image.Image:
    im = im.copy()
    font = ImageFont.load_default(size=max(10, im.width // 12))
    ImageDraw.Draw(im).text((im.width // 2, int(im.height * 0.82)), text, fill=fill, font=font, anchor="mm")
    return im


def logo(im: Image.Image) -> Image.Image:
    base = im.convert("RGBA")
    mark = Image.new("RGBA", base.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(mark)
    r = min(base.size) // 3
    cx, cy = base.width // 2, base.height // 2
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255, 150), width=max(2, r // 8))
    d.text((cx, cy), "CC", fill=(255, 255, 255, 150), font=ImageFont.load_default(size=r), anchor="mm")
    return Image.alpha_composite(base, mark).convert("RGB")


def framed(im: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (320, 320), (245, 245, 245))
    d = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=22)
    d.rectangle((0, 0, 320, 40), fill=(30, 120, 200))
    d.text((160, 20), "PHOTO OF THE DAY", fill=(255, 255, 255), font=font, anchor="mm")
    d.text((160, 295), "share  like  comment", fill=(90, 90, 90), font=font, anchor="mm")
    photo = im.copy()
    photo.thumbnail((200, 200))
    canvas.paste(photo, ((320 - photo.width) // 2, 60 + (200 - photo.height) // 2))
    return canvas


#: kind -> (the photo's edit before the shared element (None: none), the shared element)
HARD: Dict[str, Tuple[Callable, Callable]] = {
    "dark": (lambda im: levels(im, 0.3, 6), caption),
    "fog": (lambda im: levels(im, 0.3, 150), lambda im: caption(im, fill=(20, 20, 20))),
    "logo": (lambda im: levels(im, 0.3, 6), logo),
    "framed": (None, framed),
}
MIN_VISIBLE_STD = 3.0


@dataclass
class Item:
    name: str     # crop name, plus "+kind" for a hard negative
    source: str   # the crop it was made from
    photo: str
    image: Image.Image


def load_photos() -> List[Tuple[str, Image.Image]]:
    import skimage.data as data

    out = []
    for name in PHOTOS:
        try:
            arr = getattr(data, name)()
        except Exception as exc:  # a photo that needs a download is skipped
            print(f"(skipping {name}: {exc})")
            continue
        if isinstance(arr, tuple):  # stereo pairs: the left view
            arr = arr[0]
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


def distinct_items() -> List[Item]:
    items = []
    crops = distinct_crops(load_photos())
    for name, im in crops:
        items.append(Item(name, name, name.split("/")[0], im))
    for kind, (edit, shared) in HARD.items():
        for name, im in crops:
            base = edit(im) if edit else im
            if edit and np.asarray(base.convert("L"), np.float32).std() < MIN_VISIBLE_STD:
                continue  # nothing visible left: a blank frame, not a photo
            items.append(Item(f"{name}+{kind}", name, name.split("/")[0], shared(base)))
    return items


@dataclass
class ImageSet:
    """The images of one set: every distinct item and its copies."""

    label: str
    items: List[Item]
    images: List[bytes]
    group: np.ndarray   # item index of each image
    kind: np.ndarray    # "original" or the transform

    def __post_init__(self) -> None:
        self.names = [it.name for it in self.items]
        self.source = np.array([it.source for it in self.items])
        grays = np.stack([gray32_variants(b) for b in self.images])
        self.hashes = phash_arrays(grays.reshape(-1, 32, 32)).reshape(-1, VARIANTS)
        self.thumbs = imagecheck.thumbnails(grays)

    def related(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs of different items made from the same crop (neither copies nor different photos)."""
        ga, gb = self.group[a], self.group[b]
        return (ga != gb) & (self.source[ga] == self.source[gb])


def build_sets() -> Dict[str, ImageSet]:
    per: Dict[str, list] = {s: [] for s in SETS}
    for it in distinct_items():
        per[set_of(it.photo)].append(it)
    out = {}
    for label, items in per.items():
        images, group, kind = [], [], []
        for gi, it in enumerate(items):
            images.append(jpeg(it.image))
            group.append(gi)
            kind.append("original")
            for tname, fn in TRANSFORMS.items():
                images.append(jpeg(fn(it.image), 95) if tname != "jpeg30" else jpeg(it.image, 30))
                group.append(gi)
                kind.append(tname)
        out[label] = ImageSet(label, items, images, np.asarray(group), np.asarray(kind))
    return out


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


def candidate_shares(s: ImageSet, d: np.ndarray, threshold: int, **check) -> Tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(rows a, rows b, share of differing pixels) of every pair within ``threshold`` pHash bits."""
    a, b = np.triu_indices(len(s.images), 1)
    keep = d[a, b] <= threshold
    a, b = a[keep], b[keep]
    return a, b, imagecheck.different_share(s.thumbs[a], s.thumbs[b], **check)


def evaluate_pairs(s: ImageSet, hit: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Precision, recall per transform and different-photo pairs merged, of the reported pairs (a, b)[hit]
    (a < b; pairs not listed are not reported)."""
    a, b = a[hit], b[hit]
    unrelated = ~s.related(a, b)
    same = s.group[a] == s.group[b]
    tp, fp = int((same & unrelated).sum()), int((~same & unrelated).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    reported = set(zip(a[same].tolist(), b[same].tolist()))
    orig = np.flatnonzero(s.kind == "original")
    recalls = {}
    for t in TRANSFORMS:
        copies = np.flatnonzero(s.kind == t)
        recalls[t] = float(np.mean([(min(o, c), max(o, c)) in reported for o, c in zip(orig, copies)]))
    bad = [(x, y) for x, y, ok in zip(a.tolist(), b.tolist(), (~same & unrelated).tolist()) if ok]
    return precision, recalls, fp, bad


def tune_check(s: ImageSet, d: np.ndarray, threshold: int) -> None:
    """Section 0: what the check's constants were chosen from (tuning set only)."""
    a, b = np.triu_indices(len(s.images), 1)
    keep = d[a, b] <= threshold
    a, b = a[keep], b[keep]
    same = s.group[a] == s.group[b]
    copies = same & (s.kind[a] != "flip") & (s.kind[b] != "flip")
    different = ~same & ~s.related(a, b)
    print(f"\n0. second check, chosen on the {s.label} set: share of differing pixels of the pHash candidates "
          f"(variant distance <= {threshold}: {int(copies.sum())} pairs of copies, {int(different.sum())} of "
          f"different photos)")
    print(f"{'variant pairs':>14}{'noise':>7}{'edge':>6}{'copies p99':>12}{'p99.5':>8}{'max':>8}"
          f"{'different min':>15}{'p1':>8}")
    for pairs in (imagecheck.CHECK_PAIRS, ((0, 0), (0, 1), (1, 0))):
        for noise in (2.0, 3.0):
            for edge in (0.5, 1.0):
                share = imagecheck.different_share(s.thumbs[a], s.thumbs[b], noise_levels=noise, edge_share=edge,
                                                   pairs=pairs)
                c, x = share[copies], share[different]
                print(f"{len(pairs):>14}{noise:>7.1f}{edge:>6.1f}{np.quantile(c, 0.99):>12.3f}"
                      f"{np.quantile(c, 0.995):>8.3f}{c.max():>8.3f}{x.min():>15.3f}{np.quantile(x, 0.01):>8.3f}")
    print(f"  chosen (the widest gap between copies' p99 and the closest different photos; the limit near their "
          f"geometric mean): NOISE_LEVELS={imagecheck.NOISE_LEVELS}, EDGE_SHARE={imagecheck.EDGE_SHARE}, "
          f"{len(imagecheck.CHECK_PAIRS)} variant pairs, MAX_DIFFERENT_SHARE={imagecheck.MAX_DIFFERENT_SHARE}")


def bench_levels(sets: Dict[str, ImageSet], thresholds: List[int], distances: Dict[str, np.ndarray]):
    results = {}
    cols = list(TRANSFORMS)
    for label, s in sets.items():
        n = len(s.images)
        kinds = sorted({it.name.partition("+")[2] for it in s.items} - {""})
        print(f"\n1. image dedup levels, {label} set ({', '.join(sorted({it.photo for it in s.items}))}): "
              f"{len(s.items)} distinct images ({int(sum('+' not in x for x in s.names))} crops + hard negatives "
              f"{', '.join(kinds)}) x (1 + {len(TRANSFORMS)} copies) = {n} images, {n * (n - 1) // 2:,} pairs")
        d_ours = distances[label]
        base = imagehash_phash(s.images)
        d_base = pair_matrix(lambda i: hamming(np.full(n, base[i]), base), n)
        sha = np.array([hashlib.sha256(x).digest() for x in s.images], object)
        d_sha = pair_matrix(lambda i: np.where(sha == sha[i], 0, 64), n)
        h256 = dct256(s.images)
        d_256 = pair_matrix(lambda i: np.bitwise_count(h256[i][None, :] ^ h256).sum(axis=1).astype(np.int64), n)
        ca, cb, share = candidate_shares(s, d_ours, max(thresholds))
        checked = share <= imagecheck.MAX_DIFFERENT_SHARE
        head = (f"{'method':34}{'thr':>4}{'prec':>7}{'merged':>8}" + "".join(f"{c:>10}" for c in cols)
                + f"{'goal ok':>9}")
        print(head)
        ia, ib = np.triu_indices(n, 1)
        for method, thrs in (("ours sha256 (exact bytes)", [0]), ("ours phash (variants, exact check)", thresholds),
                             ("ours phash + second check", thresholds), ("baseline imagehash.phash", thresholds),
                             ("alternative 256-bit DCT (PDQ-like)", [4 * t for t in thresholds])):
            for t in thrs:
                if method.startswith("ours phash +"):
                    p, rec, fp, bad = evaluate_pairs(s, (d_ours[ca, cb] <= t) & checked, ca, cb)
                else:
                    dist = {"ours sha256 (exact bytes)": d_sha, "ours phash (variants, exact check)": d_ours,
                            "baseline imagehash.phash": d_base}.get(method, d_256)
                    p, rec, fp, bad = evaluate_pairs(s, dist[ia, ib] <= t, ia, ib)
                ok = all(rec[g] >= 0.95 for g in GOAL) and fp == 0
                results[(label, method, t)] = (p, rec, fp, bad)
                print(f"{method:34}{t:>4}{p:>7.3f}{fp:>8}" + "".join(f"{rec[c]:>10.3f}" for c in cols)
                      + f"{'yes' if ok else 'no':>9}")
        for method in ("ours phash (variants, exact check)", "ours phash + second check"):
            t = min(thresholds)
            bad = results[(label, method, t)][3]
            pairs = sorted({f"{s.names[s.group[x]]}({s.kind[x]})~{s.names[s.group[y]]}({s.kind[y]})" for x, y in bad})
            if pairs:
                print(f"  {method} at {t}: merged different photos: {', '.join(pairs[:6])}"
                      + (f" (+{len(pairs) - 6})" if len(pairs) > 6 else ""))
        same0 = int(((d_ours[ia, ib] == 0) & (s.group[ia] != s.group[ib]) & ~s.related(ia, ib)).sum())
        print(f"  different photos with identical pHash variants (distance 0): {same0} pairs")
    return results


def bench_decontamination(sets: Dict[str, ImageSet], thresholds: List[int]):
    cols = list(TRANSFORMS)
    out = {}
    for label, s in sets.items():
        orig = np.flatnonzero(s.kind == "original")
        eval_groups = set(s.group[orig][::2].tolist())  # every other distinct image is an evaluation image
        eval_rows = np.array([i for i in orig if s.group[i] in eval_groups])
        corpus_rows = np.array([i for i in range(len(s.images))
                                if not (s.kind[i] == "original" and s.group[i] in eval_groups)])
        positives = np.array([s.group[i] in eval_groups for i in corpus_rows])
        print(f"\n2. decontamination, {label} set: {len(eval_rows)} evaluation images; corpus of {len(corpus_rows)} "
              f"images ({int(positives.sum())} copies of evaluation images, {int((~positives).sum())} others)")
        ev = np.stack([phash_with_mirror(s.images[i]) for i in eval_rows])
        cv = s.hashes[corpus_rows]
        base = imagehash_phash(s.images)
        print(f"{'method':34}{'thr':>4}{'prec':>7}{'false':>7}" + "".join(f"{c:>10}" for c in cols))
        for method in ("ours (variants + mirror)", "ours + second check (mirror too)", "baseline imagehash.phash"):
            for t in thresholds:
                hit_eval = np.full(len(corpus_rows), -1)
                if method.startswith("ours + second"):
                    for r, cands in enumerate(all_matches(cv, ev, t)):
                        if not len(cands):
                            continue
                        share = imagecheck.different_share(np.repeat(s.thumbs[corpus_rows[r]][None], len(cands), 0),
                                                           s.thumbs[eval_rows[cands]], mirror=True)
                        if share.min() <= imagecheck.MAX_DIFFERENT_SHARE:  # the closest that passes
                            hit_eval[r] = cands[int(share.argmin())]
                elif method.startswith("ours"):
                    rows, ei, _ = match_hashes(cv, ev, t)
                    hit_eval[rows] = ei
                else:
                    dd = np.stack([hamming(np.full(len(eval_rows), base[c]), base[eval_rows]) for c in corpus_rows])
                    hit_eval = np.where(dd.min(axis=1) <= t, dd.argmin(axis=1), -1)
                hit = hit_eval >= 0
                correct = hit & positives & (s.group[eval_rows][np.maximum(hit_eval, 0)] == s.group[corpus_rows])
                related = hit & s.related(eval_rows[np.maximum(hit_eval, 0)], corpus_rows)
                false = int((hit & ~correct & ~related).sum())
                prec = correct.sum() / (hit & ~related).sum() if (hit & ~related).sum() else 1.0
                rec = {c: float(correct[positives & (s.kind[corpus_rows] == c)].mean()) for c in cols}
                out[(label, method, t)] = (prec, rec, false)
                print(f"{method:34}{t:>4}{prec:>7.3f}{false:>7}" + "".join(f"{rec[c]:>10.3f}" for c in cols))
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


def write_folder(s: ImageSet, out: Path, rows: np.ndarray, per_shard: int = 250) -> List[str]:
    """The images ``rows`` of a set as a download folder, in that order; returns their keys."""
    from ccmb import shards

    keys = []
    for lo in range(0, len(rows), per_shard):
        shard = lo // per_shard
        with shards.ShardWriter(out, shard, source="bench") as w:
            for i, r in enumerate(rows[lo: lo + per_shard].tolist()):
                key = shards.make_key(shard, i, per_shard)
                keys.append(key)
                im = Image.open(io.BytesIO(s.images[r]))
                meta = {"url": f"http://bench.example.com/{r}.jpg", "caption": f"图片{r}", "title": "", "key": key,
                        "width": im.width, "height": im.height, "original_width": im.width,
                        "original_height": im.height}
                w.write(key, s.images[r], meta["caption"], meta)
    return keys


def score_drops(s: ImageSet, rows: np.ndarray, target: np.ndarray):
    """Per row of the corpus ``rows``, the image its decision points to (``target``, -1: kept): recall per
    transform (copies pointing into their own group), rows pointing to a different photo (related pairs
    not counted) and examples of them."""
    hit = target >= 0
    t = np.maximum(target, 0)
    same = hit & (s.group[rows] == s.group[t])
    related = hit & ~same & s.related(rows, t)
    wrong = hit & ~same & ~related
    rec = {c: float(same[s.kind[rows] == c].mean()) if (s.kind[rows] == c).any() else float("nan")
           for c in TRANSFORMS}
    bad = [f"{s.names[s.group[r]]}({s.kind[r]})->{s.names[s.group[x]]}({s.kind[x]})"
           for r, x in zip(rows[wrong].tolist(), t[wrong].tolist())]
    return rec, int(wrong.sum()), bad


def bench_pipeline(sets: Dict[str, ImageSet], thresholds: List[int]):
    """Section 5: the decisions of the pHash dedup level and of decontamination, as the commands make them."""
    from ccmb.corpus import api
    from ccmb.corpus.steps.decontaminate import DecontaminationConfig, EvalIndex, index_image

    cols = list(TRANSFORMS)
    out = {}
    for label, s in sets.items():
        with tempfile.TemporaryDirectory(prefix="bench-neardup-") as tmp:
            order = np.lexsort((np.array([list(TRANSFORMS).index(k) + 1 if k in TRANSFORMS else 0 for k in s.kind]),
                                s.group))
            keys = write_folder(s, Path(tmp) / "dedup", order)
            row_of = dict(zip(keys, order.tolist()))
            print(f"\n5. the pipeline as wired, {label} set: {len(order)} images in a download folder")
            print(f"{'ccmb dedup, pHash level':38}{'thr':>4}{'merged':>8}" + "".join(f"{c:>10}" for c in cols)
                  + f"{'goal ok':>9}  seconds")
            for check in (False, True):
                for t in thresholds:
                    t0 = time.time()
                    table = api.dedup_table(Path(tmp) / "dedup", api.dedup_config(levels=["phash"],
                                                                                  phash_threshold=t,
                                                                                  image_check=check))
                    secs = time.time() - t0
                    target = np.full(len(order), -1)
                    pos = {r: i for i, r in enumerate(order.tolist())}
                    for k, dup in zip(table.column("key").to_pylist(), table.column("duplicate_of").to_pylist()):
                        if dup is not None:
                            target[pos[row_of[k]]] = row_of[dup]
                    rec, merged, bad = score_drops(s, order, target)
                    ok = all(rec[g] >= 0.95 for g in GOAL) and merged == 0
                    name = "phash + image check" if check else "phash alone (--no-image-check)"
                    out[(label, "dedup", check, t)] = (rec, merged)
                    print(f"{name:38}{t:>4}{merged:>8}" + "".join(f"{rec[c]:>10.3f}" for c in cols)
                          + f"{'yes' if ok else 'no':>9}{secs:>9.1f}")
                    if bad and check:
                        print(f"    merged: {', '.join(bad[:4])}" + (f" (+{len(bad) - 4})" if len(bad) > 4 else ""))
            orig = np.flatnonzero(s.kind == "original")
            eval_groups = set(s.group[orig][::2].tolist())
            eval_rows = np.array([i for i in orig if s.group[i] in eval_groups])
            corpus_rows = np.array([i for i in order.tolist() if not (s.kind[i] == "original"
                                                                        and s.group[i] in eval_groups)])
            ckeys = write_folder(s, Path(tmp) / "corpus", corpus_rows)
            crow = dict(zip(ckeys, corpus_rows.tolist()))
            index = EvalIndex()
            made = [index_image(s.images[r], f"eval {r}") for r in eval_rows.tolist()]
            index.add("bench/eval", [str(r) for r in eval_rows.tolist()], np.stack([m[0] for m in made]),
                      [[] for _ in made], [hashlib.sha256(s.images[r]).digest() for r in eval_rows.tolist()],
                      np.stack([m[1] for m in made]))
            positives = np.array([s.group[i] in eval_groups for i in corpus_rows])
            print(f"{'ccmb decontaminate':38}{'thr':>4}{'false':>8}" + "".join(f"{c:>10}" for c in cols)
                  + f"{'goal ok':>9}  seconds   ({len(eval_rows)} evaluation images, {int(positives.sum())} "
                  f"copies of them in a corpus of {len(corpus_rows)})")
            for check in (False, True):
                for t in thresholds:
                    t0 = time.time()
                    res = api.decontamination_table(Path(tmp) / "corpus", index,
                                                    DecontaminationConfig(phash_threshold=t, image_check=check))
                    secs = time.time() - t0
                    pos = {r: i for i, r in enumerate(corpus_rows.tolist())}
                    target = np.full(len(corpus_rows), -1)
                    decided = res.table.select(["key", "duplicate_of"]).to_pylist()
                    for k, dup in ((r["key"], r["duplicate_of"]) for r in decided):
                        if dup is not None:
                            target[pos[crow[k]]] = int(dup.rsplit("/", 1)[1])
                    _, false, bad = score_drops(s, corpus_rows, target)
                    rec = {c: rec_pos(s, corpus_rows, target, positives, c) for c in cols}
                    ok = all(rec[g] >= 0.95 for g in GOAL) and false == 0
                    name = "phash + image check (mirror)" if check else "phash alone (--no-image-check)"
                    out[(label, "decontaminate", check, t)] = (rec, false)
                    print(f"{name:38}{t:>4}{false:>8}" + "".join(f"{rec[c]:>10.3f}" for c in cols)
                          + f"{'yes' if ok else 'no':>9}{secs:>9.1f}")
                    if bad and check:
                        print(f"    dropped: {', '.join(bad[:4])}" + (f" (+{len(bad) - 4})" if len(bad) > 4 else ""))
    return out


def rec_pos(s: ImageSet, rows: np.ndarray, target: np.ndarray, positives: np.ndarray, kind: str) -> float:
    """Recall of decontamination for one transform: copies of evaluation images dropped pointing to their
    own evaluation image."""
    sel = positives & (s.kind[rows] == kind)
    return float(((target[sel] >= 0) & (s.group[np.maximum(target[sel], 0)] == s.group[rows[sel]])).mean())


LEVEL_CHILD = """
import json, os, resource, sys, time
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, sys.argv[1])
import pyarrow as pa
pa.set_cpu_count(1); pa.set_io_thread_count(1)
from ccmb.corpus.api import dedup_samples
c0, t0 = time.process_time(), time.perf_counter()
s = dedup_samples(sys.argv[2], sys.argv[3], levels=["phash"], image_check=sys.argv[4] == "on")
# VmHWM: this process's own peak (ru_maxrss would keep the forking parent's across exec)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
rss = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(seconds=time.perf_counter() - t0, cpu=time.process_time() - c0, dropped=sum(s.dropped.values()),
                      rss_mb=rss)))
"""


def bench_level_cost(n_images: int, repeats: int, copy_share: float = 0.1) -> None:
    """The pHash level's cost with and without the image check: ``ccmb dedup`` (pHash level only, one core,
    each run a fresh process) over a download folder of distinct random-field JPEGs of which ``copy_share``
    are re-encoded copies of earlier ones."""
    import subprocess

    from ccmb import shards

    rng = np.random.default_rng(1)
    n_copies = int(n_images * copy_share)
    with tempfile.TemporaryDirectory(prefix="bench-level-") as tmp:
        folder = Path(tmp) / "dl"
        images = []
        for i in range(n_images - n_copies):
            small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            arr = np.asarray(Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC), np.float32)
            images.append(jpeg(Image.fromarray((16 + 0.78 * arr).clip(0, 255).astype(np.uint8)), 90))
        for j in rng.choice(len(images), n_copies, replace=False).tolist():
            images.append(jpeg(Image.open(io.BytesIO(images[j])), 30))
        per_shard = 1000
        for lo in range(0, len(images), per_shard):
            with shards.ShardWriter(folder, lo // per_shard, source="bench") as w:
                for i, data in enumerate(images[lo: lo + per_shard]):
                    key = shards.make_key(lo // per_shard, i, per_shard)
                    meta = {"url": f"http://b.example.com/{lo + i}.jpg", "caption": f"图{lo + i}", "key": key,
                            "width": 256, "height": 256, "original_width": 256, "original_height": 256}
                    w.write(key, data, meta["caption"], meta)
        runs: Dict[str, list] = {"off": [], "on": []}
        for r in range(repeats):
            for mode in ("off", "on"):
                out = Path(tmp) / f"d-{mode}-{r}.parquet"
                res = subprocess.run([sys.executable, "-c", LEVEL_CHILD, str(Path(__file__).resolve().parents[1]),
                                      str(folder), str(out), mode], capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
    med = {m: {k: statistics.median(x[k] for x in v) for k in ("seconds", "cpu", "rss_mb", "dropped")}
           for m, v in runs.items()}
    print(f"  pHash level, `ccmb dedup --no-url --no-sha256 --no-caption`, {n_images} JPEGs 256x256 ({n_copies} "
          f"re-encoded copies), one core, medians of {repeats} fresh processes:")
    for m, label in (("off", "--no-image-check (baseline)"), ("on", "image check (default)")):
        x = med[m]
        print(f"    {label:30} {x['seconds']:7.1f} s wall {x['cpu']:7.1f} s CPU {x['rss_mb']:7.0f} MB peak RSS "
              f"{int(x['dropped']):6d} dropped")
    print(f"    ratio check/baseline: wall {med['on']['seconds'] / med['off']['seconds']:.2f}x, peak RSS "
          f"{med['on']['rss_mb'] / med['off']['rss_mb']:.2f}x")


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
    # the second check on candidate pairs: copies (the common case: decided at the first variant pair) and
    # pairs of different photos (every variant pair computed)
    pairs = 2000
    a_img, b_img, d_img = [], [], []
    for i in range(pairs):
        _, im = photos[i % len(photos)]
        _, other = photos[(i + 1 + i // len(photos)) % len(photos)]
        a_img.append(jpeg(im, 90))
        b_img.append(jpeg(im, 30))
        d_img.append(jpeg(other, 90))
    ta, tb, td = (imagecheck.thumbnails_bytes(x) for x in (a_img, b_img, d_img))
    rates = {}
    for label, other in (("copies", tb), ("different", td)):
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            imagecheck.same_image(ta, other)
            times.append(time.process_time() - t0)
        rates[label] = pairs / statistics.median(times)
    rows = 1_000_000
    total = rows / hash_rate + rows / match_rate + rows / text_rate
    print(f"  pHash variants from a tar of {n_images} JPEGs 256x256: {hash_rate:,.0f} images/s")
    print(f"  exhaustive matching against {m:,} evaluation images ({2 * len(VARIANT_PAIRS)} variant pairs each): {match_rate:,.0f} corpus "
          f"images/s")
    print(f"  second check (imagecheck.same_image): {rates['copies']:,.0f} candidate pairs/s of copies, "
          f"{rates['different']:,.0f} pairs/s of different photos (every variant pair); thumbnails come from the "
          f"pHash decode, {imagecheck.THUMB_BYTES:,} bytes per image")
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
    ap.add_argument("--only-pipeline", action="store_true", help="Only section 5 (the decisions as wired).")
    ap.add_argument("--level-cost", action="store_true", help="Only the pHash level's cost with/without the check.")
    ap.add_argument("--pipeline-thresholds", default="4,6", help="pHash thresholds of section 5 (dedup default 4, "
                                                                  "decontamination default 6).")
    args = ap.parse_args()
    thresholds = [int(t) for t in args.thresholds.split(",")]
    if args.level_cost:
        bench_level_cost(args.speed_images, args.repeats)
        return
    sets = build_sets()
    if args.only_pipeline:
        bench_pipeline(sets, [int(t) for t in args.pipeline_thresholds.split(",")])
        return
    distances = {}
    for label, s in sets.items():
        n = len(s.images)
        distances[label] = pair_matrix(lambda i: variant_distance(np.repeat(s.hashes[i:i + 1], n, 0), s.hashes), n)
    tune_check(sets["tuning"], distances["tuning"], max(thresholds))
    bench_levels(sets, thresholds, distances)
    bench_decontamination(sets, thresholds)
    bench_pipeline(sets, [int(t) for t in args.pipeline_thresholds.split(",")])
    bench_captions([float(t) for t in args.caption_thresholds.split(",")])
    if not args.skip_speed:
        bench_speed(args.speed_images, args.repeats)
        bench_level_cost(args.speed_images, args.repeats)


if __name__ == "__main__":
    main()
