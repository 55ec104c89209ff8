"""TSV byte-offset index: built once, cached atomically beside the data, invalidated on change,
falling back to the user cache when the data folder is not writable."""
from __future__ import annotations

import os
import pickle

import pytest

from ccmb.datasets import imagesource
from ccmb.datasets.imagesource import TsvImages, index_paths, load_tsv_index


def _tsv(tmp_path, fx, n=5):
    path = tmp_path / "valid_imgs.tsv"
    path.write_text("\n".join(fx.tsv_line(str(i), i) for i in range(n)) + "\n", encoding="utf-8")
    return path


def test_index_cached_beside_and_reused(tmp_path, fx, monkeypatch):
    tsv = _tsv(tmp_path, fx)
    src = TsvImages(tsv)
    beside = index_paths(tsv)[0]
    assert beside.is_file() and beside.parent == tsv.parent
    assert src.ids == [str(i) for i in range(5)]
    assert src.read_bytes("3") == fx.image_bytes(3)
    calls = []
    monkeypatch.setattr(imagesource, "build_tsv_index", lambda p: calls.append(p) or 1 / 0)
    assert TsvImages(tsv).ids == src.ids and not calls  # from the cache, not rebuilt
    assert not list(tmp_path.glob(".*tmp-*"))  # no temporaries left


def test_index_invalidated_when_tsv_changes(tmp_path, fx):
    tsv = _tsv(tmp_path, fx, 3)
    assert len(TsvImages(tsv)) == 3
    with open(tsv, "a", encoding="utf-8") as fh:
        fh.write(fx.tsv_line("new", 4) + "\n")
    src = TsvImages(tsv)
    assert src.ids[-1] == "new" and src.read_bytes("new") == fx.image_bytes(4)
    # same size, new mtime: rebuilt too
    data = tsv.read_bytes().replace(b"new\t", b"neu\t")
    tsv.write_bytes(data)
    os.utime(tsv, ns=(1, 1))
    assert TsvImages(tsv).ids[-1] == "neu"


def test_read_only_data_dir_falls_back_to_cache_dir(tmp_path, fx, monkeypatch):
    tsv = _tsv(tmp_path, fx)
    real = imagesource.atomic.write_json

    def refuse_beside(path, obj, indent=2):
        if path.parent == tsv.parent:
            raise PermissionError(13, "Read-only file system", str(path))
        return real(path, obj, indent=indent)

    monkeypatch.setattr(imagesource.atomic, "write_json", refuse_beside)
    TsvImages(tsv)
    beside, fallback = index_paths(tsv)
    assert not beside.exists() and fallback.is_file()
    assert str(fallback).startswith(os.environ["CCMB_HOME"])
    assert load_tsv_index(tsv)["ids"][0] == "0"


def test_malformed_and_duplicate_tsv_lines(tmp_path, fx):
    from ccmb.datasets.base import DatasetFormatError, ParseLog

    tsv = tmp_path / "test_imgs.tsv"
    tsv.write_bytes(b"\xef\xbb\xbf" + f"{fx.tsv_line('a', 0)}\r\nbroken-line\r\n{fx.tsv_line('a', 1)}\r\n"
                    f"{fx.tsv_line('b', 2)}\r\n".encode())
    src = TsvImages(tsv)
    assert src.ids == ["a", "b"] and src.malformed == [(2, "expected '<image_id>\\t<base64>'")]
    assert src.read_bytes("a") == fx.image_bytes(0) and src.read_bytes("b") == fx.image_bytes(2)
    with pytest.raises(DatasetFormatError, match=r"test_imgs\.tsv:2:"):
        src.report(ParseLog())
    log = ParseLog(lenient=True)
    src.report(log)
    assert log.counts() == {"skipped_lines": 1, "duplicates": 1, "empty_texts": 0}


def test_pickles_without_file_descriptor(tmp_path, fx):
    src = TsvImages(_tsv(tmp_path, fx))
    src.read_bytes("1")
    clone = pickle.loads(pickle.dumps(src))
    assert clone._fd is None and clone.read_bytes("2") == fx.image_bytes(2)
