"""The Zero corpus pipeline: download (``ccmb.corpus.download``), then curation (filter, dedup, decontaminate,
build-shards): :mod:`ccmb.corpus.api` puts the steps (:mod:`ccmb.corpus.steps`: what is done) and the engines
(:mod:`ccmb.corpus.engines`: where it runs) together; :mod:`ccmb.corpus.tables` and
:mod:`ccmb.corpus.primitives` are below both.

Modules are imported on use; this package imports nothing itself.
"""
