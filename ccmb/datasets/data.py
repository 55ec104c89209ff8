"""Task data objects: what a loaded downstream set looks like to the benchmark harness.

Plain Python (lists of str/int, images loaded on demand); torch wrappers live in
:mod:`ccmb.datasets.torch_data`. Every object has ``name``, ``split``, ``image_ids``,
``load_image(i)`` (RGB ``PIL.Image``), ``image_bytes(i)``, ``image_path(i)``, ``stats`` (counts of
the parse: skipped lines, duplicates, empty texts) and ``issues`` (the messages behind those counts).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image

from .base import MissingImageError, ParseLog
from .imagesource import ImageSource

TASK_NAMES = ("retrieval", "matching", "classification", "captioning", "text-to-image")


class ImageData:
    """Shared part: a list of image ids resolved by an :class:`ImageSource`."""

    task = ""

    def __init__(self, name: str, split: str, image_ids: Sequence[str], images: ImageSource,
                 log: Optional[ParseLog] = None, files: Optional[Dict[str, str]] = None,
                 image_refs: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.split = split
        self.image_ids: List[str] = list(image_ids)
        self.images = images
        log = log or ParseLog()
        self.stats: Dict[str, int] = log.counts()
        self.malformed: List[str] = list(log.skipped)
        self.duplicates: List[str] = list(log.duplicates)
        self.empty: List[str] = list(log.empty)
        self.issues: List[str] = self.malformed + self.duplicates + self.empty
        self.files: Dict[str, str] = dict(files or {})
        #: image id -> ``file:line`` of the first annotation referencing it (errors name both)
        self.image_refs: Dict[str, str] = dict(image_refs or {})

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def load_image(self, i: int) -> Image.Image:
        """Image ``i`` decoded to RGB; a missing file raises ``MissingImageError`` naming its path and the
        annotation line that references it."""
        try:
            return self.images.load(self.image_ids[i])
        except MissingImageError as exc:
            raise exc.at(self.image_ref(i)) from None

    def image_bytes(self, i: int) -> bytes:
        try:
            return self.images.read_bytes(self.image_ids[i])
        except MissingImageError as exc:
            raise exc.at(self.image_ref(i)) from None

    def image_ref(self, i: int) -> Optional[str]:
        """``file:line`` of the first annotation that references image ``i`` (None when not from a file)."""
        return self.image_refs.get(self.image_ids[i])

    def image_path(self, i: int) -> str:
        return self.images.path_of(self.image_ids[i])

    def image_texts(self, i: int) -> List[str]:
        """Texts stored with image ``i`` when converting to shards (first = primary text)."""
        return []

    def summary(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "task": self.task, "split": self.split,
                               "images": self.num_images}
        out.update(self._summary())
        out.update(self.stats)
        out["files"] = self.files
        return out

    def _summary(self) -> Dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v}" for k, v in self.summary().items() if k not in ("files", "name"))
        return f"{type(self).__name__}({self.name!r}, {body})"


class RetrievalData(ImageData):
    """Images, texts and the ground truth between them (sets of positives in both directions).

    ``directions`` is ``("i2t", "t2i")`` or ``("t2i",)`` (MUGE). Texts with no positive image (hidden
    test labels) keep an empty list in ``text_to_images``.
    """

    task = "retrieval"

    def __init__(self, name: str, split: str, image_ids: Sequence[str], images: ImageSource,
                 texts: Sequence[str], text_to_images: Sequence[Sequence[int]],
                 directions: Tuple[str, ...] = ("i2t", "t2i"), text_ids: Optional[Sequence[str]] = None,
                 **kw: Any) -> None:
        super().__init__(name, split, image_ids, images, **kw)
        self.texts: List[str] = list(texts)
        self.text_ids: List[str] = list(text_ids) if text_ids is not None else [str(i) for i in range(len(texts))]
        self.text_to_images: List[List[int]] = (text_to_images if isinstance(text_to_images, list)
                                                else [list(p) for p in text_to_images])  # type: ignore[assignment]
        self.image_to_texts: List[List[int]] = [[] for _ in self.image_ids]
        for t, imgs in enumerate(self.text_to_images):
            for i in imgs:
                self.image_to_texts[i].append(t)
        self.directions = tuple(directions)

    @property
    def num_texts(self) -> int:
        return len(self.texts)

    @property
    def positives(self) -> int:
        return sum(len(p) for p in self.text_to_images)

    def image_texts(self, i: int) -> List[str]:
        return [self.texts[t] for t in self.image_to_texts[i]]

    def _summary(self) -> Dict[str, Any]:
        return {"texts": self.num_texts, "positives": self.positives,
                "texts_without_image": sum(1 for p in self.text_to_images if not p),
                "images_without_text": sum(1 for p in self.image_to_texts if not p),
                "directions": list(self.directions)}


class MatchingData(ImageData):
    """Image-text pairs with a 0/1 match label (``pair_images[k]`` indexes ``image_ids``)."""

    task = "matching"

    def __init__(self, name: str, split: str, image_ids: Sequence[str], images: ImageSource,
                 pair_images: Sequence[int], pair_texts: Sequence[str], labels: Sequence[int],
                 **kw: Any) -> None:
        super().__init__(name, split, image_ids, images, **kw)
        self.pair_images: List[int] = list(pair_images)
        self.pair_texts: List[str] = list(pair_texts)
        self.labels: List[int] = [int(v) for v in labels]
        self._by_image: Optional[List[List[int]]] = None

    @property
    def pairs(self) -> List[Tuple[int, str]]:
        return list(zip(self.pair_images, self.pair_texts))

    @property
    def texts(self) -> List[str]:
        return self.pair_texts

    def pairs_of_image(self, i: int) -> List[int]:
        if self._by_image is None:
            self._by_image = [[] for _ in self.image_ids]
            for k, img in enumerate(self.pair_images):
                self._by_image[img].append(k)
        return self._by_image[i]

    def image_texts(self, i: int) -> List[str]:
        ks = sorted(self.pairs_of_image(i), key=lambda k: -self.labels[k])  # positives first
        return [self.pair_texts[k] for k in ks]

    def _summary(self) -> Dict[str, Any]:
        pos = sum(self.labels)
        return {"pairs": len(self.labels), "positives": pos, "negatives": len(self.labels) - pos,
                "texts": len(set(self.pair_texts))}


class ClassificationData(ImageData):
    """Images with class labels, the Chinese class names and prompt templates (``{}`` = class name)."""

    task = "classification"

    def __init__(self, name: str, split: str, image_ids: Sequence[str], images: ImageSource,
                 labels: Sequence[int], classnames: Sequence[str], templates: Sequence[str],
                 **kw: Any) -> None:
        super().__init__(name, split, image_ids, images, **kw)
        self.labels: List[int] = list(labels)
        self.classnames: List[str] = list(classnames)
        self.templates: List[str] = list(templates)

    def prompts(self, c: int) -> List[str]:
        return [t.format(self.classnames[c]) for t in self.templates]

    def image_texts(self, i: int) -> List[str]:
        return [self.classnames[self.labels[i]]]

    def _summary(self) -> Dict[str, Any]:
        return {"classes": len(self.classnames), "templates": len(self.templates),
                "classes_with_images": len(set(self.labels))}


class CaptionData(ImageData):
    """Images with their reference captions."""

    task = "captioning"

    def __init__(self, name: str, split: str, image_ids: Sequence[str], images: ImageSource,
                 references: Sequence[Sequence[str]], **kw: Any) -> None:
        super().__init__(name, split, image_ids, images, **kw)
        self.references: List[List[str]] = [list(r) for r in references]

    def image_texts(self, i: int) -> List[str]:
        return self.references[i]

    def _summary(self) -> Dict[str, Any]:
        return {"references": sum(len(r) for r in self.references)}


class TextToImageData(ImageData):
    """Prompts and one reference image each (``reference_images[k]`` indexes ``image_ids``)."""

    task = "text-to-image"

    def __init__(self, name: str, split: str, image_ids: Sequence[str], images: ImageSource,
                 prompts: Sequence[str], prompt_ids: Sequence[str], reference_images: Sequence[int],
                 **kw: Any) -> None:
        super().__init__(name, split, image_ids, images, **kw)
        self.prompts: List[str] = list(prompts)
        self.prompt_ids: List[str] = list(prompt_ids)
        self.reference_images: List[int] = list(reference_images)
        self._by_image: Optional[List[List[int]]] = None

    def load_reference(self, k: int) -> Image.Image:
        """The reference image of prompt ``k`` (RGB)."""
        return self.load_image(self.reference_images[k])

    def image_texts(self, i: int) -> List[str]:
        if self._by_image is None:
            self._by_image = [[] for _ in self.image_ids]
            for k, img in enumerate(self.reference_images):
                self._by_image[img].append(k)
        return [self.prompts[k] for k in self._by_image[i]]

    def _summary(self) -> Dict[str, Any]:
        return {"prompts": len(self.prompts)}
