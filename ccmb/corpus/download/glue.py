"""img2dataset glue: the classes swapped into ``img2dataset.main`` for a call, and our process pool.

For the duration of :func:`run_img2dataset`, ``img2dataset.main`` uses:

* ``CcmbDownloader`` -- img2dataset's shard downloader with our guarded fetch
  (:mod:`ccmb.corpus.http_fetch`: per-request deadline, size cap, http(s)-only redirects, optional
  private-address refusal) in place of its urllib one, a stop on a full disk, and :func:`finish_shard`
  in the same worker;
* ``CcmbSampleWriter`` -- writes the ccmb format directly (``sha256`` of the stored bytes, refused
  rows as ``failed_input``); on ENOSPC it stops writing and the shard ends with :class:`DiskFullError`;
* ``CcmbLoggerProcess`` -- img2dataset's progress logger;
* :func:`pool_distributor` instead of img2dataset's ``multiprocessing_distributor``.

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
import hashlib
import io
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import weakref
from dataclasses import dataclass
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
from . import http_fetch  # noqa: E402
from .folder import STATUS_FAILED_INPUT, finish_shard, is_disk_full  # noqa: E402

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

logger = logging.getLogger(__name__)

#: Shards a pool of worker processes downloads per process before it is replaced by a fresh one
#: (bounds leaks in long runs, like img2dataset's maxtasksperchild=5).
SHARDS_PER_POOL = 5
PARENT_POLL_S = 0.2
#: The reason of rows skipped once the disk of a shard is full (never stored: the shard is not finished).
SKIPPED_DISK_FULL = "skipped: disk full"


class DiskFullError(Exception):
    """A worker could not write its shard: no space left on the device (message: the OS error)."""


class _DiskFull(BaseException):
    """Raised inside img2dataset's shard code: a BaseException passes its ``except Exception`` blocks."""


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


# --------------------------------------------------------------------------------- the fetch

_USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
_STOP = threading.Event()  # set in a worker once its disk is full: remaining rows are skipped at once


def guarded_download_image(row, timeout, user_agent_token, disallowed_header_directives, *,
                           limits: http_fetch.FetchLimits):
    """Drop-in for ``img2dataset.downloader.download_image``: (key, BytesIO or None, error or None)."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    if _STOP.is_set():
        return key, None, SKIPPED_DISK_FULL
    agent = _USER_AGENT
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"

    def robots(headers) -> Optional[str]:
        if disallowed_header_directives and is_disallowed(headers, user_agent_token, disallowed_header_directives):
            return "Use of image disallowed by X-Robots-Tag directive"
        return None

    try:
        if url[:7].lower() == "file://":  # only reaches here when ingest allowed it (--allow-file-urls)
            return key, io.BytesIO(_read_local(url, limits.max_bytes)), None
        data = http_fetch.fetch(url, http_fetch.FetchLimits(timeout=timeout, max_bytes=limits.max_bytes,
                                                             allow_private=limits.allow_private),
                                headers={"User-Agent": agent}, check_headers=robots)
        return key, io.BytesIO(data), None
    except Exception as err:  # every failure is the row's reason
        return key, None, str(err) or type(err).__name__


def _read_local(url: str, max_bytes: int) -> bytes:
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    path = url2pathname(urlsplit(url).path)
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise http_fetch.FetchError(f"{http_fetch.TOO_LARGE} (more than {max_bytes} bytes)")
    return data


# --------------------------------------------------------------------------------- the classes

def _downloader_class():
    import img2dataset.downloader as i2d_downloader
    from img2dataset.downloader import Downloader

    class CcmbDownloader(Downloader):
        """img2dataset's shard downloader with the guarded fetch, then :func:`finish_shard` in the worker."""

        normalize = True

        def __init__(self, *args, fetch_limits: Optional[http_fetch.FetchLimits] = None, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.fetch_limits = fetch_limits or http_fetch.FetchLimits()

        def __call__(self, row):
            watch_parent()
            i2d_downloader.download_image = functools.partial(guarded_download_image, limits=self.fetch_limits)
            try:
                ok, row = super().__call__(row)
            except _DiskFull as exc:
                raise DiskFullError(str(exc)) from None
            if ok and self.normalize:
                try:
                    finish_shard(self.output_folder, row[0])
                except OSError as exc:
                    if is_disk_full(exc):
                        raise DiskFullError(str(exc)) from None
                    logging.getLogger(__name__).exception("finishing shard %s failed", row[0])
                except Exception:  # the driver's pass finishes it again and raises there
                    logging.getLogger(__name__).exception("finishing shard %s failed", row[0])
            return ok, row

        def download_shard(self, row):
            try:
                super().download_shard(row)
            except OSError as exc:  # e.g. img2dataset's write_stats
                if is_disk_full(exc):
                    raise _DiskFull(f"{exc.strerror or exc} ({exc.filename or self.output_folder})") from None
                raise

    return CcmbDownloader


def _sample_writer_class():
    from img2dataset.writer import WebDatasetSampleWriter

    internal = set(ingest.INTERNAL_COLUMNS)

    class CcmbSampleWriter(WebDatasetSampleWriter):
        """img2dataset's webdataset writer, writing the ccmb format directly: ``sha256`` of the stored
        bytes, rows refused before download as ``failed_input`` with their reason and original URL,
        JSON members without img2dataset's status fields and our internal columns.

        On ENOSPC it stops writing (no traceback per row), makes the worker skip its remaining rows,
        and :meth:`close` ends the shard with :class:`_DiskFull` (the shard stays unfinished)."""

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
                    meta["sha256"] = hashlib.sha256(img_str).hexdigest()
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
                _STOP.set()

        def close(self):
            try:
                super().close()
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self.disk_full = self.disk_full or exc
            if self.disk_full is not None:
                exc = self.disk_full
                raise _DiskFull(f"{exc.strerror or exc} (writing shard {self._shard_id:05d} in {self._output_folder})")

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
            watch_parent()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the driver ends it (no traceback)
            super().run()

    return CcmbLoggerProcess


_CLASSES: Dict[str, Any] = {}


def __getattr__(name: str):  # lazy: importing img2dataset (cv2, albumentations) is slow
    if name in ("CcmbDownloader", "RetryDownloader", "CcmbLoggerProcess", "CcmbSampleWriter"):
        if not _CLASSES:
            base = _downloader_class()
            base.__module__ = __name__
            base.__qualname__ = "CcmbDownloader"
            retry = type("RetryDownloader", (base,), {"normalize": False, "__module__": __name__})
            log = _logger_class()
            log.__module__ = __name__
            log.__qualname__ = "CcmbLoggerProcess"
            writer = _sample_writer_class()
            writer.__module__ = __name__
            writer.__qualname__ = "CcmbSampleWriter"
            _CLASSES.update(CcmbDownloader=base, RetryDownloader=retry, CcmbLoggerProcess=log,
                            CcmbSampleWriter=writer)
        return _CLASSES[name]
    raise AttributeError(name)


# --------------------------------------------------------------------------------- the pool

def pool_distributor(processes_count, downloader, reader, _subjob_size, max_shard_retry):
    """img2dataset's distributor interface, on ``ProcessPoolExecutor`` pools that never kill a worker.

    At most ``processes_count`` shards run at once; a pool takes ``SHARDS_PER_POOL * processes_count``
    shards, then a fresh pool takes over while the old one drains. A worker that dies fails its
    pool's running shards (retried once, as img2dataset does); :class:`DiskFullError` stops the run
    (no new shard starts; running ones end) and is raised.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from img2dataset.distributor import retrier
    from tqdm import tqdm

    ctx = multiprocessing.get_context("spawn")
    per_pool = SHARDS_PER_POOL * processes_count

    def run(shard_iter):
        failed: List[Any] = []
        pools: List[Any] = []
        pool = None
        submitted = 0
        pending: Dict[Any, Any] = {}
        stop: Optional[BaseException] = None
        it = iter(shard_iter)
        exhausted = False
        progress = tqdm(desc="shards", unit="shard", disable=None)
        try:
            while True:
                while stop is None and not exhausted and len(pending) < processes_count:
                    if pool is None or submitted >= per_pool:
                        if pool is not None:
                            pool.shutdown(wait=False)  # its workers exit after their current shard
                        pool = ProcessPoolExecutor(processes_count, mp_context=ctx, initializer=watch_parent)
                        pools.append(pool)
                        submitted = 0
                    try:
                        row = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    try:
                        pending[pool.submit(downloader, row)] = (row, pool)
                        submitted += 1
                    except BrokenProcessPool:
                        failed.append(row)
                        pool = None
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    row, owner = pending.pop(fut)
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


# --------------------------------------------------------------------------------- the call

@dataclass
class Options:
    processes: int
    threads: int
    image_size: int
    resize_mode: str
    timeout: int
    retries: int
    samples_per_shard: int
    distributor: str
    encode_quality: int
    user_agent_token: str
    spark_master: Optional[str]
    max_bytes: int = http_fetch.DEFAULT_MAX_BYTES
    deny_private: bool = False


def run_img2dataset(url_list: Path, output: Path, columns: List[str], opt: Options, retry: bool = False) -> None:
    """One ``img2dataset.download`` call with our classes and pool (restored afterwards)."""
    import img2dataset

    i2d_main = sys.modules["img2dataset.main"]  # the package re-exports a function named ``main``

    downloader_cls = __getattr__("RetryDownloader" if retry else "CcmbDownloader")
    limits = http_fetch.FetchLimits(timeout=opt.timeout, max_bytes=opt.max_bytes, allow_private=not opt.deny_private)
    spark_owned = None
    if opt.distributor == "pyspark":
        spark_owned = _ensure_spark(opt)
    patched = {"Downloader": functools.partial(downloader_cls, fetch_limits=limits),
               "LoggerProcess": __getattr__("CcmbLoggerProcess"),
               "WebDatasetSampleWriter": __getattr__("CcmbSampleWriter"),
               "multiprocessing_distributor": pool_distributor}
    saved = {k: getattr(i2d_main, k) for k in patched}
    old_sigint = signal.getsignal(signal.SIGINT)
    for k, v in patched.items():
        setattr(i2d_main, k, v)
    try:
        img2dataset.download(
            url_list=str(url_list), output_folder=str(output), input_format="parquet", url_col="url",
            caption_col="caption", save_additional_columns=list(columns), output_format="webdataset",
            processes_count=opt.processes, thread_count=opt.threads, image_size=opt.image_size,
            resize_mode=opt.resize_mode, encode_quality=opt.encode_quality, timeout=opt.timeout,
            retries=opt.retries, number_sample_per_shard=opt.samples_per_shard, distributor=opt.distributor,
            incremental_mode="incremental", extract_exif=False, compute_hash="sha256", enable_wandb=False,
            oom_shard_count=shards.SHARD_DIGITS, user_agent_token=opt.user_agent_token,
            disallowed_header_directives=None,  # None = img2dataset's default: noai, noimageai, noindex, noimageindex
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


def _ensure_spark(opt: Options):
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
