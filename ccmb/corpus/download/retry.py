"""``--retry-failed``: download the failed rows of finished shards again and merge the successes.

img2dataset cannot do this itself (its issue #452). The failed rows go into a temporary folder
(``OUT/_ccmb/retry``; a local temporary folder when OUT is on object storage) as a fresh img2dataset input
carrying their original key; each affected shard is then rewritten atomically with the recovered samples under
their original keys (no duplicates), on disk or on object storage alike (:class:`ccmb.shards.ShardWriter`).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

import pyarrow as pa
import pyarrow.compute  # noqa: F401
import pyarrow.parquet as pq

from ... import atomic, shards, storage
from .. import ingest
from .folder import (ORIG_KEY_COLUMN, RETRYABLE, STATE_DIR, CcmbShardWriter, PathLike, clean_meta,
                        extra_columns, failure_row, read_json, read_table)
from .glue import Options, run_img2dataset
from .grouping import ShardLanes, group_by_host
from .report import FINAL_CATEGORIES

logger = logging.getLogger(__name__)

def retry_failed(output_dir: PathLike, opt: Options, host_groups: int = 0) -> tuple:
    """Download again the failed rows of finished shards and merge the successes under their keys.

    Refusals that a second request would meet again (robots.txt rules, opt-outs, private addresses, the
    blocklist) are not retried. The rows are grouped by host like the first run (``host_groups``).
    Returns (rows retried, rows recovered).
    """
    output_dir = storage.location(output_dir)
    with contextlib.ExitStack() as stack:
        if storage.is_url(output_dir):  # img2dataset's scratch output stays local; only the merge goes remote
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ccmb-retry-")))
        else:
            work = Path(output_dir) / STATE_DIR / "retry"
            shutil.rmtree(work, ignore_errors=True)
            stack.callback(shutil.rmtree, work, True)
        return _retry(output_dir, work, opt, host_groups)


def _retry(output_dir: storage.Location, work: Path, opt: Options, host_groups: int) -> tuple:
    failed_rows: List[Dict[str, Any]] = []
    extra: List[str] = []
    for name in shards.finished_shards(output_dir):
        table = read_table(storage.join(output_dir, f"{name}.parquet"))
        for c in extra_columns(table.column_names):
            if c not in extra:
                extra.append(c)
        mask = pa.compute.is_in(table.column("status"), pa.array(list(RETRYABLE)))
        final = pa.compute.fill_null(pa.compute.starts_with(table.column("error_message"), FINAL_CATEGORIES[0]), False)
        for prefix in FINAL_CATEGORIES[1:]:
            final = pa.compute.or_(final, pa.compute.fill_null(
                pa.compute.starts_with(table.column("error_message"), prefix), False))
        failed_rows.extend(table.filter(pa.compute.and_(mask, pa.compute.invert(final))).to_pylist())
    if not failed_rows:
        logger.info("retry-failed: no failed rows to retry")
        return 0, 0
    columns = ingest.META_COLUMNS + [c for c in extra if c not in ingest.META_COLUMNS] + [ORIG_KEY_COLUMN]
    data = {c: [r.get(c) for r in failed_rows] for c in ["url", "caption"] + columns[:-1]}
    data[ORIG_KEY_COLUMN] = [r["key"] for r in failed_rows]
    (work / "input").mkdir(parents=True)
    table = pa.Table.from_pydict({c: pa.array(v, pa.string()) for c, v in data.items()})
    with atomic.atomic_open(work / "input" / "part-00000.parquet", "wb") as fh:
        pq.write_table(table, fh)
    lanes = None
    if host_groups:
        _, groups = group_by_host([work / "input" / "part-00000.parquet"], work / "input", host_groups,
                                  opt.samples_per_shard)
        lanes = ShardLanes(tuple(groups))
    logger.warning("retry-failed: downloading %d failed rows again", len(failed_rows))
    run_img2dataset(work / "input", work / "out", columns, opt, retry=True, lanes=lanes)

    # orig key -> retry outcome (row) and sample location
    outcome: Dict[str, Dict[str, Any]] = {}
    tars_by_shard: Dict[str, set] = defaultdict(set)
    for pq_path in sorted((work / "out").glob("*.parquet")):
        for r in read_table(pq_path, columns=[ORIG_KEY_COLUMN, "status", "error_message"]).to_pylist():
            outcome[r[ORIG_KEY_COLUMN]] = r
            tars_by_shard[_shard_of(r[ORIG_KEY_COLUMN], opt.samples_per_shard)].add(pq_path.with_suffix(".tar"))
    recovered = 0
    for name in sorted(tars_by_shard):
        new: Dict[str, shards.Sample] = {}
        for tar in sorted(tars_by_shard[name]):
            if not tar.exists():
                continue
            for s in shards.iter_tar_samples(tar):
                orig = s.meta.get(ORIG_KEY_COLUMN)
                if orig and _shard_of(orig, opt.samples_per_shard) == name:
                    new[orig] = s
        recovered += _merge_shard(output_dir, int(name), new, outcome)
    return len(failed_rows), recovered


def _shard_of(key: str, samples_per_shard: int) -> str:
    width = len(shards.make_key(0, 0, samples_per_shard)) - shards.SHARD_DIGITS
    return key[: len(key) - width]


def _merge_shard(output_dir: storage.Location, shard_id: int, new: Dict[str, "shards.Sample"],
                 outcome: Dict[str, Dict[str, Any]]) -> int:
    """Rewrite one finished shard with the retried samples under their original keys; returns how many."""
    name = shards.shard_name(shard_id)
    table = read_table(storage.join(output_dir, f"{name}.parquet"))
    rows = table.to_pylist()
    stats = read_json(storage.join(output_dir, f"{name}_stats.json")) or {}
    added = 0
    with CcmbShardWriter(output_dir, shard_id, extra_columns(table.column_names),
                          start_time=stats.get("start_time")) as w:
        for s in shards.iter_tar_samples(storage.join(output_dir, f"{name}.tar")):
            w.write(s.key, s.image, s.text, clean_meta(s.meta), image_ext=s.image_ext)
        for row in rows:
            key = row["key"]
            if key in w.keys:
                continue
            sample = new.get(key)
            if sample is not None and row.get("status") in RETRYABLE:
                meta = clean_meta(sample.meta)
                meta["key"] = key
                w.write(key, sample.image, sample.text, meta, image_ext=sample.image_ext)
                added += 1
                continue
            meta, status, error = failure_row(row)
            if key in outcome and status in RETRYABLE:  # failed again: keep the latest reason
                status = outcome[key].get("status") or status
                error = outcome[key].get("error_message") or error
                if status == shards.STATUS_SUCCESS:
                    status, error = "failed_to_download", "retried sample missing"
            w.write_failure(meta, status, error)
    return added
