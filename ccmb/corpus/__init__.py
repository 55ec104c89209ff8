"""The Zero corpus pipeline: download (``ccmb.corpus.download``), then curation (filter, dedup, shards).

Modules are imported on use; this package imports nothing itself.
"""
