"""Download a URL list (the Zero corpus or any other) into a ccmb shard set through img2dataset.

:func:`download` is both the API and the ``ccmb download`` CLI. Steps:

1. Claim the output folder (:mod:`ccmb.outdir`: a new or empty folder, or an earlier download) and hold its
   lock for the whole run (a second download into it is refused, naming the holder); tidy it for a resume
   (:mod:`.folder`): a shard is finished when its ``NNNNN_stats.json`` exists and parses; anything else named
   ``NNNNN.*`` is removed, as are temporaries and img2dataset's ``_tmp``.
2. Check the inputs' first rows (an input without the URL field at all is refused before anything starts),
   normalise them (:mod:`ccmb.corpus.ingest`) into ``OUT/_ccmb/input/``, grouped by host
   (:mod:`.grouping`), or reuse them when inputs and options are unchanged (a fingerprint in
   ``OUT/_ccmb/state.json``, which covers every option that changes stored bytes or keys); input lines refused
   before download are listed in ``OUT/_ccmb/refused_input.tsv``.
3. Call ``img2dataset.download`` with our shard loop and distributors (:mod:`.glue`, :mod:`.shard`):
   robots.txt, opt-outs, per-host pacing, the guarded fetch, the memory-bounded decoder, the blocklist.
4. ``retry_failed`` (:mod:`.retry`): rows that failed to download/resize in finished shards are downloaded
   again and merged into their shards under their original keys (refusals are not asked again).
5. A summary (rows, successes, failures by reason, refusals by reason, the pacing applied, the first refused
   input lines, images/s) and, once complete with at least one image, ``sizes.json`` and ``manifest.json``.

A full disk stops the run with one :class:`DownloadError` naming the folder; unfinished shards are
removed by the next run, so the folder stays resumable.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from ... import __version__, outdir, shards, storage
from ...blocklist import Blocklist, BlocklistError
from .. import ingest
from . import http_fetch
from .decode import DEFAULT_BUDGET_MB, RESIZE_MODES
from .folder import (REFUSED_EXAMPLES, REFUSED_FILE, STATE_DIR, DownloadError, DownloadSummary, PathLike,
                     disk_full_error, finish_shard, is_disk_full, looks_like_download, read_json, remove_folder,
                     summarize, tidy_output)
from .glue import DiskFullError, Options, ensure_spark, run_img2dataset
from .grouping import MAX_GROUPS, ShardLanes, group_by_host
from .pacing import PacingConfig
from .policy import CrawlPolicy, check_contact, user_agent
from .report import download_report
from .retry import retry_failed
from .robots import ERROR_TTL

logger = logging.getLogger(__name__)

#: The user agent without a contact (``--contact`` adds one); site rules name the tokens ``ccmb`` and ``img2dataset``.
USER_AGENT_TOKEN = user_agent(None)
FAILURE_WARNING_RATE = 0.30
DISTRIBUTORS = ("multiprocessing", "pyspark")
DEFAULT_MAX_BYTES = http_fetch.DEFAULT_MAX_BYTES
#: Bumped when the stored bytes of the same image and options change (joins the resume fingerprint).
DECODER_VERSION = 2
OUTPUT_KIND = "download"


def download(inputs: Sequence[PathLike], output_dir: PathLike, *, mode: str = "zero",
             caption_field: str = "title", url_col: str = "url", caption_col: Optional[str] = "caption",
             id_col: Optional[str] = None, processes: Optional[int] = None, threads: int = 64,
             image_size: int = 256, resize_mode: str = "keep_ratio", encode_quality: int = 95,
             timeout: float = 10, retries: int = 1, samples_per_shard: int = 10_000,
             distributor: str = "multiprocessing", spark_master: Optional[str] = None, limit: Optional[int] = None,
             retry_failed_rows: bool = False, allow_file_urls: bool = False, strict: bool = False,
             overwrite: bool = False, max_bytes: int = DEFAULT_MAX_BYTES, allow_private: bool = False,
             contact: Optional[str] = None, ignore_robots: bool = False, robots_retry: float = ERROR_TTL,
             host_concurrency: int = PacingConfig.concurrency, host_rate: float = PacingConfig.rate,
             host_groups: Optional[int] = None, max_retry_after: float = PacingConfig.max_retry_after,
             backoff_base: float = PacingConfig.backoff_base, host_fail_after: int = PacingConfig.fail_after,
             host_pause: float = PacingConfig.pause, decode_budget_mb: int = DEFAULT_BUDGET_MB,
             blocklist: Union[None, PathLike, Sequence[PathLike]] = None,
             command: Optional[str] = None) -> DownloadSummary:
    """Download ``inputs`` (Zero records with ``mode="zero"``, any URL list with ``mode="urls"``) into the shard
    set ``output_dir``; resumable (call it again), ``retry_failed_rows`` merges second tries.

    ``inputs``: files, folders, globs (JSON lines/array, CSV, TSV, parquet; ``.gz``). ``caption_field`` (zero) or
    ``url_col``/``caption_col``/``id_col`` (urls) choose the columns. Stored bytes: ``image_size``,
    ``resize_mode``, ``encode_quality``. Work: ``processes`` x ``threads``, ``samples_per_shard``,
    ``distributor="pyspark"`` (the active Spark session, or one on ``spark_master``), ``limit`` (first N rows).
    Each request: ``timeout`` seconds of wall clock (redirects included), ``max_bytes`` of body, http(s) only
    (``allow_file_urls`` also reads ``file://`` input URLs), no private or special-purpose address unless
    ``allow_private``. Politeness (docs/corpus.md): robots.txt (``ignore_robots`` skips it, loudly;
    ``robots_retry`` seconds before an unreachable one is tried again), opt-out headers, per host at most
    ``host_concurrency`` requests at once and ``host_rate`` per second, ``Retry-After`` up to
    ``max_retry_after`` seconds, backoff from ``backoff_base`` seconds, ``retries`` per row, a host failing
    ``host_fail_after`` times in a row paused ``host_pause`` seconds then given up; the input grouped into
    ``host_groups`` groups by host, each downloaded by one worker at a time (None: one group per worker
    process, or per core of the Spark session; 0: no grouping, the limits then hold per worker process); the
    user agent carries ``contact``. ``blocklist``: file(s) of MD5/SHA-256 hashes, URLs and domains never stored.
    ``decode_budget_mb`` bounds the memory of decoding one image. ``overwrite`` empties an earlier download in
    ``output_dir`` first; ``strict`` makes malformed records fatal.

    Returns the :class:`DownloadSummary` (also logged; ``successes == 0`` means nothing was stored). Raises
    :class:`ingest.InputError` for unreadable or wrong-kind inputs, :class:`DownloadError` (a ValueError for
    bad options) when the output folder is not a download's, is in use, or the disk is full.
    """
    output = storage.location(output_dir)
    if isinstance(output, Path):
        output = output.absolute()
    try:
        return _download(inputs, output, locals())
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


def _check_options(o: Dict[str, Any]) -> None:
    """ValueError naming the option for anything out of range (the CLI's click ranges say the same)."""
    if o["mode"] not in ("zero", "urls"):
        raise ValueError(f"mode must be 'zero' or 'urls', got {o['mode']!r}")
    if o["mode"] == "zero" and o["caption_field"] not in ingest.ZERO_CAPTION_FIELDS:
        raise ValueError(f"caption_field must be one of {ingest.ZERO_CAPTION_FIELDS}, got {o['caption_field']!r}")
    if o["distributor"] not in DISTRIBUTORS:
        raise ValueError(f"distributor must be one of {DISTRIBUTORS}, got {o['distributor']!r}")
    if o["resize_mode"] not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {o['resize_mode']!r}")
    ranges = {"threads": (1, 1024), "image_size": (16, 16384), "encode_quality": (1, 100), "retries": (0, 20),
              "samples_per_shard": (2, 10_000_000), "max_bytes": (1, None), "host_concurrency": (1, 1024),
              "host_groups": (0, MAX_GROUPS), "host_fail_after": (1, None), "decode_budget_mb": (16, None)}
    for name, (lo, hi) in ranges.items():
        v = o[name]
        if v is None and name == "host_groups":
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
            raise ValueError(f"{name} must be an integer in [{lo}, {hi if hi is not None else 'inf'}], got {v!r}")
    if o["processes"] is not None and not (isinstance(o["processes"], int) and 1 <= o["processes"] <= 1024):
        raise ValueError(f"processes must be an integer in [1, 1024], got {o['processes']!r}")
    if o["limit"] is not None and not (isinstance(o["limit"], int) and o["limit"] >= 1):
        raise ValueError("limit must be a positive integer")
    if not o["timeout"] > 0:
        raise ValueError("timeout must be positive (seconds per request)")
    if not o["host_rate"] > 0:
        raise ValueError("host_rate must be positive (requests per second per host)")
    for name in ("max_retry_after", "backoff_base", "host_pause", "robots_retry"):
        if not o[name] >= 0:
            raise ValueError(f"{name} must be >= 0 seconds")


def _policy(o: Dict[str, Any], blocklist: Optional[Blocklist], files) -> CrawlPolicy:
    pacing = PacingConfig(concurrency=o["host_concurrency"], rate=float(o["host_rate"]), retries=o["retries"],
                          backoff_base=float(o["backoff_base"]), max_retry_after=float(o["max_retry_after"]),
                          fail_after=o["host_fail_after"], pause=float(o["host_pause"]))
    pacing.check()
    return CrawlPolicy(contact=check_contact(o["contact"]), respect_robots=not o["ignore_robots"],
                       robots_error_ttl=float(o["robots_retry"]), pacing=pacing, timeout=float(o["timeout"]),
                       max_bytes=o["max_bytes"], allow_private=bool(o["allow_private"]),
                       blocklist_files=files, blocklist_digest=blocklist.digest if blocklist else "")


def _download(inputs: Sequence[PathLike], output: storage.Location, o: Dict[str, Any]) -> DownloadSummary:
    t0 = time.time()
    _check_options(o)
    command = o["command"]
    blocklist = None
    files_bl: tuple = ()
    if o["blocklist"] is not None:
        paths = [o["blocklist"]] if isinstance(o["blocklist"], (str, os.PathLike)) else list(o["blocklist"])
        files_bl = tuple(str(Path(p).absolute()) for p in paths)
        try:
            blocklist = Blocklist.load(files_bl)
        except BlocklistError as exc:
            raise ValueError(str(exc)) from None
    policy = _policy(o, blocklist, files_bl)
    files = ingest.resolve_inputs(inputs)
    layout = ingest.Layout(mode=o["mode"], caption_field=o["caption_field"], url_col=o["url_col"],
                           caption_col=o["caption_col"], id_col=o["id_col"], allow_file_urls=o["allow_file_urls"])
    ingest.check_inputs(files, layout)  # a wrong kind of input: refused before the output folder is touched
    outdir.refuse_inside(output, [p for p in inputs if Path(p).is_dir()])
    try:
        outdir.claim(output, OUTPUT_KIND, legacy=looks_like_download,
                     hint="choose a new or empty folder for the download")
    except outdir.OutputFolderError as exc:
        raise DownloadError(str(exc)) from None
    try:
        lock = outdir.FolderLock(output, command).acquire()
    except outdir.OutputFolderError as exc:
        raise DownloadError(str(exc)) from None
    try:
        return _run(files, layout, output, o, policy, t0)
    finally:
        lock.release()


def _run(files, layout: "ingest.Layout", output: storage.Location, o: Dict[str, Any], policy: CrawlPolicy,
         t0: float) -> DownloadSummary:
    if o["overwrite"]:
        outdir.clear(output, OUTPUT_KIND)
    finished_before = tidy_output(output)
    if not policy.respect_robots:
        logger.warning("!!! --ignore-robots: robots.txt is NOT read; sites' crawling rules are ignored (recorded "
                       "in %s and in the summary) !!!", storage.join(output, STATE_DIR, "state.json"))
    sps = o["samples_per_shard"]
    processes = o["processes"] or max(1, os.cpu_count() or 1)
    opt = Options(processes=processes, threads=o["threads"], image_size=o["image_size"], resize_mode=o["resize_mode"],
                  samples_per_shard=sps, distributor=o["distributor"], encode_quality=o["encode_quality"],
                  spark_master=o["spark_master"], policy=policy, decode_budget_mb=o["decode_budget_mb"])
    spark_owned = ensure_spark(opt) if o["distributor"] == "pyspark" else None
    try:
        return _run_with(files, layout, output, o, policy, t0, opt, spark_owned, finished_before)
    finally:
        if spark_owned is not None:
            spark_owned.stop()


def _auto_groups(opt: Options, spark) -> int:
    """One host group per worker: the processes, or the Spark session's default parallelism."""
    if opt.distributor == "pyspark":
        from pyspark.sql import SparkSession

        session = spark or SparkSession.getActiveSession()
        workers = session.sparkContext.defaultParallelism if session is not None else opt.processes
    else:
        workers = opt.processes
    return max(1, min(MAX_GROUPS, int(workers)))


def _run_with(files, layout: "ingest.Layout", output: storage.Location, o: Dict[str, Any], policy: CrawlPolicy, t0: float,
              opt: Options, spark, finished_before) -> DownloadSummary:
    command = o["command"]
    sps = o["samples_per_shard"]
    key_options = {"mode": o["mode"], "caption_field": o["caption_field"], "url_col": o["url_col"],
                   "caption_col": o["caption_col"], "id_col": o["id_col"], "limit": o["limit"],
                   "samples_per_shard": sps, "strict": o["strict"], "allow_file_urls": o["allow_file_urls"],
                   "ccmb_format": shards.FORMAT_VERSION, "host_groups": o["host_groups"], "image_size": o["image_size"],
                   "resize_mode": o["resize_mode"], "encode_quality": o["encode_quality"],
                   "decoder": DECODER_VERSION}
    fingerprint = ingest.fingerprint_inputs(files, key_options)
    state_dir = storage.join(output, STATE_DIR)
    state_path = storage.join(state_dir, "state.json")
    state = read_json(state_path)
    parts_dir = storage.join(state_dir, "input")
    runs = list(state.get("runs", [])) if state else []
    if state and state.get("fingerprint") == fingerprint and all(storage.exists(storage.join(parts_dir, p))
                                                                 for p in state["parts"]):
        logger.info("resuming: inputs and options unchanged, reusing %s", parts_dir)
    else:
        if state and finished_before:
            raise DownloadError(f"{output} holds a download of other inputs or options ({state.get('command')}); "
                                f"use another --output, or --overwrite to start again")
        # the input parts are made on local disk (a temporary folder when the output is on object storage,
        # then uploaded: a resumed run on another machine finds them there)
        stage = tempfile.TemporaryDirectory(prefix="ccmb-ingest-") if storage.is_url(output) else None
        local_state = Path(stage.name) if stage else state_dir
        local_parts = local_state / "input"
        try:
            res = ingest.normalize_inputs(files, local_parts, layout, samples_per_shard=sps, limit=o["limit"],
                                          strict=o["strict"], refused_path=local_state / REFUSED_FILE,
                                          refused_examples=REFUSED_EXAMPLES)
            parts, lanes = list(res.parts), None
            groups = o["host_groups"] if o["host_groups"] is not None else _auto_groups(opt, spark)
            if groups:
                parts, lanes = group_by_host(parts, local_parts, groups, sps)
            if stage is not None:
                storage.remove_tree(parts_dir)
                for p in parts:
                    storage.write_bytes(storage.join(parts_dir, p.name), p.read_bytes())
                if (local_state / REFUSED_FILE).is_file():
                    storage.write_bytes(storage.join(state_dir, REFUSED_FILE),
                                        (local_state / REFUSED_FILE).read_bytes())
        finally:
            if stage is not None:
                stage.cleanup()
        state = {"fingerprint": fingerprint, "rows": res.rows, "columns": res.columns, "refused": res.refused,
                 "refused_examples": res.refused_examples, "parts": [p.name for p in parts],
                 "expected_shards": len(parts) if groups else math.ceil(res.rows / sps), "lanes": lanes,
                 "host_groups": groups,
                 "inputs": [str(f) for f in files], "options": key_options, "command": command,
                 "ccmb_version": __version__}
        runs = []
    runs.append({"started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
                 "ccmb_version": __version__, "policy": policy.describe()})
    state["runs"] = runs[-50:]
    storage.write_json(state_path, state)
    input_rows, columns = int(state["rows"]), list(state["columns"])
    expected = int(state.get("expected_shards") or math.ceil(input_rows / sps))
    lanes = ShardLanes(tuple(state["lanes"])) if state.get("lanes") else None
    successes_before = summarize(output, input_rows, expected).successes if finished_before else 0

    t_ingest = time.time()
    logger.info("ingest: %d rows in %.2fs", input_rows, t_ingest - t0)
    if len(finished_before) < expected:
        run_img2dataset(parts_dir, output, columns, opt, lanes=lanes)
    t_i2d = time.time()
    logger.info("img2dataset: %.2fs", t_i2d - t_ingest)
    remove_folder(storage.join(output, "_tmp"))
    known = {}
    for name in shards.finished_shards(output):  # crash leftovers and shards whose worker-side pass failed
        known[f"{name}.tar"] = finish_shard(output, int(name))

    retried = recovered = 0
    if o["retry_failed_rows"]:
        retried, recovered = retry_failed(output, opt, int(state.get("host_groups") or 0))
        known = {f"{n}.tar": finish_shard(output, int(n)) for n in shards.finished_shards(output)}

    summary = summarize(output, input_rows, expected)
    logger.info("normalise/retry/summary: %.2fs", time.time() - t_i2d)
    summary.elapsed_s = time.time() - t0
    summary.new_successes = summary.successes - successes_before
    summary.retried, summary.recovered = retried, recovered
    summary.refused_total = sum(state.get("refused", {}).values())
    summary.refused_examples = list(state.get("refused_examples", []))
    report = download_report(output) or {}
    summary.refusals = report.get("refusal_reasons", {})
    summary.pacing = report.get("pacing", {})
    summary.policy = policy.describe()
    if summary.complete and summary.successes:
        shards.finalize_shard_set(output, command=command, known=known,
                                  extra={"download": {"input_rows": input_rows, "successes": summary.successes,
                                                      "policy": summary.policy}})
    elif summary.shards == summary.expected_shards and summary.rows != input_rows:
        logger.error("%d input rows but %d parquet rows: rows are unaccounted for", input_rows, summary.rows)
    storage.write_json(storage.join(state_dir, "summary.json"), summary.to_dict())
    logger.info("\n%s", summary.report())
    if summary.rows and summary.failure_rate > FAILURE_WARNING_RATE and summary.successes:
        logger.warning("!!! %.0f%% of the rows FAILED (more than %.0f%%): check the network, the input URLs and "
                       "the failure reasons above !!!", 100 * summary.failure_rate, 100 * FAILURE_WARNING_RATE)
    return summary
