"""Batched image preprocessing (ccmb_bench.adapters.pixels): bit-for-bit the library's own, or not used at all.

Each family's processor runs on a batch of images of mixed shapes (tall, wide, square, smaller and larger than
the model input): the batched copy must give the same tensor bits as the processor's own call. A copy that would
differ (a processor class overriding a step, padding, a non-RGB image, a wrong reference) must not be used.
open_clip's torchvision steps are checked in a subprocess with the open-clip extra on its path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccmb_bench.adapters import load_adapter
from ccmb_bench.adapters.pixels import BatchedPixels, NaFlexPixels, batched_pixels, batched_transform
from tests.bench.adapter_models import (build_altclip, build_chinese_clip, build_clip, build_pair, build_siglip,
                                        build_siglip2_fixed, build_siglip2_naflex)

ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {"clip": build_clip, "altclip": build_altclip, "siglip": build_siglip, "siglip2-fixed": build_siglip2_fixed,
            "chinese-clip": build_chinese_clip, "pair": build_pair, "siglip2-naflex": build_siglip2_naflex}


def mixed_images(n: int = 12, seed: int = 1):
    """RGB images of varied shapes (none of them the probe shapes) with random pixels."""
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(8, 200)), int(rng.integers(8, 200))) for _ in range(n)] + [(32, 32), (33, 31)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes]


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == dict(b).keys() and all(same(a[k], b[k]) for k in a)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_batched_preprocessing_is_the_processors_own_bits(case, tmp_path):
    adapter = load_adapter(str(BUILDERS[case](tmp_path / case)))
    batched = adapter.batched_pixels()
    expected = NaFlexPixels if case == "siglip2-naflex" else BatchedPixels
    assert isinstance(batched, expected), f"{case}: the batched copy is not used"
    images = mixed_images()
    ours = adapter.preprocess(images)
    theirs = adapter.processor_pixels(images)
    assert same(ours, theirs)
    # and image by image, as the processor sees one image at a time
    assert same(batched(images[:1]), adapter.processor_pixels(images[:1]))


def test_non_rgb_images_go_through_the_processor(tmp_path):
    adapter = load_adapter(str(build_clip(tmp_path / "clip")))
    images = mixed_images(4)
    images[2] = images[2].convert("L")
    images[3] = images[3].convert("RGBA")
    assert adapter.batched_pixels()(images) is None
    assert same(adapter.preprocess(images), adapter.processor_pixels(images))


def test_a_copy_that_would_differ_is_not_used(tmp_path):
    from transformers import AutoProcessor

    d = build_clip(tmp_path / "clip")
    processor = AutoProcessor.from_pretrained(d)

    def own(images):
        return processor(images=images, return_tensors="pt")["pixel_values"]

    assert batched_pixels(processor, own) is not None
    # a reference that is not what the copy computes: the probe comparison refuses the copy
    assert batched_pixels(processor, lambda ims: own(ims) + 1e-7) is None
    # a processor class that overrides a copied step keeps its own path, whatever the probe says
    image_processor = processor.image_processor
    subclass = type("Custom", (type(image_processor),), {"normalize": lambda self, image, *a, **k: image})
    custom = subclass(**image_processor.to_dict())
    assert batched_pixels(custom, lambda ims: custom(images=ims, return_tensors="pt")["pixel_values"]) is None
    # padding is not copied
    image_processor.do_pad = True
    assert batched_pixels(processor, own) is None


def test_naflex_call_time_defaults_are_the_wrapping_processors(tmp_path):
    """Siglip2Processor passes ``max_num_patches=256`` at call time over its image processor's own value."""
    adapter = load_adapter(str(build_siglip2_naflex(tmp_path / "naflex")))
    batched = adapter.batched_pixels()
    assert batched.max_patches == int(adapter.processor_pixels(mixed_images(1))["pixel_values"].shape[1])


OPEN_CLIP_CHECK = """
import sys
from pathlib import Path
import torch
from ccmb_bench.adapters.tvcompat import prepare_torchvision
prepare_torchvision()
import open_clip
from ccmb_bench.adapters.pixels import TorchvisionPixels, batched_transform
from tests.bench.adapter_models import build_open_clip
from tests.bench.test_bench_pixels import mixed_images
d = build_open_clip(Path(sys.argv[1]))
_, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}")
batched = batched_transform(preprocess)
assert isinstance(batched, TorchvisionPixels), preprocess
images = mixed_images()
ours, theirs = batched(images), torch.stack([preprocess(im) for im in images])
assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
# a composition with a step the copy does not know keeps open_clip's own path
from torchvision.transforms import Compose, Grayscale
assert batched_transform(Compose(list(preprocess.transforms[:2]) + [Grayscale(3)] + list(preprocess.transforms[2:]))) is None
print("ok")
"""


def test_open_clip_batched_transform_is_torchvisions_own_bits(tmp_path):
    from tests.bench.test_bench_adapters_parity import open_clip_path

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(open_clip_path())])}
    done = subprocess.run([sys.executable, "-c", OPEN_CLIP_CHECK, str(tmp_path / "oc")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_torchvision_copy_refuses_unknown_compositions():
    class Step:
        pass

    class Composed:
        transforms = [Step()]

    assert batched_transform(Composed()) is None
    assert batched_transform(object()) is None
