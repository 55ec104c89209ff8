"""A batched copy of transformers' PIL-backend image preprocessing, used only where it is bit-for-bit the processor's.

transformers' PIL backend (``PilBackend._preprocess``: the CLIP, SigLIP, Chinese-CLIP, AltCLIP image processors when
torchvision is absent) works image by image: PIL image -> numpy -> PIL again to resize -> numpy, centre crop,
``astype(float64) * rescale_factor -> float32``, ``(x - mean) / std`` in float32, then one tensor. Three quarters
of a small model's image encoding time went there, in per-image Python. :class:`BatchedPixels` does the same steps
with the same libraries (PIL's ``resize`` with the processor's filter and sizes, the same crop offsets, the same
float64 rescale and float32 normalisation) on the whole batch at once: elementwise IEEE arithmetic gives the same
bits whichever way it is batched.

"Only where it is the processor's" is checked, not assumed: :func:`batched_pixels` returns one only for a processor
whose class keeps ``PilBackend``'s steps (no override), whose settings are the ones copied here (a resize to
``shortest_edge`` or ``height``/``width``, no padding), and whose own output on probe images of several shapes
(tall, wide, square, smaller and larger than the model's input) is bit-for-bit equal; anything else keeps the
processor. At call time a batch with an image that is not RGB, or whose crop would need padding, goes to the
processor too (``__call__`` returns ``None``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

#: the processor methods whose behaviour is copied; a class overriding one of them keeps its own path
COPIED_STEPS = ("_preprocess", "process_image", "resize", "center_crop", "rescale", "normalize")
#: probe image sizes (width, height): wide, tall, square, smaller and larger than common inputs, odd edges
PROBE_SIZES = ((61, 37), (37, 83), (64, 64), (17, 29), (301, 227))


def _get(size: Any, key: str) -> Optional[int]:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return None if value is None else int(value)


class BatchedPixels:
    """The processor's resize -> centre crop -> rescale -> normalise, on a batch of RGB PIL images at once."""

    def __init__(self, resize: Optional[Callable[[int, int], Tuple[int, int]]], resample: int,
                 crop: Optional[Tuple[int, int]], scale: Optional[float], mean: Optional[Sequence[float]],
                 std: Optional[Sequence[float]]) -> None:
        import numpy as np

        self.resize, self.resample, self.crop, self.scale = resize, resample, crop, scale
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = None if std is None else np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)

    def _crop_box(self, width: int, height: int) -> Optional[Tuple[int, int, int, int]]:
        """PIL box of the processor's centre crop, or ``None`` where the processor would pad instead."""
        crop_h, crop_w = self.crop  # type: ignore[misc]
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        if top < 0 or left < 0 or top + crop_h > height or left + crop_w > width:
            return None
        return left, top, left + crop_w, top + crop_h

    def __call__(self, images: Sequence[Any]) -> Optional["torch.Tensor"]:  # noqa: F821
        """``[N,3,H,W]`` float32 pixels, or ``None`` when the batch needs the processor's own path."""
        import numpy as np

        arrays = []
        for image in images:
            if getattr(image, "mode", None) != "RGB":
                return None
            if self.resize is not None:
                height, width = self.resize(image.height, image.width)
                image = image.resize((width, height), resample=self.resample, reducing_gap=None)
            if self.crop is not None:
                box = self._crop_box(image.width, image.height)
                if box is None:
                    return None
                if box != (0, 0, image.width, image.height):
                    image = image.crop(box)
            arrays.append(np.asarray(image))
        if not arrays or any(a.shape != arrays[0].shape for a in arrays):
            return None  # the processor would fail (or pad) on mixed sizes; let it say so
        return self.to_tensor(np.stack(arrays))

    def to_tensor(self, batch: "np.ndarray") -> "torch.Tensor":  # noqa: F821
        """NHWC uint8 -> NCHW float32: ``astype(float64) * scale -> float32``, then ``(x - mean) / std``."""
        import numpy as np
        import torch

        batch = batch.transpose(0, 3, 1, 2)  # channel-first, as the processor
        if self.scale is not None:
            batch = (batch.astype(np.float64) * self.scale).astype(np.float32)
        if self.mean is not None:
            if batch.dtype != np.float32:
                batch = batch.astype(np.float32)
            batch = (batch - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(batch))


def _shortest_edge(edge: int) -> Callable[[int, int], Tuple[int, int]]:
    """(height, width) -> output size with the short side at ``edge`` and the long one ``int(edge * long /
    short)``: transformers' ``get_resize_output_image_size`` and torchvision's ``Resize(int)`` alike."""
    def size(height: int, width: int) -> Tuple[int, int]:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(edge * long / short)
        return (new_long, edge) if width <= height else (edge, new_long)
    return size


def _fixed(height: int, width: int) -> Callable[[int, int], Tuple[int, int]]:
    return lambda h, w: (height, width)


def _mean_std(setting: Callable[[str], Any]) -> Tuple[Optional[list], Optional[list]]:
    """The processor's normalisation (per-channel lists), or (None, None) without ``do_normalize``."""
    if not setting("do_normalize"):
        return None, None
    mean, std = setting("image_mean"), setting("image_std")
    return (list(mean) if isinstance(mean, (list, tuple)) else [float(mean)] * 3,
            list(std) if isinstance(std, (list, tuple)) else [float(std)] * 3)


def call_settings(processor: Any) -> Callable[[str], Any]:
    """``setting(name)``: the value ``processor(images=...)`` uses: a wrapping processor's call-time image
    defaults (e.g. Siglip2Processor's ``max_num_patches``) over its image processor's attributes."""
    image_processor = getattr(processor, "image_processor", processor)
    overrides: Dict[str, Any] = {}
    if image_processor is not processor and hasattr(processor, "_merge_kwargs"):
        try:
            overrides = dict(processor._merge_kwargs().get("images_kwargs", {}))
        except Exception as exc:  # noqa: BLE001 - unknown wrapper: the probe comparison decides
            logger.debug("%s: call-time image defaults unreadable (%s)", type(processor).__name__, exc)
    return lambda name: overrides[name] if name in overrides else getattr(image_processor, name, None)


def _from_settings(image_processor: Any, setting: Callable[[str], Any]) -> Optional[BatchedPixels]:
    """The copy of ``image_processor``'s settings, or ``None`` where they are outside what is copied."""
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:  # transformers 4: its slow processors are per-class code; keep them
        return None
    cls = type(image_processor)
    if not isinstance(image_processor, PilBackend) or any(
            getattr(cls, step, None) is not getattr(PilBackend, step, None) for step in COPIED_STEPS):
        return None
    if setting("do_pad"):
        return None
    resize = None
    if setting("do_resize"):
        size = setting("size")
        keys = {k for k in ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
                if _get(size, k) is not None}
        if keys == {"shortest_edge"}:
            resize = _shortest_edge(_get(size, "shortest_edge"))
        elif keys == {"height", "width"}:
            resize = _fixed(_get(size, "height"), _get(size, "width"))
        else:
            return None
    crop = None
    if setting("do_center_crop"):
        crop_size = setting("crop_size")
        crop = (_get(crop_size, "height"), _get(crop_size, "width"))
        if None in crop:
            return None
    scale = float(setting("rescale_factor")) if setting("do_rescale") else None
    mean, std = _mean_std(setting)
    resample = setting("resample")
    return BatchedPixels(resize, 2 if resample is None else int(resample), crop, scale, mean, std)


def probe_images() -> list:
    """Deterministic RGB images of :data:`PROBE_SIZES` (random pixels: every filter tap matters)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in PROBE_SIZES]


def batched_pixels(processor: Any, reference: Callable[[Sequence[Any]], Any]) -> Optional[BatchedPixels]:
    """A :class:`BatchedPixels` for ``processor`` (a processor or its ``image_processor``) when its settings are
    copied here and its output on every probe image equals ``reference([image])`` (the adapter's own processor
    call) bit for bit; else ``None``."""
    image_processor = getattr(processor, "image_processor", processor)
    setting = call_settings(processor)
    pixels = _from_settings(image_processor, setting) or _naflex_settings(image_processor, setting)
    return pixels if pixels is not None and _agrees(pixels, reference, type(image_processor).__name__) else None


class TorchvisionPixels(BatchedPixels):
    """torchvision's ``Resize`` -> ``CenterCrop`` -> ``ToTensor`` -> ``Normalize`` on PIL images (open_clip's
    preprocessing), on a batch: the crop offsets round (``int(round((h - crop) / 2))``), pixels become
    ``float32 / 255`` and are normalised in place by float32 ``mean``/``std``, as torchvision does."""

    def _crop_box(self, width, height):
        crop_h, crop_w = self.crop  # type: ignore[misc]
        if crop_h > height or crop_w > width:
            return None  # torchvision pads first
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        return left, top, left + crop_w, top + crop_h

    def to_tensor(self, batch):
        import torch

        out = torch.from_numpy(batch).permute(0, 3, 1, 2).to(dtype=torch.get_default_dtype()).div(255)
        if self.mean is not None:
            mean = torch.as_tensor(self.mean.reshape(-1), dtype=out.dtype).view(1, -1, 1, 1)
            std = torch.as_tensor(self.std.reshape(-1), dtype=out.dtype).view(1, -1, 1, 1)
            out = out.sub_(mean).div_(std)
        return out.contiguous()


#: torchvision interpolation names -> PIL filters (torchvision's own mapping)
PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _torchvision_steps(transform: Any) -> Optional[TorchvisionPixels]:
    """The copy of a torchvision ``Compose`` made of the steps above (and open_clip's RGB-mode and to-tensor
    steps), or ``None`` for any other composition."""
    steps = list(getattr(transform, "transforms", None) or [])
    names = [type(t).__name__ for t in steps]
    resize = crop = mean = std = None
    resample = 2
    to_tensor = False
    for step, name in zip(steps, names):
        module = type(step).__module__
        if not (module.startswith("torchvision.transforms") or module.startswith("open_clip")):
            return None
        if (to_tensor and name != "Normalize") or mean is not None:
            return None  # only a Normalize may follow the tensor conversion, and nothing follows it
        if name == "Resize" and resize is None and crop is None:
            size = step.size
            size = [size] if isinstance(size, int) else list(size)
            if getattr(step, "max_size", None) is not None or len(size) not in (1, 2):
                return None
            interpolation = getattr(step.interpolation, "value", step.interpolation)
            if interpolation not in PIL_FILTERS:
                return None
            resample = PIL_FILTERS[interpolation]
            resize = _shortest_edge(int(size[0])) if len(size) == 1 else _fixed(int(size[0]), int(size[1]))
        elif name == "CenterCrop" and crop is None:
            size = step.size
            crop = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))
        elif name == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB":
            pass  # a no-op on the RGB images this copy accepts
        elif name in ("ToTensor", "MaybeToTensor"):
            to_tensor = True
        elif name == "Normalize" and to_tensor:
            mean, std = list(step.mean), list(step.std)
        else:
            return None
    if not to_tensor:
        return None
    return TorchvisionPixels(resize, resample, crop, None, mean, std)


def batched_transform(transform: Any) -> Optional[TorchvisionPixels]:
    """A :class:`TorchvisionPixels` for a torchvision ``Compose`` when its steps are copied here and its output on
    every probe image equals ``transform(image)`` bit for bit; else ``None``."""
    import torch

    pixels = _torchvision_steps(transform)
    return pixels if pixels is not None and _agrees(pixels, lambda ims: torch.stack([transform(im) for im in ims]),
                                                    type(transform).__name__) else None


def _agrees(pixels: BatchedPixels, reference: Callable[[Sequence[Any]], Any], what: str) -> bool:
    """Whether ``pixels`` gives ``reference``'s tensor, bit for bit, on every probe image."""
    import torch

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)

    try:
        for image in probe_images():
            ours, theirs = pixels([image]), reference([image])
            if not same(ours, theirs if not hasattr(theirs, "data") or isinstance(theirs, torch.Tensor)
                        else dict(theirs)):
                logger.debug("%s: batched preprocessing differs on a %dx%d probe; its own path is used",
                             what, image.width, image.height)
                return False
    except Exception as exc:  # noqa: BLE001 - any failure of the copy means: keep the library's path
        logger.debug("%s: batched preprocessing failed on a probe (%s); its own path is used", what, exc)
        return False
    return True


class NaFlexPixels:
    """SigLIP 2 NaFlex's PIL-backend preprocessing (``Siglip2ImageProcessorPil._preprocess``), image by image but
    without its per-step conversions: the resize to the largest patch grid within ``max_num_patches``
    (transformers' own size search), ``float64`` rescale -> ``float32``, normalisation on the contiguous
    channel-last array, patches written straight into the padded batch, with its mask and grid shapes."""

    def __init__(self, patch_size: int, max_patches: int, resample: int, size_for: Optional[Callable],
                 scale: Optional[float], mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> None:
        import torch

        self.patch, self.max_patches, self.resample, self.size_for, self.scale = (
            patch_size, max_patches, resample, size_for, scale)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)

    def __call__(self, images: Sequence[Any]) -> Optional[Dict[str, "torch.Tensor"]]:  # noqa: F821
        import numpy as np
        import torch

        if not images or any(getattr(im, "mode", None) != "RGB" for im in images):
            return None
        p = self.patch
        values = torch.empty(len(images), self.max_patches, p * p * 3, dtype=torch.float32)  # padding zeroed below
        mask = torch.zeros(len(images), self.max_patches, dtype=torch.int32)
        shapes = torch.zeros(len(images), 2, dtype=torch.int64)
        for i, image in enumerate(images):
            if self.size_for is not None:
                height, width = self.size_for(image_height=image.height, image_width=image.width, patch_size=p,
                                              max_num_patches=self.max_patches)
                image = image.resize((width, height), resample=self.resample, reducing_gap=None)
            x = torch.from_numpy(np.array(image))  # H, W, C uint8 (a writable copy, as the processor makes)
            if self.scale is not None:
                x = (x.to(torch.float64) * self.scale).to(torch.float32)
            elif self.mean is not None:
                x = x.to(torch.float32)
            if self.mean is not None:
                x = (x - self.mean) / self.std
            rows, cols = x.shape[0] // p, x.shape[1] // p
            if rows * cols > self.max_patches or rows * p != x.shape[0] or cols * p != x.shape[1]:
                return None  # the processor's own path handles (or rejects) this one
            patches = x.reshape(rows, p, cols, p, 3).permute(0, 2, 1, 3, 4).reshape(rows * cols, -1)
            values[i, :rows * cols] = patches
            values[i, rows * cols:] = 0
            mask[i, :rows * cols] = 1
            shapes[i, 0], shapes[i, 1] = rows, cols
        return {"pixel_values": values, "pixel_attention_mask": mask, "spatial_shapes": shapes}


def _naflex_settings(image_processor: Any, setting: Callable[[str], Any]) -> Optional[NaFlexPixels]:
    try:
        from transformers.image_processing_backends import PilBackend
        from transformers.models.siglip2 import image_processing_pil_siglip2 as naflex
    except ImportError:
        return None
    cls = type(image_processor)
    if not isinstance(image_processor, naflex.Siglip2ImageProcessorPil) \
            or cls._preprocess is not naflex.Siglip2ImageProcessorPil._preprocess or any(
                getattr(cls, step, None) is not getattr(PilBackend, step, None)
                for step in COPIED_STEPS if step != "_preprocess"):
        return None
    scale = float(setting("rescale_factor")) if setting("do_rescale") else None
    mean, std = _mean_std(setting)
    resample = setting("resample")
    size_for = naflex.get_image_size_for_max_num_patches if setting("do_resize") else None
    return NaFlexPixels(int(setting("patch_size")), int(setting("max_num_patches")),
                        2 if resample is None else int(resample), size_for, scale, mean, std)
