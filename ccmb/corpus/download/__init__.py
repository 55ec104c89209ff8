"""``ccmb download``: image-URL lists -> a ccmb shard set, through img2dataset (see docs/corpus.md).

The public API is :func:`download` (also the CLI). One concern per module:

* :mod:`.flow` -- the steps of a download; :mod:`.folder` -- the output folder (resume, summary);
* :mod:`.glue` -- img2dataset's seams and our distributors; :mod:`.shard` -- one shard in a worker;
* :mod:`.crawl` -- a shard's requests; :mod:`.pacing` -- per-host limits; :mod:`.robots` -- robots.txt;
  :mod:`.optout` -- opt-out headers; :mod:`.netguard` -- which addresses may be reached;
  :mod:`.http_fetch` -- the guarded request; :mod:`.policy` -- identity and settings;
* :mod:`.decode` -- the memory-bounded decoder; :mod:`.grouping` -- the input by host;
* :mod:`.retry` -- ``--retry-failed``; :mod:`.report` -- refusals and pacing for summaries and ``ccmb stats``;
  :mod:`.safetext` -- server text made safe to show.

Attributes load lazily, so that importing a light module of the package (``report``) stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"download": "flow", "USER_AGENT_TOKEN": "flow", "DownloadError": "folder", "DownloadSummary": "folder",
            "failure_reason": "folder", "finish_shard": "folder", "summarize": "folder", "tidy_output": "folder",
            "retry_failed": "retry"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
