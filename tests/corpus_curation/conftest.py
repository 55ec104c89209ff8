"""Fixtures of the curation tests (builders in ``curation_helpers``)."""
from __future__ import annotations

import pytest

from curation_helpers import build_planted, write_download


@pytest.fixture
def make_download(tmp_path):
    def make(rows, name="download", per_shard=10):
        return write_download(tmp_path / name, rows, per_shard=per_shard)
    return make


@pytest.fixture
def planted(tmp_path):
    """A download folder with every kind of duplicate planted; returns (dir, {label: key})."""
    return build_planted(tmp_path / "planted")
