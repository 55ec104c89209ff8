"""Broken shard-set files give one clear error naming the file: a 0-byte tar, a binary or wrongly shaped
manifest.json / sizes.json, a FIFO in place of the manifest (never read)."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main


@pytest.mark.parametrize("content,reason", [
    (bytes(range(256)), "not JSON (binary data"),
    (b"[1, 2]", "not a manifest"),
    (b'{"shards": [1]}', "'shards' must map tar names to entries"),
    (b'{"shards": {"00000.tar": 3}}', "'shards' must map tar names to entries"),
    (b"[" * 10_000, "invalid JSON: nested deeper"),
])
def test_manifest_problems_name_the_file(tmp_path, content, reason):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(shards.ShardFormatError) as err:
        shards.read_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(err.value) and reason in str(err.value)
    report = shards.verify_shard_set(tmp_path)
    assert not report.ok and reason in report.problems[0]


def test_sizes_and_fifo(tmp_path):
    (tmp_path / "sizes.json").write_bytes(b'{"00000.tar": "many"}')
    with pytest.raises(shards.ShardFormatError, match="sizes.json: invalid"):
        shards.read_sizes(tmp_path)
    os.mkfifo(tmp_path / "manifest.json")
    with pytest.raises(shards.ShardFormatError, match="not a regular file"):
        shards.read_manifest(tmp_path)


def test_shards_ls_and_finalize_on_an_empty_tar(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    for args in (["shards", "ls", str(tmp_path)], ["shards", "finalize", str(tmp_path)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and res.output.strip() == f"Error: {tmp_path / '00000.tar'}: unreadable tar: empty file"
