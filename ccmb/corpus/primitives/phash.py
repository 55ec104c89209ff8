"""64-bit perceptual hashes (pHash) of the images of a download folder, with numpy/scipy.

pHash of an image: decode (JPEG decoded at reduced scale via PIL's draft mode), convert to grayscale,
resize to 32x32, 2-D DCT-II, keep the top-left 8x8 coefficients (lowest frequencies, DC included), and set
bit i when coefficient i is above the median of the 64. Bit 0 is the most significant bit of the
``uint64``. Resized or re-encoded copies of an image differ in a few bits; different images in ~32.
The DCT runs batched over many images at once (``scipy.fft.dctn``).

Every image gets :data:`VARIANTS` hashes from one decode: the whole image and its central 90% and 80%
crops. The exact check of two images (:func:`variant_distance`) is the smallest Hamming distance over
:data:`VARIANT_PAIRS`: whole vs whole, whole vs 90% centre both ways (a copy with a few percent of border
cropped away hashes like the original's centre) and 80% centre vs 80% centre (a watermark or caption
overlaid near the border leaves the centre alone). Measured in ``perf/bench_neardup.py``.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import Image

from ... import shards as fmt
from ...images import ImageDecodeError, open_image
from ...types import PathLike

logger = logging.getLogger(__name__)

HASH_SIZE = 8
IMG_SIZE = 32
BATCH = 512
#: Hashes per image: 0 = whole image, then central crops keeping these shares of each side.
CENTER_SHARES = (0.9, 0.8)
VARIANTS = 1 + len(CENTER_SHARES)
#: Variant pairs compared by the exact check (both orders).
VARIANT_PAIRS = ((0, 0), (0, 1), (1, 0), (2, 2))
VARIANT_COLUMNS = ("phash", "phash_c90", "phash_c80")


def _decode_gray(data: bytes, source: str) -> Image.Image:
    # JPEG: decode at 1/2..1/8 scale, much faster
    img = open_image(data, source=source, draft=("L", (2 * IMG_SIZE, 2 * IMG_SIZE)))
    try:
        return img.convert("L")
    except Exception as exc:  # PIL raises many types
        raise ImageDecodeError(f"cannot decode image ({source}): {exc}") from exc


def _small(img: Image.Image, box=None) -> np.ndarray:
    try:
        out = img.resize((IMG_SIZE, IMG_SIZE), Image.Resampling.BILINEAR, box=box)
    except Exception as exc:  # PIL raises many types
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc
    return np.asarray(out, dtype=np.float32)


def center_box(width: int, height: int, share: float) -> tuple:
    dx, dy = width * (1 - share) / 2, height * (1 - share) / 2
    return (dx, dy, width - dx, height - dy)


def gray32(data: bytes, source: str = "") -> np.ndarray:
    """Decode image bytes to a 32x32 float32 grayscale array (pixel cap of :mod:`ccmb.images`)."""
    return _small(_decode_gray(data, source))


def _variant_grays(img: Image.Image) -> List[np.ndarray]:
    return [_small(img)] + [_small(img, center_box(*img.size, share)) for share in CENTER_SHARES]


def gray32_variants(data: bytes, source: str = "") -> np.ndarray:
    """The :data:`VARIANTS` 32x32 grayscale arrays of an image (whole, centre crops), shape (VARIANTS, 32, 32)."""
    return np.stack(_variant_grays(_decode_gray(data, source)))


def phash_with_mirror(data: bytes, source: str = "") -> np.ndarray:
    """Hash variants of an image and of its mirror image, shape (2 * VARIANTS,) uint64: the variants,
    then the mirror image's variants (one decode, the same pipeline as the corpus side)."""
    img = _decode_gray(data, source)
    mirror = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return phash_arrays(np.stack(_variant_grays(img) + _variant_grays(mirror)))


def phash_variants_images(images: Sequence[Image.Image], mirrored: bool = False) -> np.ndarray:
    """Hash variants (N, VARIANTS) uint64 of PIL images (``mirrored``: of their mirror images)."""
    grays = []
    for img in images:
        g = img.convert("L")
        if mirrored:
            g = g.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        grays.append(np.stack(_variant_grays(g)))
    if not grays:
        return np.zeros((0, VARIANTS), np.uint64)
    return phash_arrays(np.concatenate(grays)).reshape(-1, VARIANTS)


def phash_arrays(gray: np.ndarray) -> np.ndarray:
    """pHashes (uint64) of a batch of 32x32 grayscale images, shape (N, 32, 32)."""
    if gray.ndim != 3 or gray.shape[1:] != (IMG_SIZE, IMG_SIZE):
        raise ValueError(f"expected (N, {IMG_SIZE}, {IMG_SIZE}), got {gray.shape}")
    if len(gray) == 0:
        return np.zeros(0, np.uint64)
    import scipy.fft  # here, not at import: ``ccmb --help`` imports this module

    coeffs = scipy.fft.dctn(gray.astype(np.float64), type=2, axes=(1, 2))
    low = coeffs[:, :HASH_SIZE, :HASH_SIZE].reshape(len(gray), HASH_SIZE * HASH_SIZE)
    med = np.median(low, axis=1, keepdims=True)
    bits = low > med
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def phash_bytes(images: Sequence[bytes]) -> np.ndarray:
    """pHashes of encoded images (raises :class:`ImageDecodeError` on the first undecodable one)."""
    return phash_arrays(np.stack([gray32(b) for b in images])) if images else np.zeros(0, np.uint64)


def phash_variants_bytes(images: Sequence[bytes]) -> np.ndarray:
    """Hash variants (N, VARIANTS) uint64 of encoded images."""
    if not len(images):
        return np.zeros((0, VARIANTS), np.uint64)
    return phash_arrays(np.concatenate([gray32_variants(b) for b in images])).reshape(-1, VARIANTS)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of two uint64 arrays."""
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64))).astype(np.int64)


def variant_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact check of the pHash level: per pair (a[i], b[i]) of variant rows (N, VARIANTS), the
    smallest Hamming distance over :data:`VARIANT_PAIRS`."""
    a, b = np.atleast_2d(a).view(np.uint64), np.atleast_2d(b).view(np.uint64)
    d = None
    for i, j in VARIANT_PAIRS:
        h = hamming(a[:, i], b[:, j])
        d = h if d is None else np.minimum(d, h)
    return d


def iter_tar_grays(tar_path: PathLike, keys: Optional[Set[str]] = None
                   ) -> Iterator[Tuple[str, Optional[np.ndarray], Optional[str]]]:
    """(key, its :func:`gray32_variants` or None, the decode error or None) of the samples of one tar (only
    ``keys`` when given), in tar order: the one decode every image check of a tar starts from."""
    for sample in fmt.iter_tar_samples(tar_path):
        if keys is not None and sample.key not in keys:
            continue
        try:
            yield sample.key, gray32_variants(sample.image, source=f"{tar_path}:{sample.key}.{sample.image_ext}"), None
        except ImageDecodeError as exc:
            yield sample.key, None, str(exc)


def phash_tar(tar_path: PathLike, keys: Optional[Set[str]] = None, on_grays: Optional[Callable] = None
              ) -> Tuple[List[str], np.ndarray, Dict[str, str]]:
    """pHashes of the samples of one tar (only ``keys`` when given).

    Returns (keys, hash variants as int64 of shape (N, VARIANTS), {key: error} for images that do not
    decode). ``on_grays(batch)``, when given, sees every batch of gray variants (n, VARIANTS, 32, 32) in key
    order (the second image check keeps its thumbnails from the same decode).
    """
    out_keys: List[str] = []
    errors: Dict[str, str] = {}
    grays: List[np.ndarray] = []
    hashes: List[np.ndarray] = []

    def flush() -> None:
        batch = np.stack(grays)
        hashes.append(phash_arrays(batch.reshape(-1, IMG_SIZE, IMG_SIZE)).reshape(-1, VARIANTS))
        if on_grays is not None:
            on_grays(batch)
        grays.clear()

    for key, gray, error in iter_tar_grays(tar_path, keys):
        if error is not None:
            errors[key] = error
            continue
        out_keys.append(key)
        grays.append(gray)
        if len(grays) >= BATCH:
            flush()
    if grays:
        flush()
    values = np.concatenate(hashes) if hashes else np.zeros((0, VARIANTS), np.uint64)
    return out_keys, values.view(np.int64), errors
