"""Shared test set-up: environment for offline runs, the gpu marker, a local Spark session, a Spark standalone
cluster (``spark_cluster``, from ``tests/spark_cluster.py``)."""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CCMB_OFFLINE", "1")  # ccmb fetch / ccmb-bench run never download in tests
# Tests talk to servers they start on 127.0.0.1: a proxy from the machine's environment must not sit between
# (the proxy tests set their own).
for _var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    os.environ.pop(_var, None)

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

from spark_cluster import spark_cluster  # noqa: E402,F401  (session fixture: a standalone cluster on 127.0.0.1)
# Fixtures of services the tests start on 127.0.0.1: the S3 API server (s3_server, s3_url).
pytest_plugins = ["s3_server"]

# Processes the tests start (spawned download workers, CLI subprocesses, Spark's Python workers) put their temp
# files into one folder per session, removed at its end: processes the tests kill on purpose (kill -9, dead
# workers) cannot clean up after themselves. This process keeps the system temp dir (pytest's basetemp).
tempfile.gettempdir()  # cached for this process before TMPDIR changes
_CHILD_TMP = tempfile.mkdtemp(prefix="ccmb-tests-children-")
os.environ["TMPDIR"] = _CHILD_TMP


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CHILD_TMP, ignore_errors=True)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def spark():
    """One local-mode Spark session for the whole run (UI off, loopback only)."""
    from ccmb.spark import get_spark_session

    session = get_spark_session("local[2]", app_name="ccmb-tests")
    yield session
    session.stop()
