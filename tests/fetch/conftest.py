"""Fixtures of the fetch tests: a loopback server and a clean, online-allowed environment."""
from __future__ import annotations

import pytest

from fetch_helpers import LoopbackServer


@pytest.fixture
def server():
    with LoopbackServer() as state:
        yield state


@pytest.fixture
def home(tmp_path, monkeypatch):
    """``$CCMB_HOME`` in tmp, network allowed (the suite sets CCMB_OFFLINE=1), no user mirrors."""
    h = tmp_path / "ccmb_home"
    monkeypatch.setenv("CCMB_HOME", str(h))
    monkeypatch.delenv("CCMB_OFFLINE", raising=False)
    monkeypatch.delenv("CCMB_MIRRORS", raising=False)
    monkeypatch.delenv("CCMB_GDRIVE_URL", raising=False)
    monkeypatch.setenv("CCMB_FETCH_TIMEOUT", "3")
    return h


@pytest.fixture
def hf_online(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE at import (the suite sets it); allow it for one test."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
