"""Safe image decoding shared by every package: a pixel cap against decompression bombs."""
from __future__ import annotations

import io
import warnings
from typing import Optional, Tuple

from PIL import Image, UnidentifiedImageError

#: Largest image we agree to decode (pixels). PIL's own default warns at ~89M and fails at 2x that;
#: we fail cleanly above this many pixels instead.
MAX_IMAGE_PIXELS = 16_384 * 16_384

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (or exceed the pixel cap)."""


def open_image(data: bytes, *, source: str = "", max_pixels: int = MAX_IMAGE_PIXELS,
               draft: Optional[Tuple[str, Tuple[int, int]]] = None) -> Image.Image:
    """Open ``data`` and decode it fully under the pixel cap; ``draft=(mode, size)`` lets JPEG decode at a
    reduced scale (fast thumbnails). Raises :class:`ImageDecodeError` naming ``source``."""
    where = f" ({source})" if source else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(f"image too large{where}: {w}x{h} exceeds {max_pixels} pixels")
            if draft is not None:
                img.draft(*draft)
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb{where}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"cannot decode image{where}: not a recognised image format") from exc
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError ...)
        raise ImageDecodeError(f"cannot decode image{where}: {exc}") from exc
    return img


def decode_image(data: bytes, *, mode: Optional[str] = "RGB", source: str = "",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``data`` fully (truncated files fail here, not later) and convert to ``mode``.

    ``source`` names the file/URL/key in the error message.
    """
    img = open_image(data, source=source, max_pixels=max_pixels)
    if mode is not None and img.mode != mode:
        img = img.convert(mode)
    return img
