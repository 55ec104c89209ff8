"""The download's decoder: 16-bit, palette, CMYK, grey+alpha and alpha images converted correctly; the memory of
a decode bounded by a budget that counts channels and bit depth; ordinary images as img2dataset stores them."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from ccmb.corpus.download.decode import Resizer, composite_on_white
from ccmb.images import DECODE_SLACK_BYTES, decode_bytes_needed, decode_image, probe


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _stored(data: bytes, size: int = 64, mode: str = "no") -> np.ndarray:
    img, *_, err = Resizer(size, mode)(data)
    assert err is None, err
    return cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_UNCHANGED)


def test_a_16bit_gradient_stays_a_gradient():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16)[None, :].repeat(32, 0)
    for arr in (ramp, np.dstack([ramp, ramp, ramp]), np.dstack([ramp, ramp, ramp, np.full_like(ramp, 65535)])):
        out = _stored(_png(arr), 256)
        row = (out if out.ndim == 2 else out[..., 0])[16].astype(int)
        assert abs(row[0] - 0) <= 3 and abs(row[-1] - 255) <= 3 and abs(row[128] - 128) <= 4, row[::32]
        assert np.all(np.diff(row[::16]) > 0)  # still rising: not the near-white image img2dataset stored
    # the same through PIL's decode_image (training / benchmark side)
    pil16 = io.BytesIO()
    Image.fromarray(ramp).save(pil16, "PNG")
    grey = np.asarray(decode_image(pil16.getvalue(), mode="L"))[16].astype(int)
    assert abs(grey[0]) <= 1 and abs(grey[-1] - 255) <= 1 and abs(grey[128] - 128) <= 2


def test_alpha_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 200  # red in BGRA
    rgba[:, :4, 3] = 255  # left half opaque, right half transparent
    rgba[0, 0, 3] = 128
    out = composite_on_white(rgba)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert tuple(out[1, 1]) == (0, 0, 200) and tuple(out[1, 6]) == (255, 255, 255)
    assert tuple(out[0, 0]) == (127, 127, 227)  # 200*128/255 + (255-128) = 227.39: rounded
    la = Image.new("LA", (8, 8), (0, 0))
    la.paste((50, 255), (0, 0, 4, 8))
    buf = io.BytesIO()
    la.save(buf, "PNG")
    grey = _stored(buf.getvalue())
    assert grey[0, 0].tolist() in ([50, 50, 50], 50) and np.all(grey[:, 6] == 255)


@pytest.mark.parametrize("kind", ["palette", "palette_transparent", "cmyk", "grey", "bilevel"])
def test_palette_cmyk_grey_and_1bit_match_pils_conversion(kind):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    if kind == "palette":
        rgb.convert("P").save(buf, "PNG")
    elif kind == "palette_transparent":
        rgb.convert("P").save(buf, "PNG", transparency=0)
    elif kind == "cmyk":
        rgb.convert("CMYK").save(buf, "JPEG", quality=98)
    elif kind == "grey":
        rgb.convert("L").save(buf, "PNG")
    else:
        rgb.convert("1").save(buf, "PNG")
    data = buf.getvalue()
    ref = Image.open(io.BytesIO(data))
    if kind == "palette_transparent":
        ref = Image.alpha_composite(Image.new("RGBA", ref.size, (255, 255, 255, 255)), ref.convert("RGBA"))
    out = _stored(data, 48)
    # the reference conversion, stored the same way (JPEG, quality 95): only the conversions may differ
    ref_arr = np.asarray(ref.convert("L")) if out.ndim == 2 else np.asarray(ref.convert("RGB"))[..., ::-1]
    ref_stored = cv2.imdecode(cv2.imencode(".jpg", np.ascontiguousarray(ref_arr),
                                           [int(cv2.IMWRITE_JPEG_QUALITY), 95])[1], cv2.IMREAD_UNCHANGED)
    assert out.shape == ref_stored.shape, kind
    assert np.abs(out.astype(float) - ref_stored.astype(float)).mean() < (1.5 if kind == "cmyk" else 0.5), kind


@pytest.mark.parametrize("mode", ["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"])
def test_ordinary_images_are_stored_as_img2dataset_stores_them(mode):
    from img2dataset.resizer import Resizer as I2DResizer

    rng = np.random.default_rng(1)
    for shape in ((300, 400, 3), (120, 90, 3), (50, 70)):
        arr = (rng.random(shape) * 255).astype(np.uint8)
        for data in (_png(arr), cv2.imencode(".jpg", arr)[1].tobytes(), _png(np.dstack([arr] * 1 + [arr[..., :1]]))
                     if arr.ndim == 3 else _png(arr)):
            ours = Resizer(96, mode)(data)
            theirs = I2DResizer(image_size=96, resize_mode=mode, resize_only_if_bigger=False)(io.BytesIO(data))
            assert ours[5] is None and theirs[5] is None
            assert ours[:5] == theirs[:5], (mode, shape)


def test_the_decode_budget_counts_channels_and_bit_depth():
    rgba16 = _png(np.zeros((1000, 1000, 4), np.uint16))
    info = probe(rgba16)
    assert (info.width, info.height, info.channels, info.bits) == (1000, 1000, 4, 16)
    need = decode_bytes_needed(info)
    assert need >= 1000 * 1000 * (4 * 2 + 4 + 3)  # 16-bit decode, its 8-bit copy, the copy without alpha
    grey8 = decode_bytes_needed(probe(_png(np.zeros((1000, 1000), np.uint8))))
    assert grey8 - DECODE_SLACK_BYTES == 1000 * 1000  # one 8-bit channel
    assert need - DECODE_SLACK_BYTES == 1000 * 1000 * 15
    img, *_, err = Resizer(64, "keep_ratio", budget_bytes=need - 1)(rgba16)
    assert img is None and err.startswith("image over the decode budget: 1000x1000, 4 channel(s) of 16 bits need ~")
    assert Resizer(64, "keep_ratio", budget_bytes=need)(rgba16)[5] is None
    assert Resizer(64, "keep_ratio")(b"<html>not an image</html>")[5].startswith("Image decoding error")


MEASURE = """
import json, sys, tracemalloc
import numpy as np, cv2
from ccmb.corpus.download.decode import Resizer
from ccmb.images import decode_bytes_needed, probe
data = open(sys.argv[1], "rb").read()
Resizer(256, "keep_ratio")(cv2.imencode(".png", np.zeros((64, 64, 4), np.uint8))[1].tobytes())  # warm up
tracemalloc.start()
out = Resizer(256, "keep_ratio")(data)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"ok": out[5] is None, "peak": peak, "need": decode_bytes_needed(probe(data)), "bytes": len(data)}))
"""


@pytest.mark.parametrize("shape,dtype", [((4000, 4000, 4), np.uint8), ((3000, 3000, 4), np.uint16),
                                         ((4000, 4000, 3), np.uint8)])
def test_the_peak_memory_of_a_decode_stays_within_its_estimate(tmp_path, shape, dtype):
    """A large PNG, small on the wire: the decode's peak memory (numpy/OpenCV arrays, traced) is within the
    estimate the budget checks; img2dataset's float matting of an RGBA image took ~73 bytes per pixel."""
    a = np.zeros(shape, dtype)
    a[::7, ::5] = 200
    (tmp_path / "big.png").write_bytes(_png(a))
    del a
    res = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "big.png")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    pixels = shape[0] * shape[1]
    assert m["ok"] and m["bytes"] < 2_000_000
    assert pixels * shape[2] * np.dtype(dtype).itemsize <= m["peak"] <= m["need"], m  # decoded pixels .. estimate
    assert m["need"] <= pixels * 15 + (8 << 20)  # at most 15 bytes per pixel (RGBA 16-bit), not 73
