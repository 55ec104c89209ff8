"""Helpers shared by the download tests (unique module name: tests have no __init__.py)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import List

from PIL import Image


def jpeg(n: int, size=(64, 48)) -> bytes:
    img = Image.new("RGB", size, ((n * 37) % 256, (n * 91) % 256, (n * 53) % 256))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()



def zero_record(i: int, url: str, **over) -> dict:
    rec = {"Url": f"http://example.invalid/page/{i}", "Title": f"标题{i}", "Content": f"内容{i}",
           "Keywords": f"关键词{i}", "ImageKey": f"key-{i:05d}", "ImageUrl": url, "ImageQuery": f"查询{i}"}
    rec.update(over)
    return rec


def write_jsonl(path: Path, records: List[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
