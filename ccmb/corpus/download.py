"""Download a URL list (the Zero corpus or any other) into a ccmb shard set through img2dataset.

:func:`download` is both the API and the ``ccmb download`` CLI. Steps:

1. Tidy the output folder for a resume: a shard is finished when its ``NNNNN_stats.json`` exists and
   parses; anything else named ``NNNNN.*`` (img2dataset writes tars in place, so a ``kill -9`` leaves
   truncated ones) is removed, as are temporaries and img2dataset's ``_tmp``.
2. Normalise the inputs (``ccmb.corpus.ingest``) into ``OUT/_ccmb/input/part-*.parquet``, or reuse
   them when inputs and options are unchanged (a fingerprint in ``OUT/_ccmb/state.json``).
3. Call ``img2dataset.download`` (``webdataset`` output, incremental mode) with three small subclasses
   swapped into ``img2dataset.main`` for the call: ``CcmbSampleWriter`` writes the ccmb format directly
   (``sha256`` of the stored bytes; rows refused before download as ``failed_input`` with their reason),
   ``CcmbDownloader`` finishes each shard in its worker (:func:`finish_shard`: counts and manifest entry
   in ``_stats.json``) and, like ``CcmbLoggerProcess``, dies with its parent (no orphans after kill -9).
4. ``retry_failed``: rows that failed to download/resize in finished shards are downloaded again into
   a temporary folder and merged into their shards under their original keys (no duplicates).
5. A summary (rows, successes, failures by reason, images/s) and, once complete, ``sizes.json`` and
   ``manifest.json``.
"""
from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

# img2dataset imports albumentations (which looks for updates online) and may start wandb.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pyarrow as pa  # noqa: E402
import pyarrow.compute  # noqa: E402,F401
import pyarrow.parquet as pq  # noqa: E402

from .. import __version__, atomic, shards  # noqa: E402
from ..images import MAX_IMAGE_PIXELS  # noqa: E402
from . import ingest  # noqa: E402

# OpenCV (img2dataset's decoder) reads its pixel cap once, at import, in every worker: a decompression
# bomb then fails as "failed_to_resize" instead of allocating gigabytes.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: img2dataset adds this token to its user agent: "... (compatible; <token>; +https://github.com/rom1504/img2dataset)";
#: it is also the name that site-specific X-Robots-Tag directives ("ccmb/0.1.0: noai") must use.
USER_AGENT_TOKEN = f"ccmb/{__version__}"
STATE_DIR = "_ccmb"
STATUS_FAILED_INPUT = shards.STATUS_FAILED_INPUT
RETRYABLE = ("failed_to_download", "failed_to_resize")
FAILURE_WARNING_RATE = 0.30
DISTRIBUTORS = ("multiprocessing", "pyspark")
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ORIG_KEY_COLUMN = "ccmb_orig_key"
#: Fields of img2dataset's rows that are not sample metadata.
_DROP_META = {"status", "error_message", "sha256", "md5", "sha512", ORIG_KEY_COLUMN, *ingest.INTERNAL_COLUMNS}
_SHARD_FILE_RE = re.compile(r"^(\d{5,})(\.tar|\.parquet|_stats\.json)$")


class DownloadError(RuntimeError):
    """The download cannot start or continue (the message says why and what to do)."""


# ------------------------------------------------------------------------------------ summary

@dataclass
class DownloadSummary:
    """Outcome of a download: every input row is a success or a counted failure."""

    output_dir: str
    input_rows: int
    rows: int  # rows in finished shards' parquet files
    successes: int
    failures: Dict[str, int] = field(default_factory=dict)  # "status: reason" -> count
    shards: int = 0
    expected_shards: int = 0
    elapsed_s: float = 0.0
    new_successes: int = 0  # samples added by this call (for images/s)
    retried: int = 0
    recovered: int = 0

    @property
    def failed(self) -> int:
        return self.rows - self.successes

    @property
    def failure_rate(self) -> float:
        return self.failed / self.rows if self.rows else 0.0

    @property
    def images_per_s(self) -> float:
        return self.new_successes / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.shards == self.expected_shards and self.rows == self.input_rows

    def top_failures(self, n: int = 10) -> List[tuple]:
        return Counter(self.failures).most_common(n)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.update(failed=self.failed, failure_rate=self.failure_rate, images_per_s=self.images_per_s,
                 complete=self.complete)
        return d

    def report(self) -> str:
        lines = [
            f"download summary for {self.output_dir}",
            f"  input rows      {self.input_rows}",
            f"  rows in shards  {self.rows}  ({self.shards}/{self.expected_shards} shards finished)",
            f"  successes       {self.successes}  ({100 * (1 - self.failure_rate):.1f}%)",
            f"  failures        {self.failed}",
        ]
        for reason, n in self.top_failures(10):
            lines.append(f"    {n:>9}  {reason}")
        if self.retried:
            lines.append(f"  retried         {self.retried} failed rows, {self.recovered} recovered")
        lines.append(f"  this run        {self.new_successes} new images in {self.elapsed_s:.1f}s "
                     f"({self.images_per_s:.1f} images/s)")
        if not self.complete:
            lines.append("  INCOMPLETE: run the same command again to resume")
        return "\n".join(lines)


# ------------------------------------------------------------------------------- output folder

def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def tidy_output(output_dir: Path) -> List[str]:
    """Remove unfinished shards, temporaries and img2dataset's ``_tmp``; returns the finished shard names.

    img2dataset's resume treats every ``*.json`` of the folder as a finished shard, so our own
    ``sizes.json``/``manifest.json`` are removed too (they are rewritten when the set is complete).
    """
    atomic.remove_stale_temporaries(output_dir)
    shutil.rmtree(output_dir / "_tmp", ignore_errors=True)
    shutil.rmtree(output_dir / STATE_DIR / "retry", ignore_errors=True)  # an interrupted --retry-failed
    for name in (shards.SIZES_FILE, shards.MANIFEST_FILE):
        (output_dir / name).unlink(missing_ok=True)
    groups: Dict[str, Dict[str, Path]] = defaultdict(dict)
    for p in output_dir.iterdir():
        m = _SHARD_FILE_RE.match(p.name)
        if m:
            groups[m.group(1)][m.group(2)] = p
        elif p.suffix == ".json":
            raise DownloadError(f"{p}: unexpected JSON file in the output folder (img2dataset's resume reads "
                                f"every *.json there as a shard's stats); move it away")
    finished = []
    removed = []
    for name, files in sorted(groups.items()):
        ok = ("_stats.json" in files and ".tar" in files and ".parquet" in files
              and _read_json(files["_stats.json"]) is not None)
        if ok:
            finished.append(name)
            continue
        for p in files.values():
            p.unlink(missing_ok=True)
        removed.append(name)
    if removed:
        logger.warning("removed %d unfinished shard(s) (they will be downloaded again): %s", len(removed),
                       ", ".join(removed[:10]) + (" ..." if len(removed) > 10 else ""))
    return finished


# ------------------------------------------------------------------------------- shard writing

class _CcmbShardWriter(shards.ShardWriter):
    """ShardWriter whose parquet keeps the input list's extra columns, rows in key order, and whose stats
    keep the start time of the img2dataset shard it rewrites (see :class:`ccmb.shards.ShardWriter` for
    the atomic finish: old ``_stats.json`` removed first, then parquet, tar and new stats renamed in)."""

    def __init__(self, output_dir: PathLike, shard_index: int, extra_columns: Sequence[str] = (),
                 start_time: Optional[float] = None) -> None:
        super().__init__(output_dir, shard_index, extra_columns=extra_columns)
        if start_time is not None:
            self._start = start_time

    def __exit__(self, exc_type, exc, tb) -> None:
        self.rows.sort(key=lambda r: r.get("key") or "")
        super().__exit__(exc_type, exc, tb)


def _clean_meta(meta: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in _DROP_META}


def _failure_row(row: Dict[str, Any]) -> tuple:
    """(meta, status, error_message) of a failed img2dataset row, with pre-download refusals restored."""
    meta = _clean_meta(row)
    if row.get(ingest.ERROR_COLUMN):
        meta["url"] = row.get(ingest.INPUT_URL_COLUMN)
        return meta, STATUS_FAILED_INPUT, row[ingest.ERROR_COLUMN]
    status = row.get("status") or "failed_to_download"
    if status == shards.STATUS_SUCCESS:  # a success without its sample: never silently lost
        return meta, "failed_to_download", "sample missing from the tar"
    return meta, status, row.get("error_message") or status


def _extra_columns(names: Iterable[str]) -> List[str]:
    skip = set(shards.PARQUET_SCHEMA.names) | _DROP_META | {"exif"}
    return [n for n in names if n not in skip]


def _read_table(path: Path, columns: Optional[List[str]] = None) -> pa.Table:
    """Read a parquet file without pyarrow.dataset (whose import pulls in pandas: slow in fresh workers)."""
    return pq.ParquetFile(path).read(columns=columns)


def finish_shard(output_dir: PathLike, shard_id: int) -> Dict[str, Any]:
    """Complete a shard img2dataset finished (idempotent); returns its manifest entry.

    img2dataset (with :class:`CcmbSampleWriter`) already wrote the tar and the parquet in the ccmb
    format; this recounts the parquet rows by status (refused rows are ``failed_input``, not
    img2dataset's ``failed_to_download``) and records the tar's manifest entry in ``_stats.json``.
    """
    output_dir = Path(output_dir)
    name = shards.shard_name(shard_id)
    stats_path = output_dir / f"{name}_stats.json"
    stats = _read_json(stats_path) or {}
    if "ccmb" in stats:
        return stats["ccmb"]["tar"]
    t = _read_table(output_dir / f"{name}.parquet", columns=["status", "error_message"])
    status = t.column("status").to_pylist()
    reasons = Counter(str(e or s) for s, e in zip(status, t.column("error_message").to_pylist())
                      if s != shards.STATUS_SUCCESS)
    counts = Counter(status)
    tar = output_dir / f"{name}.tar"
    entry = {"samples": counts[shards.STATUS_SUCCESS], "bytes": tar.stat().st_size, "sha256": shards.sha256_file(tar)}
    stats.update(count=len(status), successes=counts[shards.STATUS_SUCCESS],
                 failed_to_download=counts["failed_to_download"], failed_to_resize=counts["failed_to_resize"],
                 failed_input=counts[STATUS_FAILED_INPUT], status_dict=dict(reasons), ccmb_version=__version__,
                 ccmb={"tar": entry, "format_version": shards.FORMAT_VERSION})
    atomic.write_json(stats_path, stats)
    return entry


# ------------------------------------------------------------------------------ img2dataset glue

_PARENT_DEATH_SET = False


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies: after a ``kill -9`` of ``ccmb download`` no
    orphaned worker keeps writing a shard that the resumed run writes too."""
    global _PARENT_DEATH_SET
    if _PARENT_DEATH_SET or not sys.platform.startswith("linux"):
        return
    _PARENT_DEATH_SET = True
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent is already gone
            os._exit(1)
    except OSError:  # pragma: no cover - not glibc
        pass


def _downloader_class():
    from img2dataset.downloader import Downloader

    class CcmbDownloader(Downloader):
        """img2dataset's shard downloader, then :func:`finish_shard` in the same worker."""

        normalize = True

        def __call__(self, row):
            _die_with_parent()
            ok, row = super().__call__(row)
            if ok and self.normalize:
                try:
                    finish_shard(self.output_folder, row[0])
                except Exception:  # the driver's pass finishes it again and raises there
                    logging.getLogger(__name__).exception("finishing shard %s failed", row[0])
            return ok, row

    return CcmbDownloader


def _sample_writer_class():
    import hashlib

    from img2dataset.writer import WebDatasetSampleWriter

    internal = set(ingest.INTERNAL_COLUMNS)

    class CcmbSampleWriter(WebDatasetSampleWriter):
        """img2dataset's webdataset writer, writing the ccmb format directly: ``sha256`` of the stored
        bytes, rows refused before download as ``failed_input`` with their reason and original URL,
        JSON members without img2dataset's status fields and our internal columns."""

        def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
            schema = pa.schema([f for f in schema if f.name not in internal])
            super().__init__(shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format)

        def write(self, img_str, key, caption, meta):
            if meta.get(ingest.ERROR_COLUMN):
                meta.update(status=STATUS_FAILED_INPUT, error_message=meta[ingest.ERROR_COLUMN],
                            url=meta.get(ingest.INPUT_URL_COLUMN))
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

    return CcmbSampleWriter


def _logger_class():
    from img2dataset.logger import LoggerProcess

    class CcmbLoggerProcess(LoggerProcess):
        """img2dataset's progress logger, which also dies with its parent (else it polls forever)."""

        def run(self):
            _die_with_parent()
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


@dataclass
class _Options:
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


def _run_img2dataset(url_list: Path, output: Path, columns: List[str], opt: _Options, retry: bool = False) -> None:
    import img2dataset

    i2d_main = sys.modules["img2dataset.main"]  # the package re-exports a function named ``main``

    downloader_cls = __getattr__("RetryDownloader" if retry else "CcmbDownloader")
    spark_owned = None
    if opt.distributor == "pyspark":
        spark_owned = _ensure_spark(opt)
    patched = {"Downloader": downloader_cls, "LoggerProcess": __getattr__("CcmbLoggerProcess"),
               "WebDatasetSampleWriter": __getattr__("CcmbSampleWriter")}
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
    finally:
        for k, v in saved.items():
            setattr(i2d_main, k, v)
        signal.signal(signal.SIGINT, old_sigint)  # img2dataset installs a handler that exits
        if spark_owned is not None:
            spark_owned.stop()


def _ensure_spark(opt: _Options):
    """Create our Spark session before img2dataset asks for one (it reuses the active session).

    Returns the session when this call created it (and so must stop it), else None.
    """
    from pyspark.sql import SparkSession

    from ..spark import get_spark_session

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


# ------------------------------------------------------------------------------------- retrying

def retry_failed(output_dir: PathLike, opt: _Options) -> tuple:
    """Download again the failed rows of finished shards and merge the successes under their keys.

    Returns (rows retried, rows recovered).
    """
    output_dir = Path(output_dir)
    work = output_dir / STATE_DIR / "retry"
    shutil.rmtree(work, ignore_errors=True)
    failed_rows: List[Dict[str, Any]] = []
    extra: List[str] = []
    for name in shards.finished_shards(output_dir):
        table = _read_table(output_dir / f"{name}.parquet")
        for c in _extra_columns(table.column_names):
            if c not in extra:
                extra.append(c)
        mask = pa.compute.is_in(table.column("status"), pa.array(list(RETRYABLE)))
        failed_rows.extend(table.filter(mask).to_pylist())
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
    logger.warning("retry-failed: downloading %d failed rows again", len(failed_rows))
    _run_img2dataset(work / "input", work / "out", columns, opt, retry=True)

    # orig key -> retry outcome (row) and sample location
    outcome: Dict[str, Dict[str, Any]] = {}
    tars_by_shard: Dict[str, set] = defaultdict(set)
    for pq_path in sorted((work / "out").glob("*.parquet")):
        for r in _read_table(pq_path, columns=[ORIG_KEY_COLUMN, "status", "error_message"]).to_pylist():
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
    shutil.rmtree(work, ignore_errors=True)
    return len(failed_rows), recovered


def _shard_of(key: str, samples_per_shard: int) -> str:
    width = len(shards.make_key(0, 0, samples_per_shard)) - shards.SHARD_DIGITS
    return key[: len(key) - width]


def _merge_shard(output_dir: Path, shard_id: int, new: Dict[str, "shards.Sample"],
                 outcome: Dict[str, Dict[str, Any]]) -> int:
    """Rewrite one finished shard with the retried samples under their original keys; returns how many."""
    name = shards.shard_name(shard_id)
    table = _read_table(output_dir / f"{name}.parquet")
    rows = table.to_pylist()
    stats = _read_json(output_dir / f"{name}_stats.json") or {}
    added = 0
    with _CcmbShardWriter(output_dir, shard_id, _extra_columns(table.column_names),
                          start_time=stats.get("start_time")) as w:
        for s in shards.iter_tar_samples(output_dir / f"{name}.tar"):
            w.write(s.key, s.image, s.text, _clean_meta(s.meta), image_ext=s.image_ext)
        for row in rows:
            key = row["key"]
            if key in w.keys:
                continue
            sample = new.get(key)
            if sample is not None and row.get("status") in RETRYABLE:
                meta = _clean_meta(sample.meta)
                meta["key"] = key
                w.write(key, sample.image, sample.text, meta, image_ext=sample.image_ext)
                added += 1
                continue
            meta, status, error = _failure_row(row)
            if key in outcome and status in RETRYABLE:  # failed again: keep the latest reason
                status = outcome[key].get("status") or status
                error = outcome[key].get("error_message") or error
                if status == shards.STATUS_SUCCESS:
                    status, error = "failed_to_download", "retried sample missing"
            w.write_failure(meta, status, error)
    return added


# --------------------------------------------------------------------------------------- the API

def summarize(output_dir: PathLike, input_rows: int, expected_shards: int) -> DownloadSummary:
    """Count the rows of every finished shard's parquet: successes and failures by reason."""
    output_dir = Path(output_dir)
    rows = successes = 0
    failures: Counter = Counter()
    names = shards.finished_shards(output_dir)
    for name in names:
        t = _read_table(output_dir / f"{name}.parquet", columns=["status", "error_message"])
        for status, error in zip(t.column("status").to_pylist(), t.column("error_message").to_pylist()):
            rows += 1
            if status == shards.STATUS_SUCCESS:
                successes += 1
            else:
                failures[f"{status}: {failure_reason(error)}"] += 1
    return DownloadSummary(output_dir=str(output_dir), input_rows=input_rows, rows=rows, successes=successes,
                           failures=dict(failures), shards=len(names), expected_shards=expected_shards)


def failure_reason(error: Optional[str]) -> str:
    """A failure message reduced to its reason (no URL, location or detail), for counting."""
    text = (error or "unknown").strip()
    if "infinite loop" in text:
        return "redirect loop"
    if "CV_IO_MAX_IMAGE_PIXELS" in text:
        return "image too large (decompression bomb guard)"
    if "X-Robots-Tag" in text:
        return "disallowed by X-Robots-Tag"
    return ingest.reason_class(text.splitlines()[0] if text else text)


def download(inputs: Sequence[PathLike], output_dir: PathLike, *, mode: str = "zero",
             caption_field: str = "title", url_col: str = "url", caption_col: Optional[str] = "caption",
             id_col: Optional[str] = None, processes: Optional[int] = None, threads: int = 64,
             image_size: int = 256, resize_mode: str = "keep_ratio", timeout: int = 10, retries: int = 1,
             samples_per_shard: int = 10_000, distributor: str = "multiprocessing", limit: Optional[int] = None,
             retry_failed_rows: bool = False, allow_file_urls: bool = False, strict: bool = False,
             encode_quality: int = 95, user_agent_token: str = USER_AGENT_TOKEN,
             spark_master: Optional[str] = None, overwrite: bool = False,
             command: Optional[str] = None) -> DownloadSummary:
    """Download ``inputs`` (Zero records with ``mode="zero"``, any URL list with ``mode="urls"``) into
    the shard set ``output_dir``; resumable (call it again), ``retry_failed_rows`` merges second tries.

    ``inputs``: files, folders, globs (JSON lines/array, CSV, TSV, parquet; ``.gz``). ``caption_field``
    (zero) or ``url_col``/``caption_col``/``id_col`` (urls) choose the columns. ``processes``,
    ``threads``, ``image_size``, ``resize_mode``, ``timeout``, ``retries``, ``samples_per_shard``,
    ``encode_quality`` and ``user_agent_token`` go to img2dataset; ``distributor="pyspark"`` uses the
    active Spark session or creates one (``spark_master``). ``limit`` keeps the first N rows. Only
    http(s) URLs unless ``allow_file_urls``; ``strict`` makes malformed records fatal. ``overwrite``
    deletes an existing shard set first. Returns the :class:`DownloadSummary` (also logged).
    Raises :class:`ingest.InputError` for unreadable inputs, :class:`DownloadError` when the output
    folder holds another download.
    """
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
    opt = _Options(processes=processes or max(1, os.cpu_count() or 1), threads=threads, image_size=image_size,
                   resize_mode=resize_mode, timeout=timeout, retries=retries, samples_per_shard=samples_per_shard,
                   distributor=distributor, encode_quality=encode_quality, user_agent_token=user_agent_token,
                   spark_master=spark_master)
    output = Path(output_dir).absolute()
    if overwrite and output.exists():
        for p in output.iterdir():
            if _SHARD_FILE_RE.match(p.name) or p.name in (shards.SIZES_FILE, shards.MANIFEST_FILE):
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
    state = _read_json(state_path)
    parts_dir = state_dir / "input"
    if state and state.get("fingerprint") == fingerprint and all((parts_dir / p).exists() for p in state["parts"]):
        logger.info("resuming: inputs unchanged, reusing %s", parts_dir)
    else:
        if state and finished_before:
            raise DownloadError(f"{output} holds a download of other inputs or options ({state.get('command')}); "
                                f"use another --output, or --overwrite to start again")
        res = ingest.normalize_inputs(files, parts_dir, layout, samples_per_shard=samples_per_shard,
                                      limit=limit, strict=strict)
        state = {"fingerprint": fingerprint, "rows": res.rows, "columns": res.columns, "refused": res.refused,
                 "parts": [p.name for p in res.parts], "inputs": [str(f) for f in files], "options": key_options,
                 "command": command, "ccmb_version": __version__}
        atomic.write_json(state_path, state)
    input_rows, columns = int(state["rows"]), list(state["columns"])
    expected = math.ceil(input_rows / samples_per_shard)
    successes_before = summarize(output, input_rows, expected).successes if finished_before else 0

    t_ingest = time.time()
    logger.info("ingest: %d rows in %.2fs", input_rows, t_ingest - t0)
    if len(finished_before) < expected:
        _run_img2dataset(parts_dir, output, columns, opt)
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
