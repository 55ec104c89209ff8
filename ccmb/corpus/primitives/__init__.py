"""Curation primitives: hashes, URL and text normal forms, pHash, MinHash, grouping, spilling. No engine, no
step: plain functions over numpy arrays and Arrow columns."""
