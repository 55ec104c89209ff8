"""The decision-table format: its schema, the metadata it carries, and the error every curation step raises.

A *decision table* (``TABLE.parquet``, :data:`DECISION_SCHEMA`) has one row per input row of a download
folder: ``key``, ``shard`` (the tar the sample lives in), ``keep``, ``reason`` (null when kept) and
``duplicate_of`` (dedup: the kept sample a dropped duplicate stands for; decontaminate:
``<dataset>/<split>/<image id>``). It is one parquet file or a folder of parts with a marker
(:mod:`ccmb.corpus.tables.decisions`); rows are in key order; readers match rows by key, never by position.
"""
from __future__ import annotations

import pyarrow as pa

DECISION_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("keep", pa.bool_()),
    pa.field("reason", pa.string()),
    pa.field("duplicate_of", pa.string()),
])

#: Columns of a decision table worth dictionary-encoding in parquet (keys are unique: plain is faster).
DICTIONARY_COLUMNS = ["shard", "reason"]

#: Parquet footer metadata of a table file (a folder keeps the same in its marker): which step wrote it
#: (filter, dedup, decontaminate, ...), a JSON document of step information (decontamination: its report),
#: the download folder it was made from (JSON {"path", "fingerprint"}) and the rows dropped per reason.
TABLE_KIND = b"ccmb.kind"
TABLE_INFO = b"ccmb.info"
TABLE_SOURCE = b"ccmb.source"
TABLE_COUNTS = b"ccmb.counts"
#: Written by earlier versions (a fingerprint of the key column); marks a ccmb table, no longer trusted.
LEGACY_KEYS_FINGERPRINT = b"ccmb.keys_sha1"

#: Reason of rows that produced no sample in the download (status != success); every step gives it.
REASON_NOT_DOWNLOADED = "not_downloaded"
#: Reason given to a key that a ``--keep`` table does not list.
REASON_NOT_IN = "not_in:{name}"
#: Reason of a dropped row whose table gives none.
REASON_DROPPED = "dropped"


class CurationError(ValueError):
    """Bad input to a curation step; the message names the file."""
