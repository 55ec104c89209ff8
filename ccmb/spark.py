"""The one place ccmb starts a Spark session: web UI off, driver bound to 127.0.0.1 by default."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)

#: Set (to "true") on a session whose ``spark.sql.shuffle.partitions`` the user did not choose: the curation
#: steps then size it to their input (:func:`ccmb.corpus.engines.spark.size_shuffle_partitions`).
AUTO_SHUFFLE_FLAG = "spark.ccmb.shuffle.auto"
#: "false" keeps a cluster session from shipping the driver's ccmb to the executors (:func:`ship_ccmb`).
SHIP_CODE_FLAG = "spark.ccmb.shipCode"


def get_spark_session(master: Optional[str] = None, app_name: str = "ccmb",
                      conf: Optional[Dict[str, Any]] = None):
    """Return (or create) a SparkSession.

    ``master`` defaults to ``$CCMB_SPARK_MASTER`` or ``local[*]``. On a cluster pass the cluster's
    master and, in ``conf``, ``spark.driver.bindAddress``/``spark.driver.host`` for your network; the
    loopback defaults below are for local mode. The web UI stays off unless ``conf`` turns it on.
    Adaptive query execution coalesces small shuffle partitions and turns joins with a small side into
    broadcast joins; without ``spark.sql.shuffle.partitions`` in ``conf`` the session is marked so that
    the curation steps size it to their input. On a cluster (a master that is not ``local...``) the
    executors run the driver's ccmb: :func:`ship_ccmb`, unless ``conf`` sets ``spark.ccmb.shipCode=false``.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("pyspark is not installed: pip install 'ccmb[spark]' (needs Java 11+)") from exc
    master = master or os.environ.get("CCMB_SPARK_MASTER", "local[*]")
    if master.startswith("local"):
        # Local workers must run this interpreter (the one with ccmb installed), not `python3` on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings: Dict[str, Any] = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        AUTO_SHUFFLE_FLAG: "false" if "spark.sql.shuffle.partitions" in (conf or {}) else "true",
    }
    if master.startswith("local"):
        settings.update({"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"})
    settings.update(conf or {})
    builder = SparkSession.builder.master(master).appName(app_name)
    for k, v in settings.items():
        builder = builder.config(k, str(v))
    session = builder.getOrCreate()
    if not master.startswith("local") and session.conf.get(SHIP_CODE_FLAG, "true") != "false":
        ship_ccmb(session.sparkContext)
    logger.info("spark session %s on %s", app_name, master)
    return session


def ship_ccmb(sc) -> None:
    """Ship the driver's ``ccmb`` package (a zip, ``SparkContext.addPyFile``) to the executors of ``sc``.

    Executors in their own JVMs import the functions the curation steps send them by name; without this
    they would import whatever ccmb their node has installed (another version, or none). Their Python
    still needs ccmb's dependencies (numpy, pyarrow, pillow, scipy). Once per context."""
    if getattr(sc, "_ccmb_shipped", False):
        return
    package = Path(__file__).resolve().parent
    folder = tempfile.mkdtemp(prefix="ccmb-pyfiles-")
    atexit.register(shutil.rmtree, folder, True)  # served to executors while the session lives
    path = os.path.join(folder, "ccmb.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(package.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                zf.write(f, f.relative_to(package.parent).as_posix())
    sc.addPyFile(path)
    sc._ccmb_shipped = True
    logger.info("shipped %s to the executors (%d KB)", package, os.path.getsize(path) // 1024)
