"""Decode, convert and resize one downloaded image within a memory budget (replaces img2dataset's Resizer).

Before anything is decoded, the image's header gives its size, channels and bit depth
(:func:`ccmb.images.probe`); the memory the decode needs (:func:`ccmb.images.decode_bytes_needed`: the
decoded pixels at their depth, the 8-bit copy, the alpha-composited copy) must fit ``budget_bytes``
(``--decode-budget-mb``), else the row fails as ``failed_to_resize`` with the sizes. Then:

* 16-bit images are scaled to 8 bits (``v * 255 / 65535``, so a 16-bit gradient stays a gradient), floats
  from [0, 1];
* alpha is composited on white (integer arithmetic, row block by row block: no float copies of the image);
* palette, CMYK, grey + alpha and 1-bit images arrive from OpenCV as BGR/BGRA/grey and are handled as such;
* geometry as img2dataset's resize modes (``keep_ratio``: shorter side = ``image_size``; INTER_AREA to
  shrink, LANCZOS4 to enlarge ...): an ordinary 8-bit image gives the same bytes as img2dataset.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ...images import MAX_IMAGE_PIXELS, ImageDecodeError, decode_bytes_needed, probe

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
DEFAULT_BUDGET_MB = 1024
#: Rows composited at a time (bounds the temporaries of alpha compositing).
ALPHA_BLOCK_ROWS = 64

Result = Tuple[Optional[bytes], Optional[int], Optional[int], Optional[int], Optional[int], Optional[str]]


class Resizer:
    """``resizer(data) -> (encoded bytes, width, height, original width, original height, error)``."""

    def __init__(self, image_size: int, resize_mode: str, encode_quality: int = 95,
                 budget_bytes: int = DEFAULT_BUDGET_MB << 20, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if image_size < 1:
            raise ValueError("image_size must be positive")
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.encode_quality = encode_quality
        self.budget_bytes = budget_bytes
        self.max_pixels = max_pixels

    def __call__(self, data: bytes) -> Result:
        import cv2

        try:
            info = probe(data)
        except ImageDecodeError as exc:
            return None, None, None, None, None, f"Image decoding error ({exc})"
        if info.width * info.height > self.max_pixels:
            return None, None, None, None, None, (f"image too large: {info.width}x{info.height} exceeds "
                                                  f"{self.max_pixels} pixels")
        need = decode_bytes_needed(info)
        if need > self.budget_bytes:
            return None, None, None, None, None, (
                f"image over the decode budget: {info.width}x{info.height}, {info.channels} channel(s) of "
                f"{info.bits} bits need ~{need >> 20} MiB to decode, budget {self.budget_bytes >> 20} MiB "
                "(--decode-budget-mb)")
        cv2.setNumThreads(1)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            return None, None, None, None, None, "Image decoding error"
        try:
            img = to_8bit(img)
            img = composite_on_white(img)
        except ValueError as exc:
            return None, None, None, None, None, str(exc)
        original_height, original_width = img.shape[:2]
        img = self._geometry(img)
        height, width = img.shape[:2]
        ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), self.encode_quality])
        if not ok:
            return None, None, None, None, None, "Image encoding error"
        return buf.tobytes(), width, height, original_width, original_height, None

    def _geometry(self, img: np.ndarray) -> np.ndarray:
        import cv2

        size = self.image_size
        h, w = img.shape[:2]
        if self.resize_mode == "no":
            return img
        if self.resize_mode in ("keep_ratio", "center_crop"):
            downscale = min(w, h) > size
            scale = size / min(h, w)
        else:
            downscale = max(w, h) > size
            scale = size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        if (new_h, new_w) != (h, w):
            img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA if downscale else cv2.INTER_LANCZOS4)
        if self.resize_mode == "center_crop":
            h, w = img.shape[:2]
            y, x = (h - size) // 2, (w - size) // 2
            img = img[max(0, y):max(0, y) + size, max(0, x):max(0, x) + size]
        elif self.resize_mode == "border":
            h, w = img.shape[:2]
            top, left = max(0, (size - h) // 2), max(0, (size - w) // 2)
            bottom, right = max(0, size - h - top), max(0, size - w - left)
            if top or bottom or left or right:
                img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=[255, 255, 255])
        return img


def to_8bit(img: np.ndarray) -> np.ndarray:
    """8-bit samples: 16-bit scaled by 255/65535, floats taken as [0, 1]; other types refused."""
    import cv2

    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)
    if img.dtype in (np.float32, np.float64):
        return cv2.convertScaleAbs(np.clip(img, 0.0, 1.0), alpha=255.0)
    raise ValueError(f"Image decoding error (unsupported sample type {img.dtype})")


def composite_on_white(img: np.ndarray) -> np.ndarray:
    """BGRA -> BGR (and grey + alpha -> grey) over a white background: ``c * a / 255 + 255 - a``, rounded,
    in blocks of :data:`ALPHA_BLOCK_ROWS` rows (uint16 temporaries of one block only)."""
    if img.ndim != 3 or img.shape[2] not in (2, 4):
        return img
    colors = img.shape[2] - 1
    out = np.empty(img.shape[:2] + ((colors,) if colors > 1 else ()), np.uint8)
    for y in range(0, img.shape[0], ALPHA_BLOCK_ROWS):
        block = img[y:y + ALPHA_BLOCK_ROWS]
        alpha = block[:, :, colors:].astype(np.uint16)
        mixed = block[:, :, :colors].astype(np.uint16)
        mixed *= alpha
        np.subtract(255, alpha, out=alpha)
        alpha *= 255
        mixed += alpha
        mixed += 127
        mixed //= 255
        out[y:y + ALPHA_BLOCK_ROWS] = mixed if colors > 1 else mixed[:, :, 0]
    return out
