"""The ELEVATER classification layout (ELEVATER-CN, ImageNet-CN).

``label_cn.txt``: line i = Chinese name of class i. ``{split}/<class>/<image>``: class folders named
by the class index (``0..9``, or zero-padded ``000..999``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

from ..base import ParseLog, PathLike, iter_lines
from ..imagesource import IMAGE_EXTS


def read_classnames(path: PathLike, log: ParseLog) -> List[str]:
    """Class names, one per line (blank lines are malformed: they would shift every later index)."""
    names: List[str] = []
    expected = 1
    for number, line in iter_lines(path, log):
        if number != expected:
            log.bad(path, expected, "blank line in the class list (class indices would shift)")
        expected = number + 1
        names.append(line.strip())
    return names


def scan_class_folders(split_dir: Path, num_classes: int, log: ParseLog) -> Tuple[List[str], List[int]]:
    """(image ids relative to the split's parent, labels), class by class, files sorted by name."""
    image_ids: List[str] = []
    labels: List[int] = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        try:
            label = int(entry.name)
        except ValueError:
            log.bad(entry.path, None, "class folder name is not a class index")
            continue
        if not 0 <= label < num_classes:
            log.bad(entry.path, None, f"class index {label} outside label_cn.txt's {num_classes} classes")
            continue
        for f in sorted(os.listdir(entry.path)):
            if f.lower().endswith(IMAGE_EXTS):
                image_ids.append(f"{split_dir.name}/{entry.name}/{f}")
                labels.append(label)
    return image_ids, labels
