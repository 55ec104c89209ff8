"""img2dataset glue: what is swapped into ``img2dataset.main`` for a call, and our distributors.

For the duration of :func:`run_img2dataset`, ``img2dataset.main`` uses:

* :class:`ccmb.corpus.download.shard.ShardDownloader` as its ``Downloader`` -- our shard loop (robots.txt,
  opt-outs, per-host pacing, the guarded fetch, the memory-bounded decoder, hashes, blocklist);
* ``CcmbSampleWriter`` -- writes the ccmb format directly (refused rows as ``failed_input``); on ENOSPC it
  stops writing and the shard ends with :class:`DiskFull`;
* ``CcmbLoggerProcess`` -- img2dataset's progress logger, which exits with its parent;
* a quiet ``Reader`` (no line per input part), and an output filesystem whose ``*.json`` listing holds only
  shard stats (img2dataset reads every ``*.json`` of the folder as a finished shard; the folder also holds
  ccmb's owner marker);
* :func:`pool_distributor` / :func:`spark_distributor` instead of img2dataset's distributors: both run at most
  one shard of a host group at a time (:mod:`ccmb.corpus.download.grouping`), so each host is downloaded by
  one worker and its pacing holds across the whole run.

Why our own pool: img2dataset's ``Pool(maxtasksperchild=5)`` ends with ``terminate()``; any worker
killed while it holds the pool's queue lock (as the parent-death signal we used to set did, when the
pool's worker-handler *thread* that started a replacement worker exited) leaves ``terminate()``
waiting on that lock forever. :func:`pool_distributor` never kills a worker: it uses
``concurrent.futures.ProcessPoolExecutor`` (which notices a worker that dies and fails its shards,
retried once, instead of waiting forever), ends every pool with a plain ``shutdown(wait=True)``
(each worker finishes its shard, bounded by the per-request deadline, and exits), and recycles
workers by starting a fresh pool every :data:`SHARDS_PER_POOL` shards per process (the stdlib's
``max_tasks_per_child`` can hang on Python 3.11, cpython gh-115634).

Orphans: after a ``kill -9`` of ``ccmb download`` each worker (and the logger process) exits by
itself: a daemon thread, started by the pool's initializer before the heavy imports, polls
``os.getppid()`` and calls ``os._exit`` once the parent is gone. This is
safe where PR_SET_PDEATHSIG was not: it fires only when the parent *process* is dead, so nobody is
left to wait on a lock the worker may hold (its siblings exit the same way).
"""
from __future__ import annotations

import atexit
import functools
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

# img2dataset imports albumentations (which looks for updates online) and may start wandb; OpenCV (its
# decoder) reads its pixel cap once, at import, in every worker: a decompression bomb then fails as
# "failed_to_resize" instead of allocating gigabytes. Spawned workers inherit these.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pyarrow as pa  # noqa: E402

from ... import shards  # noqa: E402
from ...images import MAX_IMAGE_PIXELS  # noqa: E402
from .. import ingest  # noqa: E402
from .decode import DEFAULT_BUDGET_MB  # noqa: E402
from .folder import SHARD_FILE_RE, STATUS_FAILED_INPUT, is_disk_full  # noqa: E402
from .grouping import ShardLanes  # noqa: E402
from .policy import CrawlPolicy  # noqa: E402
from .shard import DiskFull, DiskFullError, RetryShardDownloader, ShardDownloader  # noqa: E402

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

logger = logging.getLogger(__name__)

#: Shards a pool of worker processes downloads per process before it is replaced by a fresh one
#: (bounds leaks in long runs, like img2dataset's maxtasksperchild=5).
SHARDS_PER_POOL = 5
PARENT_POLL_S = 0.2




# --------------------------------------------------------------------------------- orphan watch

_WATCHING = False


def watch_parent() -> None:
    """In a worker: exit (``os._exit``) as soon as the parent process is gone (polled, daemon thread), and
    exit without the interpreter's teardown at the end (:func:`_exit_now`)."""
    global _WATCHING
    if _WATCHING:
        return
    _WATCHING = True
    spawner = multiprocessing.parent_process()  # the process that started us (None in a Spark worker)
    parent = spawner.pid if spawner is not None else os.getppid()
    if os.getppid() != parent:  # already gone before we got here
        os._exit(1)

    def poll() -> None:
        import time

        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                _remove_wandb_staging_dirs()
                os._exit(1)

    threading.Thread(target=poll, name="ccmb-parent-watch", daemon=True).start()
    atexit.register(_exit_now)


def _exit_now() -> None:
    """At a worker's exit, skip the interpreter's teardown of its modules (cv2, albumentations, pyarrow ...).

    A spawned worker ends with ``sys.exit``; tearing down those modules took seconds of CPU per worker,
    at the end of every pool (img2dataset's ``terminate()`` skipped it by killing them). By the time
    ``atexit`` runs, multiprocessing has flushed the result queue and every shard file is closed (the
    writers close and fsync them explicitly), so only the teardown is skipped.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing to keep
            pass
    _remove_wandb_staging_dirs()
    os._exit(0)


#: wandb (imported by img2dataset's logger) makes two empty staging folders in the temp dir at import, removed by
#: handlers that ``os._exit`` skips: (module, attribute path) of each ``TemporaryDirectory``
_WANDB_STAGING = (("wandb.sdk.data_types._private", "MEDIA_TMP"), ("wandb.sdk.artifacts.artifact", "Artifact._TMP_DIR"))


def _remove_wandb_staging_dirs() -> None:
    """Remove wandb's import-time staging folders in a worker about to ``os._exit`` (else two ``tmp*wandb-*``
    folders per worker stay in the temp dir for good)."""
    for module_name, path in _WANDB_STAGING:
        obj = sys.modules.get(module_name)
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr) if obj is not None else None
            if obj is not None:
                obj.cleanup()
        except Exception:  # a wandb version without them, or already removed: nothing to do
            pass


# --------------------------------------------------------------------------------- the classes

def _sample_writer_class():
    from img2dataset.writer import WebDatasetSampleWriter

    internal = set(ingest.INTERNAL_COLUMNS)

    class CcmbSampleWriter(WebDatasetSampleWriter):
        """img2dataset's webdataset writer, writing the ccmb format directly: rows refused before download as
        ``failed_input`` with their reason and original URL, JSON members without img2dataset's status
        fields and our internal columns.

        On ENOSPC it stops writing (no traceback per row) and sets ``disk_full`` (the shard loop stops), and
        :meth:`close` ends the shard with :class:`DiskFull` (the shard stays unfinished)."""

        def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
            schema = pa.schema([f for f in schema if f.name not in internal])
            self.disk_full: Optional[OSError] = None
            self._shard_id = shard_id
            self._output_folder = output_folder
            super().__init__(shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format)

        def write(self, img_str, key, caption, meta):
            if self.disk_full is not None:
                return
            if meta.get(ingest.ERROR_COLUMN):
                meta.update(status=STATUS_FAILED_INPUT, error_message=meta[ingest.ERROR_COLUMN],
                            url=meta.get(ingest.INPUT_URL_COLUMN))
            try:
                if img_str is not None:
                    sample = {"__key__": key, self.encode_format: img_str,
                              "json": json.dumps({k: v for k, v in meta.items()
                                                  if k not in internal and k not in ("status", "error_message")},
                                                 ensure_ascii=False, sort_keys=True, default=str)}
                    if self.save_caption:
                        sample["txt"] = str(caption) if caption is not None else ""
                    self.tarwriter.write(sample)
                self.buffered_parquet_writer.write(meta)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self.disk_full = exc

        def close(self):
            try:
                super().close()
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self.disk_full = self.disk_full or exc
            if self.disk_full is not None:
                exc = self.disk_full
                raise DiskFull(f"{exc.strerror or exc} (writing shard {self._shard_id:05d} in {self._output_folder})")

    return CcmbSampleWriter


_LOGGERS: "weakref.WeakSet" = weakref.WeakSet()


def _logger_class():
    from img2dataset.logger import LoggerProcess

    class CcmbLoggerProcess(LoggerProcess):
        """img2dataset's progress logger, which also exits with its parent (else it polls forever)."""

        def start(self):
            _LOGGERS.add(self)
            super().start()

        def run(self):
            import img2dataset.logger

            watch_parent()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the driver ends it (no traceback)
            img2dataset.logger.fsspec = _FsspecShim()  # lists shard stats only (this is a fresh process)
            super().run()

    return CcmbLoggerProcess


_CLASSES: Dict[str, Any] = {}


def __getattr__(name: str):  # lazy: importing img2dataset (cv2, albumentations) is slow
    if name in ("CcmbLoggerProcess", "CcmbSampleWriter", "QuietReader"):
        if not _CLASSES:
            log = _logger_class()
            log.__module__ = __name__
            log.__qualname__ = "CcmbLoggerProcess"
            writer = _sample_writer_class()
            writer.__module__ = __name__
            writer.__qualname__ = "CcmbSampleWriter"
            reader = _reader_class()
            reader.__module__ = __name__
            reader.__qualname__ = "QuietReader"
            _CLASSES.update(CcmbLoggerProcess=log, CcmbSampleWriter=writer, QuietReader=reader)
        return _CLASSES[name]
    raise AttributeError(name)


def _reader_class():
    from img2dataset.reader import Reader

    class QuietReader(Reader):
        """img2dataset's reader without a printed line per input part (a grouped input has one part per shard)."""

        def __iter__(self):
            start = self.start_shard_id
            for input_file in self.input_files:
                shard_list, count = self._save_to_arrow(input_file, start)
                yield from shard_list
                start += count

    return QuietReader


class _ShardStatsFS:
    """An fsspec filesystem whose ``glob("<folder>/*.json")`` lists only ``NNNNN_stats.json`` files (img2dataset
    takes every ``*.json`` of the output folder for a finished shard's stats; ccmb's owner marker is one)."""

    def __init__(self, fs) -> None:
        self._fs = fs

    def __getattr__(self, name: str):
        return getattr(self._fs, name)

    def glob(self, pattern: str, **kw):
        found = self._fs.glob(pattern, **kw)
        if pattern.endswith("/*.json"):
            found = [f for f in found if SHARD_FILE_RE.match(f.rsplit("/", 1)[-1] or "")
                     and f.endswith("_stats.json")]
        return found


class _FsspecShim:
    """Stands in for the ``fsspec`` module inside img2dataset's main and logger (``fsspec.core.url_to_fs``)."""

    def __init__(self) -> None:
        import fsspec

        self._fsspec = fsspec
        shim = self

        class _Core:
            def __getattr__(self, name: str):
                return getattr(fsspec.core, name)

            @staticmethod
            def url_to_fs(url, **kw):
                fs, path = fsspec.core.url_to_fs(url, **kw)
                return _ShardStatsFS(fs), path

        self.core = _Core()
        del shim

    def __getattr__(self, name: str):
        return getattr(self._fsspec, name)


# --------------------------------------------------------------------------------- the distributors

def _lane_function(lanes: Optional[ShardLanes]):
    """row (img2dataset's ``(shard_id, arrow_file)``) -> its host group; without groups every shard is its own."""
    def lane_of(row) -> int:
        shard_id = row[0] if isinstance(row, tuple) else row
        return lanes.lane_of(shard_id) if lanes is not None else -1 - shard_id

    return lane_of


def pool_distributor(processes_count, downloader, reader, _subjob_size, max_shard_retry, *,
                     lanes: Optional[ShardLanes] = None):
    """img2dataset's distributor interface, on ``ProcessPoolExecutor`` pools that never kill a worker.

    At most ``processes_count`` shards run at once, and at most one shard of a host group (``lanes``) at a
    time; a pool takes ``SHARDS_PER_POOL * processes_count`` shards, then a fresh pool takes over while the
    old one drains. A worker that dies fails its pool's running shards (retried once, as img2dataset does);
    :class:`DiskFullError` stops the run (no new shard starts; running ones end) and is raised.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from img2dataset.distributor import retrier
    from tqdm import tqdm

    ctx = multiprocessing.get_context("spawn")
    per_pool = SHARDS_PER_POOL * processes_count
    lane_of = _lane_function(lanes)

    def run(shard_iter):
        failed: List[Any] = []
        pools: List[Any] = []
        pool = None
        submitted = 0
        pending: Dict[Any, Any] = {}
        busy: set = set()  # host groups with a shard running
        waiting: List[Any] = []  # shards whose group is busy, in order
        stop: Optional[BaseException] = None
        it = iter(shard_iter)
        exhausted = False
        progress = tqdm(desc="shards", unit="shard", disable=None)

        def next_row():
            nonlocal exhausted
            for k, row in enumerate(waiting):
                if lane_of(row) not in busy:
                    return waiting.pop(k)
            while not exhausted and len(waiting) < 4 * processes_count + 16:
                try:
                    row = next(it)
                except StopIteration:
                    exhausted = True
                    break
                if lane_of(row) not in busy:
                    return row
                waiting.append(row)
            return None

        try:
            while True:
                while stop is None and len(pending) < processes_count:
                    row = next_row()
                    if row is None:
                        break
                    if pool is None or submitted >= per_pool:
                        if pool is not None:
                            pool.shutdown(wait=False)  # its workers exit after their current shard
                        pool = ProcessPoolExecutor(processes_count, mp_context=ctx, initializer=watch_parent)
                        pools.append(pool)
                        submitted = 0
                    try:
                        pending[pool.submit(downloader, row)] = (row, pool)
                        busy.add(lane_of(row))
                        submitted += 1
                    except BrokenProcessPool:
                        failed.append(row)
                        pool = None
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    row, owner = pending.pop(fut)
                    busy.discard(lane_of(row))
                    progress.update(1)
                    try:
                        ok, _row = fut.result()
                    except DiskFullError as exc:
                        stop = stop or exc
                        continue
                    except BrokenProcessPool:
                        logger.error("a download worker died (killed or crashed); shard %s will be retried",
                                     row[0] if isinstance(row, tuple) else row)
                        ok = False
                        if owner is pool:
                            pool = None  # a broken pool takes no more work: the next shard starts a fresh one
                    if not ok:
                        failed.append(row)
                if stop is not None and not pending:
                    break
        finally:
            progress.close()
            for p in pools:
                p.shutdown(wait=True, cancel_futures=True)
        if stop is not None:
            raise stop
        return failed

    failed_shards = run(reader)
    retrier(run, failed_shards, max_shard_retry)


def spark_distributor(processes_count, downloader, reader, subjob_size, max_shard_retry, *,
                      lanes: Optional[ShardLanes] = None):
    """img2dataset's pyspark distributor, by host group: one Spark task per group runs the group's shards one
    after another (so a host is downloaded by one executor process at a time, and its pacing holds on the
    cluster); groups go to Spark in batches of ``subjob_size`` shards. Uses the active Spark session."""
    from img2dataset.distributor import retrier
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("no active Spark session (ccmb creates one before img2dataset runs)")
    lane_of = _lane_function(lanes)

    def run_lane(rows):
        return [downloader(row) for row in rows]

    def run(shard_iter):
        failed: List[Any] = []
        batch: Dict[int, List[Any]] = {}
        count = 0

        def flush() -> None:
            groups = list(batch.values())
            batch.clear()
            if not groups:
                return
            rdd = spark.sparkContext.parallelize(groups, len(groups))
            for status, row in rdd.flatMap(run_lane).collect():
                if status is False:
                    failed.append(row)

        for row in shard_iter:
            batch.setdefault(lane_of(row), []).append(row)
            count += 1
            if count % max(1, subjob_size) == 0:
                flush()
        flush()
        return failed

    failed_shards = run(reader)
    retrier(run, failed_shards, max_shard_retry)


# --------------------------------------------------------------------------------- the call

@dataclass
class Options:
    """What one img2dataset call needs (the driver's side of the options)."""

    processes: int
    threads: int
    image_size: int
    resize_mode: str
    samples_per_shard: int
    distributor: str
    encode_quality: int
    spark_master: Optional[str]
    policy: CrawlPolicy = field(default_factory=CrawlPolicy)
    decode_budget_mb: int = DEFAULT_BUDGET_MB


def run_img2dataset(url_list: Path, output: Path, columns: List[str], opt: Options, retry: bool = False,
                    lanes: Optional[ShardLanes] = None) -> None:
    """One ``img2dataset.download`` call with our classes and distributors (restored afterwards)."""
    import img2dataset

    i2d_main = sys.modules["img2dataset.main"]  # the package re-exports a function named ``main``

    spark_owned = None
    if opt.distributor == "pyspark":
        spark_owned = ensure_spark(opt)
    downloader = functools.partial(RetryShardDownloader if retry else ShardDownloader, policy=opt.policy,
                                   image_size=opt.image_size, resize_mode=opt.resize_mode,
                                   encode_quality=opt.encode_quality, decode_budget_mb=opt.decode_budget_mb)
    patched = {"Downloader": downloader,
               "LoggerProcess": __getattr__("CcmbLoggerProcess"),
               "WebDatasetSampleWriter": __getattr__("CcmbSampleWriter"),
               "Reader": __getattr__("QuietReader"),
               "fsspec": _FsspecShim(),
               "multiprocessing_distributor": functools.partial(pool_distributor, lanes=lanes),
               "pyspark_distributor": functools.partial(spark_distributor, lanes=lanes)}
    saved = {k: getattr(i2d_main, k) for k in patched}
    old_sigint = signal.getsignal(signal.SIGINT)
    for k, v in patched.items():
        setattr(i2d_main, k, v)
    try:
        img2dataset.download(
            url_list=str(url_list), output_folder=str(output), input_format="parquet", url_col="url",
            caption_col="caption", save_additional_columns=list(columns), output_format="webdataset",
            processes_count=opt.processes, thread_count=opt.threads, image_size=opt.image_size,
            resize_mode=opt.resize_mode, encode_quality=opt.encode_quality, timeout=opt.policy.timeout,
            retries=0, number_sample_per_shard=opt.samples_per_shard, distributor=opt.distributor,
            incremental_mode="incremental", extract_exif=False, compute_hash=None, enable_wandb=False,
            oom_shard_count=shards.SHARD_DIGITS, user_agent_token=None, disallowed_header_directives=[],
            max_shard_retry=1,
        )
    except SystemExit:  # img2dataset's SIGINT handler exits with status 0: an interrupted run must not
        raise KeyboardInterrupt from None
    finally:
        for k, v in saved.items():
            setattr(i2d_main, k, v)
        signal.signal(signal.SIGINT, old_sigint)  # img2dataset installs a handler that exits
        for proc in list(_LOGGERS):  # img2dataset joins its logger only when the distributor returns
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        if spark_owned is not None:
            spark_owned.stop()


def ensure_spark(opt: Options):
    """Create our Spark session before img2dataset asks for one (it reuses the active session).

    Returns the session when this call created it (and so must stop it), else None.
    """
    from pyspark.sql import SparkSession

    from ...spark import get_spark_session

    active = SparkSession.getActiveSession()
    if active is None:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        active = get_spark_session(opt.spark_master or f"local[{opt.processes}]", app_name="ccmb-download")
        owned = active
    else:
        owned = None
    sc = active.sparkContext
    if "PYSPARK_PYTHON" not in os.environ and sc.master.startswith("local"):
        sc.pythonExec = sys.executable  # local workers must run this interpreter (it has ccmb installed)
    return owned
