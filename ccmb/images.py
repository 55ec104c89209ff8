"""Safe image decoding shared by every package: a pixel cap against decompression bombs, a header probe that
says how much memory decoding will take (channels and bit depth counted), 16-bit images scaled to 8 bits."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

from PIL import Image, UnidentifiedImageError

#: Largest image we agree to decode (pixels). PIL's own default warns at ~89M and fails at 2x that;
#: we fail cleanly above this many pixels instead.
MAX_IMAGE_PIXELS = 16_384 * 16_384

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (or exceed the pixel cap)."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: size, the channels a decoder produces, bits per sample, format, mode."""

    width: int
    height: int
    channels: int
    bits: int
    format: str
    mode: str

    @property
    def alpha(self) -> bool:
        return self.channels in (2, 4) and self.mode != "CMYK"


#: Channels a decoder (OpenCV's IMREAD_UNCHANGED) produces per PIL mode; palettes expand to BGR(A).
_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "I;16N": 1, "LA": 4, "La": 4,
             "PA": 4, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4}
_BITS = {"I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}
#: Fixed allowance of :func:`decode_bytes_needed` for the decoder's own buffers and the resized copy.
DECODE_SLACK_BYTES = 8 << 20


def probe(data: bytes, *, source: str = "") -> ImageInfo:
    """Read only the header of ``data``: size, channels, bits per sample (no pixel is decoded).

    PNG's bit depth is read from its IHDR chunk and TIFF's from BitsPerSample (PIL reports 16-bit RGB as
    8-bit "RGB"). Raises :class:`ImageDecodeError` for bytes PIL does not recognise or over twice the cap."""
    where = f" ({source})" if source else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            mode, fmt = img.mode, img.format or ""
            info = dict(img.info)
            tiff_bits = getattr(img, "tag_v2", {}).get(258) if fmt == "TIFF" else None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large{where}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not a recognised image format{where}") from exc
    except Exception as exc:  # PIL raises many types for broken headers
        raise ImageDecodeError(f"unreadable image header{where}: {exc}") from exc
    channels = _CHANNELS.get(mode, 4)
    if mode == "P":
        channels = 4 if "transparency" in info else 3
    bits = _BITS.get(mode, 8)
    if fmt == "PNG" and len(data) >= 25 and data[12:16] == b"IHDR":
        bits = max(bits if bits != 32 else 8, data[24])
    elif tiff_bits:
        values = tiff_bits if isinstance(tiff_bits, tuple) else (tiff_bits,)
        bits = max(bits, *[int(v) for v in values])
    return ImageInfo(width, height, channels, max(8, bits), fmt, mode)


def decode_bytes_needed(info: ImageInfo) -> int:
    """Memory (bytes) decoding ``info``'s image to 8-bit BGR takes at its peak: the decoded samples at their
    depth, their 8-bit copy when deeper, the copy without alpha, plus :data:`DECODE_SLACK_BYTES`."""
    pixels = info.width * info.height
    sample = (info.bits + 7) // 8
    need = pixels * info.channels * sample
    if sample > 1:
        need += pixels * info.channels
    if info.alpha or info.channels == 4:
        need += pixels * (info.channels - 1)
    return need + DECODE_SLACK_BYTES


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
        img = to_8bit(img).convert(mode)
    return img


def to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit single-channel images scaled to 8 bits (PIL's own conversion clips at 255, turning a
    16-bit photo white); anything else unchanged."""
    if img.mode not in _BITS:
        return img
    import numpy as np

    arr = np.asarray(img)
    if img.mode == "F":
        scaled = np.clip(arr, 0.0, 1.0) * 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
        scaled = arr.astype(np.float64) * (255.0 / top)
    return Image.fromarray(np.rint(np.clip(scaled, 0, 255)).astype(np.uint8), "L")
