"""One shard of a download, in a worker: the rows' requests (:mod:`.crawl`), decoding (:mod:`.decode`), hashes,
the blocklist, the writer, the shard's ``_stats.json``.

:class:`ShardDownloader` takes img2dataset's ``Downloader`` place (same constructor keywords, same call:
``downloader((shard_id, arrow_file)) -> (ok, row)``); img2dataset still reads the input into per-shard Arrow
files, distributes the shards and provides the webdataset writer. Each row's outcome is written in the
parquet: ``success`` (``md5``/``sha256`` of the stored JPEG, ``original_md5`` of the downloaded bytes),
``failed_to_download`` (the request's reason, refusals included: see :mod:`.report`) or ``failed_to_resize``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
import traceback
from collections import Counter
from typing import Any, Dict, Optional, Tuple

import pyarrow as pa

from ... import storage
from .crawl import Crawler, load_blocklist
from .decode import DEFAULT_BUDGET_MB, Resizer
from .folder import finish_shard, is_disk_full
from .policy import CrawlPolicy
from .report import refusal_counts
from .safetext import escape_controls

logger = logging.getLogger(__name__)

#: Hash columns every download shard's parquet carries (besides the input's columns and img2dataset's).
HASH_FIELDS = ("sha256", "md5", "original_md5")


class DiskFullError(Exception):
    """A worker could not write its shard: no space left on the device (message: the OS error)."""


class DiskFull(BaseException):
    """Raised inside a shard: a BaseException passes img2dataset's ``except Exception`` blocks."""


def compute_key(index: int, shard_id: int, oom_sample_per_shard: int, oom_shard_count: int) -> str:
    """img2dataset's key: the shard id, then the row's index in the shard, zero-padded."""
    return f"{(10 ** oom_sample_per_shard) * shard_id + index:0{oom_sample_per_shard + oom_shard_count}d}"


class ShardDownloader:
    """Downloads one shard at a time (picklable: sent to the workers). ``normalize`` finishes the shard in the
    worker (:func:`ccmb.corpus.download.folder.finish_shard`); ``--retry-failed`` runs without it."""

    def __init__(self, *, sample_writer_class, thread_count: int, save_caption: bool, output_folder: str,
                 column_list, number_sample_per_shard: int, oom_shard_count: int, encode_format: str = "jpg",
                 policy: Optional[CrawlPolicy] = None, image_size: int = 256, resize_mode: str = "keep_ratio",
                 encode_quality: int = 95, decode_budget_mb: int = DEFAULT_BUDGET_MB, normalize: bool = True,
                 **_img2dataset_options: Any) -> None:
        self.sample_writer_class = sample_writer_class
        self.thread_count = thread_count
        self.save_caption = save_caption
        self.output_folder = output_folder
        self.column_list = list(column_list)
        self.number_sample_per_shard = number_sample_per_shard
        self.oom_shard_count = oom_shard_count
        self.encode_format = encode_format
        self.policy = policy or CrawlPolicy()
        self.resize = (image_size, resize_mode, encode_quality, decode_budget_mb)
        self.normalize = normalize

    def __call__(self, row) -> Tuple[bool, Any]:
        from .glue import watch_parent

        watch_parent()
        try:
            self.download_shard(row)
        except DiskFull as exc:
            raise DiskFullError(str(exc)) from None
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError(f"{exc.strerror or exc} ({exc.filename or self.output_folder})") from None
            traceback.print_exc()
            return False, row
        except Exception as exc:  # the shard is retried (img2dataset's contract); its rows are not lost
            traceback.print_exc()
            print(f"shard {row[0]} failed with error {exc}")
            return False, row
        if self.normalize:
            try:
                finish_shard(self.output_folder, row[0])
            except OSError as exc:
                if is_disk_full(exc):
                    raise DiskFullError(str(exc)) from None
                logger.exception("finishing shard %s failed", row[0])
            except Exception:  # the driver's pass finishes it again and raises there
                logger.exception("finishing shard %s failed", row[0])
        return True, row

    def download_shard(self, row) -> None:
        import fsspec

        shard_id, shard_file = row
        start_time = time.time()
        fs, shard_path = fsspec.core.url_to_fs(shard_file)
        with fs.open(shard_path, "rb") as f:
            table = pa.ipc.open_file(f).read_all()
        schema = table.schema
        for name, typ in (("key", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
                          ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()),
                          ("original_height", pa.int32())) + tuple((h, pa.string()) for h in HASH_FIELDS):
            if name not in schema.names:
                schema = schema.append(pa.field(name, typ))
        data = table.select(self.column_list).to_pydict()
        rows = list(zip(*(data[c] for c in self.column_list)))
        del data, table
        cols = self.column_list
        url_i = cols.index("url")
        page_i = cols.index("page_url") if "page_url" in cols else None
        caption_i = cols.index("caption") if "caption" in cols else None
        writer = self.sample_writer_class(shard_id, self.output_folder, self.save_caption, self.oom_shard_count,
                                          schema, self.encode_format)
        crawler = Crawler(self.policy, self.thread_count)
        blocklist = load_blocklist(self.policy)
        image_size, resize_mode, quality, budget_mb = self.resize
        resizer = Resizer(image_size, resize_mode, quality, budget_bytes=budget_mb << 20)
        oom_sample = math.ceil(math.log10(self.number_sample_per_shard))
        counts: Counter = Counter()
        reasons: Counter = Counter()
        results = crawler.run([(i, r[url_i], r[page_i] if page_i is not None else None) for i, r in enumerate(rows)])
        try:
            for index, body, error in results:
                sample = rows[index]
                key = compute_key(index, shard_id, oom_sample, self.oom_shard_count)
                meta: Dict[str, Any] = {c: sample[j] for j, c in enumerate(cols)}
                meta.update(key=key, status=None, error_message=None, width=None, height=None, original_width=None,
                            original_height=None, sha256=None, md5=None, original_md5=None)
                caption = sample[caption_i] if caption_i is not None else None
                status, img = "failed_to_download", None
                if error is None:
                    img, width, height, original_width, original_height, error = resizer(body)
                    if error is not None:
                        status = "failed_to_resize"
                        error = escape_controls(error)  # a decoder's message may quote the file
                    else:
                        meta.update(md5=_md5(img), sha256=hashlib.sha256(img).hexdigest(), original_md5=_md5(body),
                                    width=width, height=height, original_width=original_width,
                                    original_height=original_height)
                        error = blocklist.match_hashes(meta["md5"], meta["sha256"], "stored image") if blocklist else None
                        if error is None:
                            status = "success"
                        else:
                            img = None
                            for k in ("width", "height", "original_width", "original_height") + HASH_FIELDS:
                                meta[k] = None
                body = None
                meta.update(status=status, error_message=error)
                counts[status] += 1
                if error is not None:
                    reasons[error] += 1
                writer.write(img if status == "success" else None, key, caption, meta)
                if getattr(writer, "disk_full", None) is not None:
                    break  # the shard stays unfinished; the next run downloads it again
        finally:
            results.close()
        writer.close()  # raises DiskFull when the disk filled up
        stats = {"count": len(rows), "successes": counts["success"], "failed_to_download": counts["failed_to_download"],
                 "failed_to_resize": counts["failed_to_resize"], "start_time": start_time, "end_time": time.time(),
                 "status_dict": dict(reasons.most_common(1000)), "refusals": refusal_counts(reasons),
                 "pacing": crawler.scheduler.stats.to_dict() if crawler.scheduler else {}}
        write_stats(self.output_folder, shard_id, self.oom_shard_count, stats)
        fs.rm(shard_path)


class RetryShardDownloader(ShardDownloader):
    """``--retry-failed``'s downloader: the driver merges the shards, the worker does not finish them."""

    def __init__(self, **kw: Any) -> None:
        kw["normalize"] = False
        super().__init__(**kw)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def write_stats(output_folder: str, shard_id: int, digits: int, stats: Dict[str, Any]) -> None:
    """The shard's ``NNNNN_stats.json`` (written last: it marks the shard finished)."""
    storage.write_json(storage.join(output_folder, f"{shard_id:0{digits}d}_stats.json"), stats)  # a path or a URL
