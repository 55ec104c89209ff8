"""The second, stronger check of a near-duplicate image pair: aligned 32x32 grayscale thumbnails compared
pixel by pixel, after a photometric alignment, counting the share of the picture that differs.

A pHash candidate pair (:mod:`ccmb.corpus.primitives.phash`: Hamming distance of the 64-bit hashes within the
threshold) is merged only when this check agrees. pHash keeps the signs of 64 low frequencies: two
different dark or low-texture photos carrying the same caption overlay, or two different photos in the same
frame or template, hash alike because the overlay or the frame holds the only strong contrast. Here every
pixel of the picture must agree, not only the strong ones:

* **Per image** (at scan time, from the same decode as the pHash): :func:`thumbnails` of the pHash's
  :data:`~ccmb.corpus.primitives.phash.VARIANTS` 32x32 grayscale arrays (whole image, central 90% and 80% crops),
  stored as :data:`THUMB_BYTES` (3,072) uint8 bytes per image (:func:`to_arrow` / :func:`from_arrow`: a
  ``fixed_size_binary`` column).
* **Per candidate pair**: :func:`different_share` - for each of the pHash level's
  :data:`~ccmb.corpus.primitives.phash.VARIANT_PAIRS` (whole vs whole, whole vs 90% centre both ways, 80% vs 80%, so
  the same copies align as in the pHash check) and both directions, one thumbnail is aligned to the other
  photometrically (a robust affine fit - brightness and contrast - and histogram matching - any monotone
  tone curve; the better of the two counts), pixels at or above :data:`SATURATED` in either image are left
  out (clipped by a brighter copy), and a pixel *differs* when the aligned values are more than
  :data:`NOISE_LEVELS` gray levels apart plus :data:`EDGE_SHARE` of the local gradient (re-encoding and
  resizing move edges, not flat areas). The share of differing pixels, taken at the best-aligned variant
  pair and the worse direction, is compared with :data:`MAX_DIFFERENT_SHARE` by :func:`same_image`.
  ``mirror=True`` also tries the mirror image of the second side (decontamination's flipped copies).

A copy differs only where something was added (a watermark: a few % of the picture) or by noise below the
tolerance; two different photos differ over most of the background, however dark or flat it is, as long as
their content is visible (a few gray levels). Measured in ``perf/bench_neardup.py`` on photos the constants
were not chosen on.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pyarrow as pa

from ...types import PathLike
from .phash import IMG_SIZE, VARIANT_PAIRS, VARIANTS, gray32_variants, iter_tar_grays, phash_tar

SIDE = IMG_SIZE
PIXELS = SIDE * SIDE
THUMB_BYTES = VARIANTS * PIXELS
#: Variant pairs compared: the pHash level's (whole vs whole, whole vs 90% centre both ways, 80% vs 80%).
CHECK_PAIRS = tuple(VARIANT_PAIRS)
#: Pixels at or above this gray level in either image are not compared (a brighter copy clips them).
SATURATED = 250
#: A pixel differs when the aligned values are more than this many gray levels apart ...
NOISE_LEVELS = 2.0
#: ... plus this share of the larger local gradient (edges move a little under re-encoding and resizing).
EDGE_SHARE = 0.5
#: A pair is the same image when at most this share of the compared pixels differs (chosen on the tuning
#: photos of ``perf/bench_neardup.py``).
MAX_DIFFERENT_SHARE = 0.03


def thumbnails(gray_variants: np.ndarray) -> np.ndarray:
    """Thumbnails of images from their pHash gray variants: (N, VARIANTS, 32, 32) (as
    :func:`ccmb.corpus.primitives.phash.gray32_variants` gives per image, stacked) -> (N, THUMB_BYTES) uint8."""
    g = np.asarray(gray_variants)
    if g.ndim != 4 or g.shape[1:] != (VARIANTS, SIDE, SIDE):
        raise ValueError(f"expected (N, {VARIANTS}, {SIDE}, {SIDE}) gray variants, got {g.shape}")
    return np.clip(np.rint(g), 0, 255).astype(np.uint8).reshape(len(g), THUMB_BYTES)


def thumbnails_bytes(images: Sequence[bytes]) -> np.ndarray:
    """Thumbnails (N, THUMB_BYTES) uint8 of encoded images (the pHash level's decode; raises
    :class:`ccmb.images.ImageDecodeError` on the first undecodable one)."""
    if not len(images):
        return np.zeros((0, THUMB_BYTES), np.uint8)
    return thumbnails(np.stack([gray32_variants(b) for b in images]))


def mirrored(thumbs: np.ndarray) -> np.ndarray:
    """The thumbnails of the mirror images (each variant flipped left-right; the crops are centred)."""
    t = _as_thumbs(thumbs)
    return np.ascontiguousarray(t.reshape(-1, VARIANTS, SIDE, SIDE)[..., ::-1]).reshape(-1, THUMB_BYTES)


def to_arrow(thumbs: np.ndarray) -> pa.Array:
    """A ``fixed_size_binary(THUMB_BYTES)`` column of thumbnails."""
    t = np.ascontiguousarray(_as_thumbs(thumbs))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(THUMB_BYTES), len(t), [None, pa.py_buffer(t.tobytes())])


def from_arrow(column) -> np.ndarray:
    """Thumbnails (N, THUMB_BYTES) uint8 from a column written by :func:`to_arrow` (no nulls)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type != pa.binary(THUMB_BYTES):
        raise ValueError(f"expected fixed_size_binary({THUMB_BYTES}) thumbnails, got {column.type}")
    if column.null_count:
        raise ValueError("thumbnail column has nulls (undecodable images have no thumbnail)")
    data = np.frombuffer(column.buffers()[1], np.uint8)
    start = column.offset * THUMB_BYTES
    return data[start: start + len(column) * THUMB_BYTES].reshape(len(column), THUMB_BYTES)


def to_binary(thumbs: np.ndarray) -> pa.Array:
    """Thumbnails as a plain ``binary`` column (what travels through an engine: Spark has no fixed-size
    binary type); :func:`from_binary` reads it back."""
    return to_arrow(thumbs).cast(pa.binary())


def from_binary(column) -> np.ndarray:
    """Thumbnails (N, THUMB_BYTES) uint8 from a ``binary`` (or ``fixed_size_binary``) column; a value of
    another length is an error."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type != pa.binary(THUMB_BYTES):
        try:
            column = column.cast(pa.binary(THUMB_BYTES))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"expected thumbnails of {THUMB_BYTES} bytes: {exc}") from exc
    return from_arrow(column)


def tar_thumbnails(tar_path: PathLike, keys: Optional[Set[str]] = None
                   ) -> Tuple[List[str], np.ndarray, Dict[str, str]]:
    """Thumbnails of the samples of one tar (only ``keys`` when given): (keys, (N, THUMB_BYTES) uint8,
    {key: error} for images that do not decode). The same decode as the pHash's."""
    got: List[str] = []
    thumbs: List[np.ndarray] = []
    errors: Dict[str, str] = {}
    for key, gray, error in iter_tar_grays(tar_path, keys):
        if error is not None:
            errors[key] = error
            continue
        got.append(key)
        thumbs.append(thumbnails(gray[None])[0])
    return got, (np.stack(thumbs) if thumbs else np.zeros((0, THUMB_BYTES), np.uint8)), errors


def tar_hashes_thumbnails(tar_path: PathLike, keys: Optional[Set[str]] = None
                          ) -> Tuple[List[str], np.ndarray, Dict[str, str], np.ndarray]:
    """:func:`ccmb.corpus.primitives.phash.phash_tar` and the thumbnails of the same images, from one decode:
    (keys, hash variants (N, VARIANTS) int64, {key: error}, thumbnails (N, THUMB_BYTES) uint8)."""
    parts: List[np.ndarray] = []
    got, values, errors = phash_tar(tar_path, keys, on_grays=lambda g: parts.append(thumbnails(g)))
    return got, values, errors, (np.concatenate(parts) if parts else np.zeros((0, THUMB_BYTES), np.uint8))


def _as_thumbs(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != THUMB_BYTES:
        raise ValueError(f"expected (N, {THUMB_BYTES}) thumbnails, got {t.shape}")
    return t


LEVELS = 256


def _histograms(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per row, the counts (N, 256) of the gray levels of ``v`` (int, 0..255) where ``ok``."""
    n = len(v)
    idx = (v + (np.arange(n, dtype=np.int64) * LEVELS)[:, None])[ok]
    return np.bincount(idx, minlength=n * LEVELS).reshape(n, LEVELS)


def _first_level_reaching(cum: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, for each rank count in ``k`` (N, M), the first level u with cum[u] >= k (a searchsorted over
    every row at once: rows are shifted apart by more than any count)."""
    n = len(cum)
    shift = (np.arange(n, dtype=np.int64) * (PIXELS + 1))[:, None]
    u = np.searchsorted((cum + shift).ravel(), (k + shift).ravel(), side="left").reshape(k.shape)
    return np.clip(u - (np.arange(n, dtype=np.int64) * LEVELS)[:, None], 0, LEVELS - 1)


def _sum_of_smallest(hist: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, the sum of the ``k`` smallest values (N, M) of the distribution ``hist`` (N, 256)."""
    cum = np.cumsum(hist, axis=1)
    sums = np.cumsum(hist * np.arange(LEVELS), axis=1)
    u = _first_level_reaching(cum, k)
    below = np.where(u > 0, np.take_along_axis(cum, np.maximum(u - 1, 0), 1), 0)
    below_sum = np.where(u > 0, np.take_along_axis(sums, np.maximum(u - 1, 0), 1), 0)
    return below_sum + (k - below) * u


def _matched_to(src: np.ndarray, src_hist: np.ndarray, ref_hist: np.ndarray) -> np.ndarray:
    """``src`` (int gray levels) given the value distribution of ``ref`` over the compared pixels
    (histogram matching; the pixels of one ``src`` level share the mean of their targets)."""
    hi = np.cumsum(src_hist, axis=1)
    lo = hi - src_hist
    target = (_sum_of_smallest(ref_hist, hi) - _sum_of_smallest(ref_hist, lo)) / np.maximum(src_hist, 1)
    return np.take_along_axis(target, src, 1).astype(np.float32)


def _quartiles(hist: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per row, the 25/50/75% quantiles (nearest rank) of the distribution ``hist``, shape (N, 3)."""
    ranks = np.rint(np.array([0.25, 0.5, 0.75]) * np.maximum(count - 1, 0)[:, None]).astype(np.int64)
    return _first_level_reaching(np.cumsum(hist, axis=1), ranks + 1).astype(np.float32)


def _affine_to(src: np.ndarray, src_hist: np.ndarray, ref_hist: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``src`` mapped by the affine tone map (brightness, contrast) that matches the median and the
    inter-quartile range of ``ref`` (robust: clipped or overlaid pixels barely move them)."""
    s, r = _quartiles(src_hist, count), _quartiles(ref_hist, count)
    s_iqr, r_iqr = (s[:, 2] - s[:, 0])[:, None], (r[:, 2] - r[:, 0])[:, None]
    alpha = np.clip(np.where(s_iqr > 0.5, r_iqr / np.maximum(s_iqr, 1e-9), 1.0), 0.5, 2.0)
    return alpha * (src - s[:, 1:2]) + r[:, 1:2]


def _gradient(x: np.ndarray) -> np.ndarray:
    """Largest absolute difference of each pixel to its 4 neighbours, (N, PIXELS)."""
    g = x.reshape(-1, SIDE, SIDE)
    out = np.zeros_like(g)
    d = np.abs(np.diff(g, axis=1))
    out[:, 1:, :] = d
    out[:, :-1, :] = np.maximum(out[:, :-1, :], d)
    d = np.abs(np.diff(g, axis=2))
    out[:, :, 1:] = np.maximum(out[:, :, 1:], d)
    out[:, :, :-1] = np.maximum(out[:, :, :-1], d)
    return out.reshape(len(g), PIXELS)


def _share_one_way(ref, src, ref_hist, src_hist, ok, count, noise_levels: float, edge_share: float) -> np.ndarray:
    """Share of compared pixels where ``src``, aligned to ``ref`` (the better of the two alignments),
    differs from ``ref``."""
    ref_f = ref.astype(np.float32)
    grad_ref = _gradient(ref_f)
    best = None
    for aligned in (_affine_to(src.astype(np.float32), src_hist, ref_hist, count),
                    _matched_to(src, src_hist, ref_hist)):
        tol = noise_levels + edge_share * np.maximum(grad_ref, _gradient(np.where(ok, aligned, ref_f)))
        share = ((np.abs(ref_f - aligned) > tol) & ok).sum(1) / np.maximum(count, 1)
        best = share if best is None else np.minimum(best, share)
    return best


def _share_variants(a: np.ndarray, b: np.ndarray, i: int, j: int, noise_levels: float, edge_share: float
                    ) -> np.ndarray:
    x = a[:, i * PIXELS:(i + 1) * PIXELS].astype(np.int64)
    y = b[:, j * PIXELS:(j + 1) * PIXELS].astype(np.int64)
    ok = (x < SATURATED) & (y < SATURATED)
    count = ok.sum(1)
    hx, hy = _histograms(x, ok), _histograms(y, ok)
    share = np.maximum(_share_one_way(x, y, hx, hy, ok, count, noise_levels, edge_share),
                       _share_one_way(y, x, hy, hx, ok, count, noise_levels, edge_share))
    return np.where(count > 0, share, 1.0)  # nothing comparable (both blown out): not the same


def different_share(a: np.ndarray, b: np.ndarray, mirror: bool = False, stop_at: Optional[float] = None,
                    noise_levels: float = NOISE_LEVELS, edge_share: float = EDGE_SHARE,
                    pairs: Sequence[Tuple[int, int]] = CHECK_PAIRS) -> np.ndarray:
    """Per pair (a[i], b[i]) of thumbnail rows (N, THUMB_BYTES), the share (0..1) of the picture that
    differs at the best-aligned variant pair (``mirror``: the mirror image of ``b`` is tried too).

    ``stop_at``: a pair whose share is already at most this skips the remaining variant pairs (its value
    is then an upper bound below ``stop_at``: enough for a decision). ``noise_levels`` and ``edge_share``:
    the pixel tolerance (defaults :data:`NOISE_LEVELS`, :data:`EDGE_SHARE`)."""
    a, b = _as_thumbs(a), _as_thumbs(b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} thumbnails against {len(b)}")
    out = np.ones(len(a))
    for other in ((b, mirrored(b)) if mirror and len(b) else (b,)):
        for i, j in pairs:
            todo = np.flatnonzero(out > stop_at) if stop_at is not None else np.arange(len(a))
            if not len(todo):
                return out
            out[todo] = np.minimum(out[todo], _share_variants(a[todo], other[todo], i, j, noise_levels, edge_share))
    return out


def same_image(a: np.ndarray, b: np.ndarray, mirror: bool = False,
               max_share: float = MAX_DIFFERENT_SHARE) -> np.ndarray:
    """The decision of a candidate pair (bool per row pair): at most ``max_share`` of the picture differs."""
    return different_share(a, b, mirror=mirror, stop_at=max_share) <= max_share
