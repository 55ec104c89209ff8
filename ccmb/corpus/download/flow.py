"""Download a URL list (the Zero corpus or any other) into a ccmb shard set through img2dataset.

:func:`download` is both the API and the ``ccmb download`` CLI. Steps:

1. Tidy the output folder for a resume (:mod:`ccmb.corpus.dl_folder`): a shard is finished when its
   ``NNNNN_stats.json`` exists and parses; anything else named ``NNNNN.*`` is removed, as are
   temporaries and img2dataset's ``_tmp``.
2. Normalise the inputs (``ccmb.corpus.ingest``) into ``OUT/_ccmb/input/part-*.parquet``, or reuse
   them when inputs and options are unchanged (a fingerprint in ``OUT/_ccmb/state.json``); input lines
   refused before download are listed in ``OUT/_ccmb/refused_input.tsv``.
3. Call ``img2dataset.download`` with our classes and process pool (:mod:`ccmb.corpus.dl_img2dataset`):
   the guarded fetch (:mod:`ccmb.corpus.http_fetch`: deadline per request, ``max_bytes``, http(s)-only
   redirects, ``deny_private``), the ccmb shard format, a worker pool that cannot deadlock, a clean stop
   on a full disk.
4. ``retry_failed`` (:mod:`ccmb.corpus.dl_retry`): rows that failed to download/resize in finished
   shards are downloaded again and merged into their shards under their original keys.
5. A summary (rows, successes, failures by reason, the first refused input lines, images/s) and,
   once complete, ``sizes.json`` and ``manifest.json``.

A full disk stops the run with one :class:`DownloadError` naming the folder; unfinished shards are
removed by the next run, so the folder stays resumable.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

from ... import __version__, atomic, shards
from .. import ingest
from . import http_fetch
from .folder import (ORIG_KEY_COLUMN, REFUSED_EXAMPLES, REFUSED_FILE, RETRYABLE, SHARD_FILE_RE,  # noqa: F401
                        STATE_DIR, STATUS_FAILED_INPUT, DownloadError, DownloadSummary, PathLike,
                        disk_full_error, failure_reason, finish_shard, is_disk_full, read_json, summarize,
                        tidy_output)
from .glue import DiskFullError, Options, run_img2dataset
from .retry import retry_failed

logger = logging.getLogger(__name__)

#: img2dataset adds this token to its user agent: "... (compatible; <token>; +https://github.com/rom1504/img2dataset)";
#: it is also the name that site-specific X-Robots-Tag directives ("ccmb/0.1.0: noai") must use.
USER_AGENT_TOKEN = f"ccmb/{__version__}"
FAILURE_WARNING_RATE = 0.30
DISTRIBUTORS = ("multiprocessing", "pyspark")
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
DEFAULT_MAX_BYTES = http_fetch.DEFAULT_MAX_BYTES

__all__ = ["download", "DownloadSummary", "DownloadError", "summarize", "failure_reason", "finish_shard",
           "tidy_output", "retry_failed", "USER_AGENT_TOKEN"]


def download(inputs: Sequence[PathLike], output_dir: PathLike, *, mode: str = "zero",
             caption_field: str = "title", url_col: str = "url", caption_col: Optional[str] = "caption",
             id_col: Optional[str] = None, processes: Optional[int] = None, threads: int = 64,
             image_size: int = 256, resize_mode: str = "keep_ratio", timeout: int = 10, retries: int = 1,
             samples_per_shard: int = 10_000, distributor: str = "multiprocessing", limit: Optional[int] = None,
             retry_failed_rows: bool = False, allow_file_urls: bool = False, strict: bool = False,
             encode_quality: int = 95, user_agent_token: str = USER_AGENT_TOKEN,
             spark_master: Optional[str] = None, overwrite: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
             deny_private: bool = False, command: Optional[str] = None) -> DownloadSummary:
    """Download ``inputs`` (Zero records with ``mode="zero"``, any URL list with ``mode="urls"``) into
    the shard set ``output_dir``; resumable (call it again), ``retry_failed_rows`` merges second tries.

    ``inputs``: files, folders, globs (JSON lines/array, CSV, TSV, parquet; ``.gz``). ``caption_field``
    (zero) or ``url_col``/``caption_col``/``id_col`` (urls) choose the columns. ``processes``,
    ``threads``, ``image_size``, ``resize_mode``, ``retries``, ``samples_per_shard``,
    ``encode_quality`` and ``user_agent_token`` go to img2dataset; ``distributor="pyspark"`` uses the
    active Spark session or creates one (``spark_master``). ``limit`` keeps the first N rows. Only
    http(s) URLs unless ``allow_file_urls``; ``strict`` makes malformed records fatal. ``overwrite``
    deletes an existing shard set first. Limits of every request: ``timeout`` seconds of wall clock
    (redirects included), ``max_bytes`` of body, redirects only to http(s), and with ``deny_private`` no
    loopback/private/link-local address. Returns the :class:`DownloadSummary` (also logged).
    Raises :class:`ingest.InputError` for unreadable inputs, :class:`DownloadError` when the output
    folder holds another download or the disk is full.
    """
    output = Path(output_dir).absolute()
    try:
        return _download(inputs, output, mode=mode, caption_field=caption_field, url_col=url_col,
                         caption_col=caption_col, id_col=id_col, processes=processes, threads=threads,
                         image_size=image_size, resize_mode=resize_mode, timeout=timeout, retries=retries,
                         samples_per_shard=samples_per_shard, distributor=distributor, limit=limit,
                         retry_failed_rows=retry_failed_rows, allow_file_urls=allow_file_urls, strict=strict,
                         encode_quality=encode_quality, user_agent_token=user_agent_token,
                         spark_master=spark_master, overwrite=overwrite, max_bytes=max_bytes,
                         deny_private=deny_private, command=command)
    except DiskFullError as exc:
        raise DownloadError(f"disk full ({exc}): the download stopped; free space on the disk of {output} "
                            f"and run the same command again to resume") from None
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, output) from None
        raise
    except Exception as exc:  # a Spark job fails with the worker's error as text
        if "DiskFullError" in str(exc) or "No space left on device" in str(exc):
            raise DownloadError(f"disk full: the download stopped; free space on the disk of {output} and run "
                                f"the same command again to resume") from exc
        raise


def _download(inputs: Sequence[PathLike], output: Path, *, mode: str, caption_field: str, url_col: str,
              caption_col: Optional[str], id_col: Optional[str], processes: Optional[int], threads: int,
              image_size: int, resize_mode: str, timeout: int, retries: int, samples_per_shard: int,
              distributor: str, limit: Optional[int], retry_failed_rows: bool, allow_file_urls: bool,
              strict: bool, encode_quality: int, user_agent_token: str, spark_master: Optional[str],
              overwrite: bool, max_bytes: int, deny_private: bool, command: Optional[str]) -> DownloadSummary:
    t0 = time.time()
    if mode not in ("zero", "urls"):
        raise ValueError(f"mode must be 'zero' or 'urls', got {mode!r}")
    if mode == "zero" and caption_field not in ingest.ZERO_CAPTION_FIELDS:
        raise ValueError(f"caption_field must be one of {ingest.ZERO_CAPTION_FIELDS}, got {caption_field!r}")
    if distributor not in DISTRIBUTORS:
        raise ValueError(f"distributor must be one of {DISTRIBUTORS}, got {distributor!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if samples_per_shard < 2:
        raise ValueError("samples_per_shard must be at least 2")
    if limit is not None and limit < 1:
        raise ValueError("limit must be positive")
    if timeout <= 0:
        raise ValueError("timeout must be positive (seconds per request)")
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    opt = Options(processes=processes or max(1, os.cpu_count() or 1), threads=threads, image_size=image_size,
                   resize_mode=resize_mode, timeout=timeout, retries=retries, samples_per_shard=samples_per_shard,
                   distributor=distributor, encode_quality=encode_quality, user_agent_token=user_agent_token,
                   spark_master=spark_master, max_bytes=max_bytes, deny_private=deny_private)
    if overwrite and output.exists():
        for p in output.iterdir():
            if SHARD_FILE_RE.match(p.name) or p.name in (shards.SIZES_FILE, shards.MANIFEST_FILE):
                p.unlink()
        shutil.rmtree(output / STATE_DIR, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    finished_before = tidy_output(output)

    files = ingest.resolve_inputs(inputs)
    layout = ingest.Layout(mode=mode, caption_field=caption_field, url_col=url_col, caption_col=caption_col,
                           id_col=id_col, allow_file_urls=allow_file_urls)
    key_options = {"mode": mode, "caption_field": caption_field, "url_col": url_col, "caption_col": caption_col,
                   "id_col": id_col, "limit": limit, "samples_per_shard": samples_per_shard, "strict": strict,
                   "allow_file_urls": allow_file_urls, "ccmb_format": shards.FORMAT_VERSION}
    fingerprint = ingest.fingerprint_inputs(files, key_options)
    state_dir = output / STATE_DIR
    state_path = state_dir / "state.json"
    state = read_json(state_path)
    parts_dir = state_dir / "input"
    if state and state.get("fingerprint") == fingerprint and all((parts_dir / p).exists() for p in state["parts"]):
        logger.info("resuming: inputs unchanged, reusing %s", parts_dir)
    else:
        if state and finished_before:
            raise DownloadError(f"{output} holds a download of other inputs or options ({state.get('command')}); "
                                f"use another --output, or --overwrite to start again")
        res = ingest.normalize_inputs(files, parts_dir, layout, samples_per_shard=samples_per_shard,
                                      limit=limit, strict=strict, refused_path=state_dir / REFUSED_FILE,
                                      refused_examples=REFUSED_EXAMPLES)
        state = {"fingerprint": fingerprint, "rows": res.rows, "columns": res.columns, "refused": res.refused,
                 "refused_examples": res.refused_examples,
                 "parts": [p.name for p in res.parts], "inputs": [str(f) for f in files], "options": key_options,
                 "command": command, "ccmb_version": __version__}
        atomic.write_json(state_path, state)
    input_rows, columns = int(state["rows"]), list(state["columns"])
    expected = math.ceil(input_rows / samples_per_shard)
    successes_before = summarize(output, input_rows, expected).successes if finished_before else 0

    t_ingest = time.time()
    logger.info("ingest: %d rows in %.2fs", input_rows, t_ingest - t0)
    if len(finished_before) < expected:
        run_img2dataset(parts_dir, output, columns, opt)
    t_i2d = time.time()
    logger.info("img2dataset: %.2fs", t_i2d - t_ingest)
    shutil.rmtree(output / "_tmp", ignore_errors=True)
    known = {}
    for name in shards.finished_shards(output):  # crash leftovers and shards whose worker-side pass failed
        known[f"{name}.tar"] = finish_shard(output, int(name))

    retried = recovered = 0
    if retry_failed_rows:
        retried, recovered = retry_failed(output, opt)
        known = {f"{n}.tar": finish_shard(output, int(n)) for n in shards.finished_shards(output)}

    summary = summarize(output, input_rows, expected)
    logger.info("normalise/retry/summary: %.2fs", time.time() - t_i2d)
    summary.elapsed_s = time.time() - t0
    summary.new_successes = summary.successes - successes_before
    summary.retried, summary.recovered = retried, recovered
    summary.refused_total = sum(state.get("refused", {}).values())
    summary.refused_examples = list(state.get("refused_examples", []))
    if summary.complete:
        shards.finalize_shard_set(output, command=command, known=known,
                                  extra={"download": {"input_rows": input_rows, "successes": summary.successes}})
    elif summary.shards == summary.expected_shards:
        logger.error("%d input rows but %d parquet rows: rows are unaccounted for", input_rows, summary.rows)
    atomic.write_json(state_dir / "summary.json", summary.to_dict())
    logger.info("\n%s", summary.report())
    if summary.rows and summary.failure_rate > FAILURE_WARNING_RATE:
        logger.warning("!!! %.0f%% of the rows FAILED (more than %.0f%%): check the network, the input URLs and "
                       "the failure reasons above !!!", 100 * summary.failure_rate, 100 * FAILURE_WARNING_RATE)
    return summary
