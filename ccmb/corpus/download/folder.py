"""The download folder: its state, resume tidying, shard finishing, and the summary of a download.

A shard is finished when its ``NNNNN_stats.json`` exists and parses; :func:`tidy_output` removes
anything else named ``NNNNN.*`` (img2dataset writes tars in place, so a ``kill -9`` or a full disk
leaves truncated ones), temporaries and img2dataset's ``_tmp``. :func:`finish_shard` recounts a shard's
parquet rows and records its manifest entry; :func:`summarize` counts every row of the finished shards.
"""
from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ... import __version__, outdir, shards, storage
from ...types import PathLike
from .. import ingest
from .report import format_report, refusal_counts

logger = logging.getLogger(__name__)


STATE_DIR = "_ccmb"
#: All input lines refused before download (``file:line<TAB>reason``), beside the shards' failed_input rows.
REFUSED_FILE = "refused_input.tsv"
STATUS_FAILED_INPUT = shards.STATUS_FAILED_INPUT
RETRYABLE = ("failed_to_download", "failed_to_resize")
ORIG_KEY_COLUMN = "ccmb_orig_key"
#: Fields of img2dataset's rows that are not sample metadata.
_DROP_META = {"status", "error_message", "sha256", "sha512", ORIG_KEY_COLUMN, *ingest.INTERNAL_COLUMNS}
SHARD_FILE_RE = re.compile(r"^(\d{5,})(\.tar|\.parquet|_stats\.json)$")
#: How many refused input lines the summary names.
REFUSED_EXAMPLES = 5


class DownloadError(RuntimeError):
    """The download cannot start or continue (the message says why and what to do)."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(exc: OSError, output_dir: Any) -> DownloadError:
    where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
    return DownloadError(f"disk full{where} ({exc.strerror or exc}): the download stopped; free space on the "
                         f"disk of {output_dir} and run the same command again to resume")


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
    refused_total: int = 0  # input lines refused before download (malformed, bad URL, duplicate ...)
    refused_examples: List[str] = field(default_factory=list)  # the first few, as "file:line: reason"
    refusals: Dict[str, Dict[str, int]] = field(default_factory=dict)  # category -> reason -> rows (report.py)
    pacing: Dict[str, Any] = field(default_factory=dict)  # what per-host pacing did (report.merge_pacing)
    policy: Dict[str, Any] = field(default_factory=dict)  # the run's identity, robots, limits (CrawlPolicy)

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
        if self.refused_examples:
            lines.append(f"  refused input lines (first {len(self.refused_examples)} of {self.refused_total}; all in "
                         f"{storage.join(self.output_dir, STATE_DIR, REFUSED_FILE)} and, as failed_input rows, in the "
                         f"shards' parquet):")
            lines.extend(f"    {e}" for e in self.refused_examples)
        if self.refusals or self.pacing or self.policy:
            totals = {c: sum(r.values()) for c, r in self.refusals.items()}
            lines.extend("  " + line for line in format_report({"refusals": totals, "refusal_reasons": self.refusals,
                                                                "pacing": self.pacing, "policy": self.policy}))
        if self.retried:
            lines.append(f"  retried         {self.retried} failed rows, {self.recovered} recovered")
        lines.append(f"  this run        {self.new_successes} new images in {self.elapsed_s:.1f}s "
                     f"({self.images_per_s:.1f} images/s)")
        if not self.complete:
            lines.append("  INCOMPLETE: run the same command again to resume")
        elif not self.successes:
            lines.append("  NO IMAGE was stored: the shard set is not finalized (see the reasons above)")
        return "\n".join(lines)

# ------------------------------------------------------------------------------- output folder

def looks_like_download(folder: Path) -> bool:
    """A folder an earlier ccmb download made (before the owner marker): its state file, or shard stats with
    ccmb's record in them."""
    if storage.isfile(storage.join(folder, STATE_DIR, "state.json")):
        return True
    for p in storage.glob(folder, "[0-9]*_stats.json"):
        doc = read_json(p)
        return bool(doc and ("ccmb" in doc or "ccmb_version" in doc))
    return False


def read_json(path: PathLike) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(storage.read_text(path))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def tidy_output(output_dir: PathLike) -> List[str]:
    """Remove unfinished shards, temporaries and img2dataset's ``_tmp``; returns the finished shard names.

    img2dataset's resume treats every ``*.json`` of the folder as a finished shard, so our own
    ``sizes.json``/``manifest.json`` are removed too (they are rewritten when the set is complete).
    """
    storage.remove_stale_temporaries(output_dir)  # and unfinished uploads on object storage
    remove_folder(storage.join(output_dir, "_tmp"))
    remove_folder(storage.join(output_dir, STATE_DIR, "retry"))  # an interrupted --retry-failed
    for name in (shards.SIZES_FILE, shards.MANIFEST_FILE):
        storage.remove(storage.join(output_dir, name))
    groups: Dict[str, Dict[str, storage.Location]] = defaultdict(dict)
    for n in storage.listdir(output_dir):
        p = storage.join(output_dir, n)
        m = SHARD_FILE_RE.match(n)
        if m:
            groups[m.group(1)][m.group(2)] = p
        elif n.endswith(".json") and n != outdir.OWNER_FILE:
            raise DownloadError(f"{p}: unexpected JSON file in the output folder (img2dataset's resume reads "
                                f"every *.json there as a shard's stats); move it away")
    finished = []
    removed = []
    for name, files in sorted(groups.items()):
        ok = ("_stats.json" in files and ".tar" in files and ".parquet" in files
              and read_json(files["_stats.json"]) is not None)
        if ok:
            finished.append(name)
            continue
        for p in files.values():
            storage.remove(p)
        removed.append(name)
    if removed:
        logger.warning("removed %d unfinished shard(s) (they will be downloaded again): %s", len(removed),
                       ", ".join(removed[:10]) + (" ..." if len(removed) > 10 else ""))
    return finished


# ------------------------------------------------------------------------------- shard writing

class CcmbShardWriter(shards.ShardWriter):
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


def clean_meta(meta: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in _DROP_META}


def failure_row(row: Dict[str, Any]) -> tuple:
    """(meta, status, error_message) of a failed img2dataset row, with pre-download refusals restored."""
    meta = clean_meta(row)
    if row.get(ingest.ERROR_COLUMN):
        meta["url"] = row.get(ingest.INPUT_URL_COLUMN)
        return meta, STATUS_FAILED_INPUT, row[ingest.ERROR_COLUMN]
    status = row.get("status") or "failed_to_download"
    if status == shards.STATUS_SUCCESS:  # a success without its sample: never silently lost
        return meta, "failed_to_download", "sample missing from the tar"
    return meta, status, row.get("error_message") or status


def extra_columns(names: Iterable[str]) -> List[str]:
    skip = set(shards.PARQUET_SCHEMA.names) | _DROP_META | {"exif"}
    return [n for n in names if n not in skip]


def remove_folder(folder: PathLike) -> None:
    """Remove a work folder ccmb made inside an output folder (local or on object storage), if there."""
    if storage.is_url(folder):
        storage.remove_tree(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def read_table(path: PathLike, columns: Optional[List[str]] = None) -> pa.Table:
    """Read a parquet file without pyarrow.dataset (whose import pulls in pandas: slow in fresh workers)."""
    with shards.parquet_source(storage.location(path)) as src:
        return pq.ParquetFile(src).read(columns=columns)


def finish_shard(output_dir: PathLike, shard_id: int) -> Dict[str, Any]:
    """Complete a shard img2dataset finished (idempotent); returns its manifest entry.

    img2dataset (with :class:`CcmbSampleWriter`) already wrote the tar and the parquet in the ccmb
    format; this recounts the parquet rows by status (refused rows are ``failed_input``, not
    img2dataset's ``failed_to_download``) and records the tar's manifest entry and the parquet's checksum
    (which ``ccmb verify`` checks) in ``_stats.json``.
    """
    output_dir = storage.location(output_dir)
    name = shards.shard_name(shard_id)
    stats_path = storage.join(output_dir, f"{name}_stats.json")
    stats = read_json(stats_path) or {}
    if "ccmb" in stats:
        return stats["ccmb"]["tar"]
    t = read_table(storage.join(output_dir, f"{name}.parquet"), columns=["status", "error_message"])
    status = t.column("status").to_pylist()
    reasons = Counter(str(e or s) for s, e in zip(status, t.column("error_message").to_pylist())
                      if s != shards.STATUS_SUCCESS)
    counts = Counter(status)
    messages = Counter(str(e) for s, e in zip(status, t.column("error_message").to_pylist())
                       if s != shards.STATUS_SUCCESS and e)
    tar = storage.join(output_dir, f"{name}.tar")
    entry = {"samples": counts[shards.STATUS_SUCCESS], "bytes": storage.size(tar), "sha256": shards.sha256_file(tar)}
    stats.update(count=len(status), successes=counts[shards.STATUS_SUCCESS],
                 failed_to_download=counts["failed_to_download"], failed_to_resize=counts["failed_to_resize"],
                 failed_input=counts[STATUS_FAILED_INPUT], status_dict=dict(reasons), ccmb_version=__version__,
                 refusals=refusal_counts(messages),
                 ccmb={"tar": entry, "parquet": shards.parquet_entry(storage.join(output_dir, f"{name}.parquet"), len(status)),
                       "format_version": shards.FORMAT_VERSION})
    storage.write_json(stats_path, stats)
    return entry


# ------------------------------------------------------------------------------------ counting

def summarize(output_dir: PathLike, input_rows: int, expected_shards: int) -> DownloadSummary:
    """Count the rows of every finished shard's parquet: successes and failures by reason."""
    output_dir = storage.location(output_dir)
    rows = successes = 0
    failures: Counter = Counter()
    names = shards.finished_shards(output_dir)
    for name in names:
        t = read_table(storage.join(output_dir, f"{name}.parquet"), columns=["status", "error_message"])
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
    if text.startswith(("robots_", "opted out by", "host_paced_out", "blocklisted")):
        return text.split(" (", 1)[0]
    return ingest.reason_class(text.splitlines()[0] if text else text)

