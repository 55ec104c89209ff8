"""``ccmb verify``: check a finished shard set or download folder against its manifest (checksums, counts,
every image, member names) and each tar's parquet against the tar and ``_stats.json``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

from .. import shards as fmt
from .. import storage
from .tables.schema import CurationError

logger = logging.getLogger(__name__)


def verify_shards(shard_dir: Union[str, Path], *, decode_images: bool = True,
                  progress: bool = False) -> fmt.VerifyReport:
    """Recompute every shard's checksum and sample count, open every image; report each problem.

    Built on :func:`ccmb.shards.verify_shard_set`: a missing shard, a changed checksum, a count that
    differs from ``manifest.json``/``sizes.json``, an unreadable tar, an undecodable image, an unsafe member
    name (``../x``, ``/abs``, links), a missing, truncated or edited parquet (keys, values, counts against the
    tar and ``_stats.json``) each add one problem line naming the file. ``report.ok`` is False when anything
    is wrong.
    """
    shard_dir = storage.location(shard_dir)  # a local folder or an fsspec URL (s3://bucket/shards)
    try:
        is_dir = storage.isdir(shard_dir)
    except OSError as exc:
        raise CurationError(str(exc)) from exc
    if not is_dir:
        raise CurationError(f"{shard_dir}: not a folder")
    report = fmt.verify_shard_set(shard_dir, decode_images=decode_images, progress=progress)
    for problem in report.problems:  # debug only: the caller reports them (`ccmb verify` prints each once)
        logger.debug("verify: %s", problem)
    logger.info("verify %s: %d shards, %d samples, %d problems", shard_dir, report.shards_checked,
                report.samples, len(report.problems))
    return report
