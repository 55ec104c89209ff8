"""Verification of fetched files: checkpoint keys and shapes (torch and safetensors, read without loading the
tensors), the official key lists, and zip archives with unsafe members."""
from __future__ import annotations

import io
import stat
import zipfile

import pytest
import torch

from ccmb.fetch import (Artifact, FetchError, FileSpec, UnsafeArchiveError, UrlSource, VerificationError,
                        check_checkpoint_keys, fetch_file, read_checkpoint_shapes, unzip)
from fetch_helpers import Served, make_zip


def _state():
    return {"enc.weight": torch.randn(4, 3), "enc.bias": torch.zeros(4), "temp": torch.tensor(0.07),
            "emb.position_ids": torch.arange(5)[None]}


def _shapes(sd):
    return {k: list(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("wrap", ["model", "state_dict", "bare", "module"])
def test_torch_checkpoint_shapes_without_loading(tmp_path, wrap):
    sd = _state()
    if wrap == "module":
        obj = {f"module.{k}": v for k, v in sd.items()}
    else:
        obj = sd if wrap == "bare" else {wrap: sd}
    torch.save(obj, tmp_path / "c.pth")
    assert read_checkpoint_shapes(tmp_path / "c.pth") == {k: tuple(v.shape) for k, v in sd.items()}


def test_safetensors_shapes_from_header(tmp_path):
    from safetensors.torch import save_file

    sd = _state()
    save_file(sd, str(tmp_path / "c.safetensors"))
    assert check_checkpoint_keys(tmp_path / "c.safetensors", _shapes(sd)) == 4


def test_missing_key_and_wrong_shape_are_named(tmp_path):
    sd = _state()
    expected = _shapes(sd)
    del sd["enc.bias"]
    sd["enc.weight"] = torch.randn(4, 5)
    torch.save({"model": sd}, tmp_path / "c.pth")
    with pytest.raises(VerificationError) as err:
        check_checkpoint_keys(tmp_path / "c.pth", expected)
    assert "enc.bias" in str(err.value) and "enc.weight: (4, 5) (expected (4, 3))" in str(err.value)
    # optional (ignorable) keys may be absent
    del sd["emb.position_ids"]
    sd["enc.weight"], sd["enc.bias"] = torch.randn(4, 3), torch.zeros(4)
    torch.save({"model": sd}, tmp_path / "d.pth")
    assert check_checkpoint_keys(tmp_path / "d.pth", expected, [r"(^|\.)position_ids$"]) == 4


def test_not_a_checkpoint_is_a_verification_error(tmp_path):
    (tmp_path / "c.pth").write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(VerificationError, match="weights_only"):
        read_checkpoint_shapes(tmp_path / "c.pth")


def test_checkpoint_with_a_missing_key_falls_back_to_the_next_source(server, home):
    sd = _state()
    good = io.BytesIO()
    torch.save({"model": sd}, good)
    bad = io.BytesIO()
    torch.save({"model": {k: v for k, v in sd.items() if k != "enc.bias"}}, bad)
    server.files["/bad/c.pth"] = Served(bad.getvalue())
    server.files["/good/c.pth"] = Served(good.getvalue())
    spec = FileSpec("c.pth", (UrlSource(server.base + "/bad/c.pth"), UrlSource(server.base + "/good/c.pth")),
                    expected_keys=_shapes(sd))
    art = Artifact("models", "m", (spec,))
    path, _ = fetch_file(art, spec, home / "m")
    assert read_checkpoint_shapes(path) == {k: tuple(v.shape) for k, v in sd.items()}
    # only the bad source: the error names the missing key, nothing is left behind
    spec_bad = FileSpec("c.pth", (UrlSource(server.base + "/bad/c.pth"),), expected_keys=_shapes(sd))
    with pytest.raises(FetchError, match="enc.bias"):
        fetch_file(art, spec_bad, home / "n")
    assert not (home / "n" / "c.pth").exists()


def test_official_key_lists_match_the_configs():
    """models/official_keys.json (the fetch check) agrees with what our loader builds for each config."""
    from models import hub

    keys = hub.official_keys()
    assert set(keys) == {"r2d2-vitl14", "r2d2-vitb16", "prd2-vitl14"}
    assert keys["r2d2-vitl14"]["visual_encoder.embeddings.patch_embedding.weight"] == [1024, 3, 14, 14]
    assert keys["r2d2-vitb16"]["visual_encoder.embeddings.patch_embedding.weight"] == [768, 3, 16, 16]
    assert not any(k.startswith("text_joint_layer") for k in keys["prd2-vitl14"])
    r2d2 = [n for n in hub.weights_names() if hub.entry(n).get("kind", "r2d2") in ("r2d2", "prd2")]
    assert len(r2d2) == 8
    for name in r2d2:
        art = hub.artifact(name)
        assert art.files[0].expected_keys, name  # every official checkpoint is checked key by key
        assert art.files[1].name == "vocab.txt" and art.files[1].sha256
    cclip = hub.artifact("chinese-clip-vit-b16")
    assert [f.name for f in cclip.files][-1] == "config.json" and cclip.files[0].state_dict


def test_zip_with_parent_member_is_refused_and_writes_nothing(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({"ok/a.txt": b"a", "../evil.txt": b"pwned"}))
    dest = tmp_path / "root"
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil.txt"):
        unzip(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not (dest / "ok").exists()


@pytest.mark.parametrize("name", ["/abs/x.txt", "a/../../x.txt", "C:/x.txt", "a\\..\\x.txt"])
def test_other_unsafe_member_names(tmp_path, name):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({name: b"x"}))
    with pytest.raises(UnsafeArchiveError):
        unzip(archive, tmp_path / "root")


def test_symlink_member_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    (tmp_path / "l.zip").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        unzip(tmp_path / "l.zip", tmp_path / "root")


def test_unzip_places_top_level_entries_and_keeps_existing(tmp_path):
    archive = tmp_path / "s.zip"
    archive.write_bytes(make_zip({"SET/a.txt": b"new", "SET/sub/b.txt": b"b", "top.txt": b"t"}))
    dest = tmp_path / "root"
    (dest / "top.txt").parent.mkdir(parents=True)
    (dest / "top.txt").write_text("mine")
    created = unzip(archive, dest)
    assert [p.name for p in created] == ["SET"]
    assert (dest / "SET" / "sub" / "b.txt").read_bytes() == b"b" and (dest / "top.txt").read_text() == "mine"
    assert not [p for p in dest.iterdir() if p.name.startswith(".ccmb-unpack")]


def test_fetched_archive_with_traversal_is_removed(server, home):
    server.files["/evil.zip"] = Served(make_zip({"../x": b"x"}))
    spec = FileSpec("evil.zip", (UrlSource(server.base + "/evil.zip"),), unpack=True, expect=("SET/a",))
    with pytest.raises(FetchError, match="escapes the destination"):
        fetch_file(Artifact("datasets", "evil", (spec,)), spec, home / "dl")
    assert not (home / "dl" / "evil.zip").exists()


def test_registry_file_names_must_be_plain(tmp_path):
    from ccmb.fetch.core import file_spec_from_dict

    for bad in ("../x.pth", "a/b.pth", ".hidden", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            file_spec_from_dict({"name": bad, "sources": []}, "test")
    with pytest.raises(ValueError, match="64 hex"):
        file_spec_from_dict({"name": "x", "sha256": "abc"}, "test")


def test_unzip_refuses_archives_larger_than_the_free_disk(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    archive = tmp_path / "big.zip"
    archive.write_bytes(make_zip({"SET/a.bin": b"x" * 10_000}))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(OSError, match="GiB free"):
        unzip(archive, tmp_path / "root")
    assert not (tmp_path / "root" / "SET").exists()
