"""Fixture builders: tiny copies of every downstream format, in its official layout, with quirks
(UTF-8 BOM, CRLF, blank lines, POS tags, old MUGE keys, empty image_ids, duplicate ids, empty texts)."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def image_bytes(k: int = 0, fmt: str = "JPEG", size=(12, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLORS[k % len(COLORS)]).save(buf, format=fmt)
    return buf.getvalue()


def write_lines(path: Path, lines, bom: bool = False, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nl = "\r\n" if crlf else "\n"
    data = nl.join(lines) + nl
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


def jl(**kw) -> str:
    return json.dumps(kw, ensure_ascii=False)


def build_r2d2(root: Path, malformed: bool = False) -> Path:
    imgs = root / "IQR_IQM_ICR_ICM_images"
    imgs.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        (imgs / name).write_bytes(image_bytes(k))
    itr = [jl(text="一只猫", image_path="images/a.jpg"),
           jl(text="一只狗", image_path="x/b.jpg"),
           jl(text="一只猫", image_path="c.jpg"),          # same text, second image: merged
           "",
           jl(text="一只狗", image_path="x/b.jpg"),        # duplicate pair (line 5)
           jl(text="  ", image_path="a.jpg"),              # empty text (line 6)
           jl(text="红色的车", image_path="b.jpg")]
    if malformed:
        itr.append('{"text": "坏行", "image_path"')        # line 8
    for name in ("ICR", "IQR"):
        fname = "long_itr_val.json" if name == "ICR" else "short_itr_val.json"
        write_lines(root / name / "val" / fname, itr, bom=True, crlf=True)
    itm = [jl(text="猫在睡觉", image_path="a.jpg", label=1),
           jl(text="狗在跑", image_path="a.jpg", label=0),
           jl(text="狗在跑", image_path="b.jpg", label="1"),
           jl(text="猫在睡觉", image_path="a.jpg", label=1)]  # duplicate (line 4)
    if malformed:
        itm.append(jl(text="x", image_path="c.jpg", label=2))  # line 5: bad label
    for name in ("ICM", "IQM"):
        fname = "long_itm_val.json" if name == "ICM" else "short_itm_val.json"
        write_lines(root / name / "val" / fname, itm, crlf=True)
    return root


def build_flickr_cna(root: Path, file_name: str = "flickr30k_cna_test.txt", malformed: bool = False) -> Path:
    imgs = root / "Flickr30k-images"
    imgs.mkdir(parents=True, exist_ok=True)
    for k, fid in enumerate(["1000", "2000", "3000"]):
        (imgs / f"{fid}.jpg").write_bytes(image_bytes(k))
    lines = ["1000.jpg#0\t一个男人在骑车", "1000#1\t男人骑自行车", "2000#0\t两只狗", "2000#1\t  ",
             "1000#0\t重复的描述", "3000#0\t草地上的孩子"]
    if malformed:
        lines.insert(2, "no tab on this line")  # line 3
    write_lines(root / "Flickr30k-CNA" / "test" / file_name, lines, bom=True, crlf=True)
    return root


def tsv_line(image_id: str, k: int, urlsafe: bool = False, fmt: str = "JPEG") -> str:
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return f"{image_id}\t{enc(image_bytes(k, fmt)).decode('ascii')}"


def build_cclip(folder: Path, split: str = "test", old_keys: bool = False, hidden: bool = False) -> Path:
    write_lines(folder / f"{split}_imgs.tsv",
                [tsv_line("101", 0), tsv_line("102", 1, urlsafe=True), tsv_line("102", 3),
                 tsv_line("103", 2, fmt="PNG")], crlf=True)
    if old_keys:
        rows = [jl(query_id=1, query_text="红色连衣裙", item_ids=[] if hidden else [101]),
                jl(query_id=2, query_text="蓝色背包", item_ids=[] if hidden else [102, 103]),
                jl(query_id=1, query_text="重复", item_ids=[103]),
                jl(query_id=3, query_text="", item_ids=[101])]
    else:
        rows = [jl(text_id=1, text="一个男人在骑车", image_ids=[] if hidden else [101]),
                jl(text_id=2, text="两只狗在草地上", image_ids=[] if hidden else [102, 103]),
                jl(text_id=1, text="重复", image_ids=[103]),
                jl(text_id=3, text="", image_ids=[101])]
    write_lines(folder / f"{split}_texts.jsonl", rows, bom=True)
    return folder


def build_flickr_cn_raw(root: Path) -> Path:
    imgs = root / "Flickr30k-images"
    imgs.mkdir(parents=True, exist_ok=True)
    for k, fid in enumerate(["1000", "2000"]):
        (imgs / f"{fid}.jpg").write_bytes(image_bytes(k))
    write_lines(root / "flickr30k-cn_test.txt",
                ["1000.jpg#0\t一个:m 男人:n 在:p 骑:v 自行车:n", "1000.jpg#1\t男人 骑车",
                 "2000.jpg#0\t两 只 狗 在 草地 上", "2000.jpg#1\tA dog 在 跑"], crlf=True)
    return root


AIC_DIR = "ai_challenger_caption_validation_20170910"


def build_aic(root: Path) -> Path:
    base = root / AIC_DIR
    imgs = base / "caption_validation_images_20170910"
    imgs.mkdir(parents=True, exist_ok=True)
    items = []
    for k, name in enumerate(["a1.jpg", "b2.jpg", "c3.jpg"]):
        (imgs / name).write_bytes(image_bytes(k))
        items.append({"url": f"http://x/{name}", "image_id": name,
                      "caption": [f"图{k}的第一句\n", f"图 {k} 的第二句", "" if k == 1 else f"图{k}的第三句"]})
    items.append({"url": "http://x/a1.jpg", "image_id": "a1.jpg", "caption": ["重复"]})  # duplicate
    (base / "caption_validation_annotations_20170910.json").write_text(
        json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return root


def build_elevater(root: Path, sub: str = "cifar-10", padded: bool = False) -> Path:
    base = root / sub if sub else root
    write_lines(base / "label_cn.txt", ["飞机", "汽车", "鸟"], bom=True, crlf=True)
    name = (lambda c: f"{c:03d}") if padded else str
    for c, files in [(0, ["a.jpg", "b.png"]), (2, ["c.jpg"])]:
        d = base / "test" / name(c)
        d.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(files):
            (d / f).write_bytes(image_bytes(c + k, "PNG" if f.endswith(".png") else "JPEG"))
    (base / "test" / name(1)).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def fx():
    return SimpleNamespace(image_bytes=image_bytes, write_lines=write_lines, jl=jl, build_r2d2=build_r2d2,
                           build_flickr_cna=build_flickr_cna, build_cclip=build_cclip, tsv_line=tsv_line,
                           build_flickr_cn_raw=build_flickr_cn_raw, build_aic=build_aic,
                           build_elevater=build_elevater, AIC_DIR=AIC_DIR)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """TSV index caches never touch the user's home."""
    monkeypatch.setenv("CCMB_HOME", str(tmp_path / "ccmb_home"))
