"""The Zero corpus pipeline: download, filter, dedup, build final shards."""
