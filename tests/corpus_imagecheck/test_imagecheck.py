"""The second image check of near-duplicate candidates (``ccmb.corpus.primitives.imagecheck``): different dark or
foggy, low-texture photos carrying the same caption pass the pHash threshold and are rejected;
real copies (re-encoded, resized, cropped, brighter, darker, overlaid, mirrored for decontamination) are
accepted. Images are generated here (smooth random fields), not downloaded."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from ccmb.corpus.primitives import imagecheck
from ccmb.corpus.primitives.phash import VARIANTS, gray32_variants, phash_variants_bytes, variant_distance

PHASH_DEDUP, PHASH_DECON = 4, 6  # the defaults of the pHash level and of decontamination


def _photo(seed: int, size=(320, 256), gain: float = 1.0, offset: float = 0.0, cells: int = 6) -> Image.Image:
    """A smooth random 'photo' (a cells x cells colour field, bicubic), its levels x ``gain`` + ``offset``."""
    small = np.random.default_rng(seed).integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), np.float32)
    return Image.fromarray((offset + gain * arr).clip(0, 255).astype(np.uint8))


def _dark(seed: int) -> Image.Image:
    return _photo(seed, gain=0.08, offset=6, cells=32)


def _caption(im: Image.Image, text: str = "SUBSCRIBE FOR MORE", fill=(255, 255, 255)) -> Image.Image:
    im = im.copy()
    font = ImageFont.load_default(size=im.width // 11)
    ImageDraw.Draw(im).text((im.width // 2, int(im.height * 0.8)), text, fill=fill, font=font, anchor="mm")
    return im


def _framed(im: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (320, 320), (245, 245, 245))
    d = ImageDraw.Draw(canvas)
    d.rectangle((0, 0, 320, 40), fill=(30, 120, 200))
    d.text((160, 20), "PHOTO OF THE DAY", fill=(255, 255, 255), font=ImageFont.load_default(size=22), anchor="mm")
    photo = im.copy()
    photo.thumbnail((190, 190))
    canvas.paste(photo, ((320 - photo.width) // 2, 70))
    return canvas


def _jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _crop5(im: Image.Image) -> Image.Image:
    dx, dy = im.width // 20, im.height // 20
    return im.crop((dx, dy, im.width - dx, im.height - dy))


def _small_overlay(im: Image.Image) -> Image.Image:
    im = im.copy()
    ImageDraw.Draw(im).text((int(im.width * 0.04), int(im.height * 0.9)), "(c) ccmb 2024", fill=(255, 255, 255))
    return im


COPIES = {
    "jpeg30": lambda im: _jpeg(im, 30),
    "resize50": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)),
    "crop5": lambda im: _jpeg(_crop5(im)),
    "bright+20": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.2)),
    "bright-20": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.8)),
    "overlay": lambda im: _jpeg(_small_overlay(im)),
}


def _thumbs(images):
    return imagecheck.thumbnails_bytes(images)


def _pairs_within(hashes: np.ndarray, threshold: int):
    return [(i, j) for i, j in itertools.combinations(range(len(hashes)), 2)
            if variant_distance(hashes[i], hashes[j])[0] <= threshold]


def test_dark_low_texture_photos_with_the_same_caption_are_rejected():
    # different dark, low-texture photos (a fine-grained field, levels x0.08 + 6: grey std ~3, visible), the
    # same white caption on each: the caption is their only strong contrast, so pHash calls many of them copies
    images = [_jpeg(_caption(_dark(seed))) for seed in range(12)]
    hashes = phash_variants_bytes(images)
    candidates = _pairs_within(hashes, PHASH_DECON)
    assert len(candidates) >= 5, "the caption should make pHash candidates of different photos"
    t = _thumbs(images)
    a, b = (np.array(x) for x in zip(*candidates))
    assert not imagecheck.same_image(t[a], t[b]).any(), imagecheck.different_share(t[a], t[b])
    assert not imagecheck.same_image(t[a], t[b], mirror=True).any()  # decontamination's form too
    # and every one of them still finds its own copies
    for im_seed in (0, 5):
        im = _caption(_dark(im_seed))
        copies = _thumbs([f(im) for f in COPIES.values()])
        assert imagecheck.same_image(np.repeat(_thumbs([_jpeg(im)]), len(copies), 0), copies).all()


def _textured(seed: int, top: float, bottom: float, texture: float, size=(320, 256)) -> Image.Image:
    """One composition (a vertical gradient ``top`` -> ``bottom``) with this seed's fine texture of
    +-``texture`` gray levels: different photos of the same flat scene."""
    w, h = size
    grad = np.linspace(top, bottom, h, dtype=np.float32)[:, None, None] * np.ones((1, w, 3), np.float32)
    small = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tex = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), np.float32) / 255 - 0.5
    return Image.fromarray((grad + 2 * texture * tex).clip(0, 255).astype(np.uint8))


def test_foggy_photos_with_the_same_dark_caption_are_rejected():
    images = [_jpeg(_caption(_textured(100 + s, 200, 150, 8), fill=(20, 20, 20))) for s in range(20)]
    candidates = _pairs_within(phash_variants_bytes(images), PHASH_DECON)
    assert len(candidates) >= 5, "the shared caption should make pHash candidates"
    t = _thumbs(images)
    a, b = (np.array(x) for x in zip(*candidates))
    assert not imagecheck.same_image(t[a], t[b], mirror=True).any(), imagecheck.different_share(t[a], t[b])
    im = _caption(_textured(100, 200, 150, 8), fill=(20, 20, 20))
    copies = _thumbs([f(im) for f in COPIES.values()])
    assert imagecheck.same_image(np.repeat(_thumbs([_jpeg(im)]), len(copies), 0), copies).all()


@pytest.mark.parametrize("kind", ["plain", "dark", "framed"])
def test_real_copies_are_accepted(kind):
    # plain photos keep their colour channels below 216: a brighter copy clipping colours over large areas
    # changes the grey tones non-monotonically and can be lost (perf/bench_neardup.py: bright+20 0.98-0.99)
    make = {"plain": lambda s: _photo(s, gain=0.78, offset=16), "dark": lambda s: _caption(_dark(s)),
            "framed": lambda s: _framed(_photo(s))}[kind]
    for seed in (1, 2, 3):
        im = make(seed)
        original = _thumbs([_jpeg(im)])
        copies = [f(im) for f in COPIES.values()]
        t = _thumbs(copies)
        share = imagecheck.different_share(np.repeat(original, len(copies), 0), t)
        assert (share <= imagecheck.MAX_DIFFERENT_SHARE).all(), dict(zip(COPIES, share.round(3)))
        # the pHash level proposes them (the check only confirms)
        hashes = phash_variants_bytes([_jpeg(im)] + copies)
        assert (variant_distance(np.repeat(hashes[:1], len(copies), 0), hashes[1:]) <= PHASH_DECON).all()
        # a mirrored copy: only with mirror=True (decontamination)
        flip = _thumbs([_jpeg(ImageOps.mirror(im))])
        assert imagecheck.same_image(original, flip, mirror=True).all()
        assert not imagecheck.same_image(original, flip).any()


def test_identical_and_unrelated():
    t = _thumbs([_jpeg(_photo(s)) for s in range(6)])
    assert (imagecheck.different_share(t, t) == 0).all()
    a, b = (np.array(x) for x in zip(*itertools.combinations(range(6), 2)))
    assert (imagecheck.different_share(t[a], t[b]) > 0.2).all()
    # the early stop decides the same as the full computation
    full = imagecheck.different_share(t[a], t[b]) <= imagecheck.MAX_DIFFERENT_SHARE
    assert (imagecheck.same_image(t[a], t[b]) == full).all()
    # a blown-out pair (nothing below the saturation level) is never "the same"
    white = np.full((1, imagecheck.THUMB_BYTES), 255, np.uint8)
    assert not imagecheck.same_image(white, white).any()


def test_thumbnails_column_and_shapes():
    images = [_jpeg(_photo(s)) for s in range(5)]
    t = _thumbs(images)
    assert t.shape == (5, imagecheck.THUMB_BYTES) == (5, VARIANTS * 32 * 32) and t.dtype == np.uint8
    # the same arrays as the pHash decode gives (computed at scan time from gray32_variants)
    assert (imagecheck.thumbnails(np.stack([gray32_variants(b) for b in images])) == t).all()
    assert (imagecheck.mirrored(imagecheck.mirrored(t)) == t).all()
    col = imagecheck.to_arrow(t)
    assert col.type == pa.binary(imagecheck.THUMB_BYTES) and len(col) == 5
    assert (imagecheck.from_arrow(col) == t).all()
    assert (imagecheck.from_arrow(col.slice(2, 2)) == t[2:4]).all()
    table = pa.table({"thumb": col})
    assert (imagecheck.from_arrow(table.column("thumb")) == t).all()
    assert imagecheck.thumbnails_bytes([]).shape == (0, imagecheck.THUMB_BYTES)
    with pytest.raises(ValueError, match="nulls"):
        imagecheck.from_arrow(pa.array([None, t[0].tobytes()], pa.binary(imagecheck.THUMB_BYTES)))
    with pytest.raises(ValueError, match="fixed_size_binary"):
        imagecheck.from_arrow(pa.array([b"x"]))
    with pytest.raises(ValueError, match="thumbnails"):
        imagecheck.different_share(t[:, :10], t[:, :10])
    with pytest.raises(ValueError, match="against"):
        imagecheck.different_share(t[:2], t[:3])
