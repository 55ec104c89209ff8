"""``ccmb stats``: counts, status reasons, text-length and image-size distributions of a shard folder.

Works on a download folder or a final shard set: it reads the ``NNNNN.parquet`` files shard by shard,
only the columns it reports (:data:`STATS_COLUMNS`), into exact value counts (memory bounded by the
number of distinct lengths and sizes, not by the rows) (every input row,
failures included), checked (:class:`ccmb.corpus.tables.folder.DownloadFolder`): a missing or damaged parquet is an
error naming it, never a silent fall-back. Only a folder of bare tars (no parquet and no ``_stats.json`` at
all: a foreign webdataset set) or a single tar is read from the samples' ``{key}.json`` metadata.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .download.report import download_report, format_report  # refusals and pacing of a download folder
from .. import shards as fmt
from .. import storage
from .tables.folder import DownloadFolder, read_file_columns
from .tables.schema import CurationError

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("caption",) + fmt.TEXT_FIELDS
SIZE_FIELDS = ("width", "height", "original_width", "original_height")
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
MIN_SIDE_BINS = (0, 100, 200, 300, 500, 1000)
TOP_REASONS = 20


def distribution(values: np.ndarray) -> Dict[str, Any]:
    """count, mean, min, max and percentiles of a numeric array."""
    if not len(values):
        return {"count": 0}
    values = values.astype(np.float64)
    pct = np.percentile(values, PERCENTILES)
    out: Dict[str, Any] = {"count": int(len(values)), "mean": round(float(values.mean()), 2),
                           "min": float(values.min()), "max": float(values.max())}
    out.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, pct)})
    return out


#: The parquet columns ``ccmb stats`` reports on (nothing else is read).
STATS_COLUMNS = ("status", "error_message") + TEXT_FIELDS + SIZE_FIELDS


class ValueCounts:
    """Exact counts of integer values (text lengths, pixel sizes), merged shard by shard: memory grows with
    the number of distinct values, never with the rows; :meth:`distribution` equals :func:`distribution`
    over all the values (numpy's linear percentiles)."""

    def __init__(self) -> None:
        self.counts: Dict[int, int] = {}

    def add(self, values: np.ndarray) -> None:
        if len(values):
            v, c = np.unique(np.asarray(values, np.int64), return_counts=True)
            for value, count in zip(v.tolist(), c.tolist()):
                self.counts[value] = self.counts.get(value, 0) + count

    def distribution(self) -> Dict[str, Any]:
        if not self.counts:
            return {"count": 0}
        values = np.array(sorted(self.counts), np.float64)
        counts = np.array([self.counts[int(v)] for v in values], np.int64)
        n = int(counts.sum())
        cum = np.cumsum(counts)

        def at(rank: int) -> float:  # the value of the rank-th smallest row (0-based)
            return float(values[np.searchsorted(cum, rank, side="right")])

        out: Dict[str, Any] = {"count": n, "mean": round(float((values * counts).sum() / n), 2),
                               "min": float(values[0]), "max": float(values[-1])}
        for p in PERCENTILES:
            pos = p / 100 * (n - 1)
            lo = int(np.floor(pos))
            hi = min(lo + 1, n - 1)
            a, b = at(lo), at(hi)
            out[f"p{p}"] = a + (b - a) * (pos - lo) if b != a else a
        return out


def _counts(arr) -> Dict[str, int]:
    arr = pc.drop_null(arr)
    if not len(arr):
        return {}
    rows = pc.value_counts(arr).to_pylist()
    return dict(sorted(((r["values"], int(r["counts"])) for r in rows), key=lambda kv: (-kv[1], kv[0])))


def _from_tars(path: Path) -> pa.Table:
    rows: List[Dict[str, Any]] = []
    for sample in fmt.iter_samples(path):
        row = dict(sample.meta)
        row.update(key=sample.key, caption=row.get("caption") or sample.text, status=fmt.STATUS_SUCCESS)
        rows.append(fmt.normalize_row(row))
    return pa.Table.from_pylist(rows, schema=fmt.PARQUET_SCHEMA)


def _check_successes(path: Path, table: pa.Table) -> None:
    """A parquet whose success rows disagree with its ``_stats.json`` was edited: refuse it, naming it."""
    try:
        stats = fmt.read_shard_stats(path)
    except fmt.ShardFormatError as exc:
        raise CurationError(str(exc)) from exc
    expected = (stats or {}).get("successes")
    found = int(pc.sum(pc.equal(pc.fill_null(table.column("status"), ""), fmt.STATUS_SUCCESS)).as_py() or 0)
    if isinstance(expected, int) and expected != found:
        raise CurationError(f"{path}: {found} success rows, {storage.name(fmt.stats_path_of(path))} says {expected} "
                            f"(run `ccmb verify` on the folder)")


def corpus_stats(path: Union[str, Path]) -> Dict[str, Any]:
    """Statistics of a download folder or shard set (a dict, JSON-serialisable)."""
    path = storage.location(path)  # a local path or an fsspec URL
    try:
        is_dir = storage.is_folder(path, "folder")
    except OSError as exc:
        raise CurationError(str(exc)) from exc
    if is_dir and fmt.expects_parquets(path):
        parquets = DownloadFolder(path).parquets
        source = "parquet"

        def tables():  # shard by shard, only the reported columns: memory does not grow with the corpus
            for p in parquets:
                t = read_file_columns(p, STATS_COLUMNS)
                _check_successes(p, t)
                yield t
    else:
        try:
            table = _from_tars(path)
        except (FileNotFoundError, fmt.ShardFormatError) as exc:
            raise CurationError(f"{path}: neither NNNNN.parquet nor readable NNNNN.tar files: {exc}") from exc
        if not table.num_rows and is_dir and not fmt.list_shards(path):
            raise CurationError(f"{path}: no NNNNN.parquet or NNNNN.tar files (is it a download folder?)")
        parquets = []
        source = "tar"
        logger.warning("%s: no parquet files: statistics of the samples only (failed rows are not known)", path)

        def tables():
            yield table
    rows = successes = 0
    status_counts: Counter = Counter()
    reason_counts: Counter = Counter()
    text_len = {f: ValueCounts() for f in TEXT_FIELDS}
    sizes = {f: ValueCounts() for f in SIZE_FIELDS}
    hist = np.zeros(len(MIN_SIDE_BINS), np.int64)
    for table in tables():
        rows += table.num_rows
        status = pc.fill_null(table.column("status"), "unknown")
        ok = pc.equal(status, fmt.STATUS_SUCCESS)
        failed = table.filter(pc.invert(ok))
        status_counts.update(_counts(status))
        reason_counts.update(_counts(pc.coalesce(failed.column("error_message"), failed.column("status"))))
        success = table.filter(ok)
        successes += success.num_rows
        for f in TEXT_FIELDS:
            text_len[f].add(pc.drop_null(pc.utf8_length(success.column(f))).to_numpy())
        for f in SIZE_FIELDS:
            sizes[f].add(pc.drop_null(success.column(f)).to_numpy())
        w = pc.coalesce(success.column("original_width"), success.column("width"))
        h = pc.coalesce(success.column("original_height"), success.column("height"))
        short = pc.drop_null(pc.min_element_wise(w, h)).to_numpy()
        if len(short):
            hist += np.histogram(short, bins=list(MIN_SIDE_BINS) + [np.inf])[0]
    out: Dict[str, Any] = {
        "path": str(path),
        "source": source,
        "shards": len(parquets) if parquets else len(fmt.list_shards(path)),
        "rows": rows,
        "successes": successes,
        "success_rate": round(100.0 * successes / rows, 2) if rows else 0.0,
        "status": dict(sorted(status_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failure_reasons": dict(sorted(reason_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]),
        "text_length": {f: text_len[f].distribution() for f in TEXT_FIELDS},
        "image_size": {f: sizes[f].distribution() for f in SIZE_FIELDS},
    }
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(MIN_SIDE_BINS, MIN_SIDE_BINS[1:])] + [f">={MIN_SIDE_BINS[-1]}"]
    out["image_size"]["min_side_histogram"] = {lab: int(c) for lab, c in zip(labels, hist)}
    report = download_report(path) if is_dir else None  # refusals by reason, pacing, the run's policy
    if report is not None:
        out["download"] = report
    manifest = storage.join(path, fmt.MANIFEST_FILE)
    if is_dir and storage.exists(manifest):
        try:
            m = fmt.read_manifest(path)
            out["manifest"] = {"total_samples": m.get("total_samples"), "total_bytes": m.get("total_bytes"),
                               "shards": len(m.get("shards", {}))}
        except fmt.ShardFormatError as exc:
            out["manifest"] = {"error": str(exc)}
    return out


def format_stats(stats: Dict[str, Any]) -> str:
    """A short human-readable report of :func:`corpus_stats`."""
    lines = [f"{stats['path']}: {stats['shards']} shards, {stats['rows']} rows, "
             f"{stats['successes']} samples ({stats['success_rate']}%)"]
    lines.append("status: " + ", ".join(f"{k} {v}" for k, v in stats["status"].items()))
    if stats["failure_reasons"]:
        lines.append("failure reasons:")
        lines += [f"  {v:>8}  {k}" for k, v in stats["failure_reasons"].items()]
    lines.append("text length (chars)   count     p5    p50    p95    max")
    for f, d in stats["text_length"].items():
        if d["count"]:
            lines.append(f"  {f:<18} {d['count']:>6} {d['p5']:>6.0f} {d['p50']:>6.0f} {d['p95']:>6.0f} {d['max']:>6.0f}")
    lines.append("image size (px)       count     p5    p50    p95    max")
    for f in SIZE_FIELDS:
        d = stats["image_size"][f]
        if d["count"]:
            lines.append(f"  {f:<18} {d['count']:>6} {d['p5']:>6.0f} {d['p50']:>6.0f} {d['p95']:>6.0f} {d['max']:>6.0f}")
    lines.append("short side: " + ", ".join(f"{k} {v}" for k, v in stats["image_size"]["min_side_histogram"].items()))
    if "download" in stats:
        lines += format_report(stats["download"])
    if "manifest" in stats:
        lines.append(f"manifest: {stats['manifest']}")
    return "\n".join(lines)
