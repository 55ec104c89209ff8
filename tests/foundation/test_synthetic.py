"""Synthetic demo data: deterministic images, Zero-layout records, loopback server."""
from __future__ import annotations

import io

import requests
from PIL import Image

from ccmb import synthetic


def test_render_is_deterministic_and_distinct():
    items = synthetic.all_items()
    assert len(set(i.title for i in items)) == len(items)
    a = synthetic.jpeg_bytes(synthetic.render(items[0], 64, seed=3))
    b = synthetic.jpeg_bytes(synthetic.render(items[0], 64, seed=3))
    c = synthetic.jpeg_bytes(synthetic.render(items[1], 64, seed=3))
    assert a == b and a != c


def test_records_served_over_loopback(tmp_path):
    items = synthetic.sample_items(3, seed=1)
    names = synthetic.write_images(items, tmp_path / "img", size=48)
    with synthetic.serve_folder(tmp_path / "img") as base:
        assert base.startswith("http://127.0.0.1:")
        records = synthetic.zero_records(items, base, names)
        assert set(records[0]) == {"Url", "Title", "Content", "Keywords", "ImageKey", "ImageUrl", "ImageQuery"}
        resp = requests.get(records[2]["ImageUrl"], timeout=10)
        assert resp.status_code == 200
        assert Image.open(io.BytesIO(resp.content)).size == (48, 48)
        assert requests.get(base + "/missing.jpg", timeout=10).status_code == 404
