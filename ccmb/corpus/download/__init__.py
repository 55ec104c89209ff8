"""``ccmb download``: image-URL lists -> a ccmb shard set, through img2dataset (see docs/corpus.md).

The public API is :func:`download` (also the CLI); the modules of this package are one concern each:
:mod:`.flow` (the steps of a download), :mod:`.folder` (the output folder: resume, summary),
:mod:`.glue` (img2dataset's seams and our process pool), :mod:`.http_fetch` (the guarded request),
:mod:`.retry` (``--retry-failed``).
"""
from .flow import USER_AGENT_TOKEN, download
from .folder import DownloadError, DownloadSummary, failure_reason, finish_shard, summarize, tidy_output
from .retry import retry_failed

__all__ = ["download", "DownloadSummary", "DownloadError", "summarize", "failure_reason", "finish_shard",
           "tidy_output", "retry_failed", "USER_AGENT_TOKEN"]
