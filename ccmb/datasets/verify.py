"""Check a downstream set: every line parses, every referenced image exists and decodes.

Problems (exit non-zero in the CLI): malformed lines (``file:line: reason``), missing images, images
that do not decode, a missing root or file. Warnings: duplicate ids, empty texts, texts without a
positive image, images without text.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..images import ImageDecodeError, decode_image
from .base import DatasetError, MissingImageError, PathLike
from .registry import load_dataset

logger = logging.getLogger(__name__)


@dataclass
class DatasetReport:
    name: str
    split: str
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    summary: Dict[str, Any] = field(default_factory=dict)
    images_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "split": self.split, "ok": self.ok, "images_checked": self.images_checked,
                "problems": self.problems, "warnings": self.warnings, "summary": self.summary}


def verify_dataset(name: str, root: PathLike, split: Optional[str] = None, *, decode: bool = True,
                   progress: bool = False, workers: int = 1, **params: Any) -> DatasetReport:
    """Parse leniently, then check every image; returns every problem found (not just the first).

    ``workers`` > 1 decodes images in that many threads (PIL releases the GIL while decoding)."""
    try:
        data = load_dataset(name, root, split, lenient=True, **params)
    except (DatasetError, OSError) as exc:
        return DatasetReport(name, split or "", problems=[str(exc)])
    report = DatasetReport(data.name, data.split, summary=data.summary())
    report.problems.extend(data.malformed)
    report.warnings.extend(data.duplicates + data.empty)
    s = report.summary
    if s.get("texts_without_image"):
        report.warnings.append(f"{s['texts_without_image']} texts have no positive image (hidden labels?)")
    if s.get("images_without_text"):
        report.warnings.append(f"{s['images_without_text']} images have no text")

    def check(i: int) -> Optional[str]:
        ref = data.image_ref(i)
        try:
            if not data.images.exists(data.image_ids[i]):
                return str(MissingImageError(data.image_path(i), ref=ref))
            if decode:
                decode_image(data.image_bytes(i), mode=None, source=data.image_path(i))
        except (ImageDecodeError, MissingImageError) as exc:
            return f"{ref}: {exc}" if ref and not getattr(exc, "ref", None) else str(exc)
        except DatasetError as exc:  # e.g. an id outside the image folder
            return f"{ref}: {exc}" if ref else str(exc)
        return None

    n = len(data.image_ids)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"verify {data.name}", unit="img")
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for start in range(0, n, 256):
            chunk = range(start, min(n, start + 256))
            results = list(pool.map(check, chunk)) if pool else [check(i) for i in chunk]
            report.problems.extend(r for r in results if r)
            report.images_checked += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()
    return report
