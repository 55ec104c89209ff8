"""The one place ccmb starts a Spark session: web UI off, driver bound to 127.0.0.1 by default."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)

#: Set (to "true") on a session whose ``spark.sql.shuffle.partitions`` the user did not choose: the curation
#: steps then size it to their input (:func:`ccmb.corpus.engines.spark.size_shuffle_partitions`).
AUTO_SHUFFLE_FLAG = "spark.ccmb.shuffle.auto"


def get_spark_session(master: Optional[str] = None, app_name: str = "ccmb",
                      conf: Optional[Dict[str, Any]] = None):
    """Return (or create) a SparkSession.

    ``master`` defaults to ``$CCMB_SPARK_MASTER`` or ``local[*]``. On a cluster pass the cluster's
    master and, in ``conf``, ``spark.driver.bindAddress``/``spark.driver.host`` for your network; the
    loopback defaults below are for local mode. The web UI stays off unless ``conf`` turns it on.
    Adaptive query execution coalesces small shuffle partitions and turns joins with a small side into
    broadcast joins; without ``spark.sql.shuffle.partitions`` in ``conf`` the session is marked so that
    the curation steps size it to their input.
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
    logger.info("spark session %s on %s", app_name, master)
    return session
