"""Fixtures of the scale tests (builders in ``scale_helpers``)."""
from __future__ import annotations

import pytest

from scale_helpers import write_planted


@pytest.fixture(scope="module")
def planted_scale(tmp_path_factory):
    """A download folder with planted duplicates of every level (shared by a module's tests)."""
    return write_planted(tmp_path_factory.mktemp("scale") / "download")
