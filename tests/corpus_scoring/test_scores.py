"""Thresholds on model scores (percentiles, ties), low_agreement / not_scored in the decision table, and the
semantic dedup level on planted embeddings (no model involved)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ccmb.corpus.api import apply_scores
from ccmb.corpus.steps import scores as sc
from ccmb.corpus.steps.levels.semdedup import kmeans, semantic_reps
from ccmb.corpus.tables.decisions import read_decisions
from ccmb.corpus.tables.schema import DECISION_SCHEMA, CurationError
from ccmb.corpus.tables.scores import SCORES_INFO, SCORES_SCHEMA
from ccmb.corpus.tables.writer import write_table as write_decisions


def test_top_percent_threshold_is_the_kth_best():
    v = np.arange(100, dtype=float)  # 0..99
    assert sc.top_percent_threshold(v, 30) == 70.0  # keeps 70..99: exactly 30
    assert sc.top_percent_threshold(v, 100) == 0.0
    assert sc.top_percent_threshold(v, 0) == np.inf
    assert sc.top_percent_threshold(v, 0.5) == 99.0  # ceil: at least one sample
    assert sc.top_percent_threshold(np.array([]), 50) == np.inf
    with pytest.raises(ValueError):
        sc.top_percent_threshold(v, 101)


def test_ties_at_the_threshold_are_all_kept():
    v = np.array([0.1, 0.2, 0.5, 0.5, 0.5, 0.9])
    t = sc.top_percent_threshold(v, 50)  # 3rd best is 0.5, tied three times
    assert t == 0.5
    assert int((~sc.low_agreement_mask(v, t)).sum()) == 4  # 0.9 and all three 0.5
    assert sc.low_agreement_mask(np.array([np.nan]), 0.0).all()  # NaN never passes


def _scores_file(path, keys, values, errors=None):
    n = len(keys)
    errors = errors or [None] * n
    vals = np.asarray(values, np.float32)
    cols = [pa.array(keys), pa.array(["00000.tar"] * n), pa.array(np.arange(n, dtype=np.int32)),
            pa.array(vals, mask=np.isnan(vals))] + [pa.nulls(n, pa.float32())] * 3 + [pa.array(errors, pa.string())]
    pq.write_table(pa.Table.from_arrays(cols, schema=SCORES_SCHEMA).replace_schema_metadata(
        {SCORES_INFO: json.dumps({"model": "m", "embeddings": "emb", "dim": 2}).encode()}), path)
    return path


def _decisions(path, keys, reasons):
    r = pa.array(reasons, pa.string())
    t = pa.Table.from_arrays([pa.array(keys), pa.array(["00000.tar"] * len(keys)), pa.compute.is_null(r), r,
                              pa.nulls(len(keys), pa.string())], schema=DECISION_SCHEMA)
    write_decisions(path, t, kind="filter")
    return path


def test_apply_scores_adds_low_agreement_and_not_scored(tmp_path):
    keys = [f"{i:06d}" for i in range(6)]
    dec = _decisions(tmp_path / "f.parquet", keys, [None, None, "too_small", None, None, None])
    # 000004 has no score (decode error); 000005 is missing from the scores file
    s = _scores_file(tmp_path / "s.parquet", keys[:5], [0.9, 0.1, 0.05, 0.5, np.nan],
                     errors=[None, None, None, None, "cannot decode image"])
    summary = apply_scores(dec, s, min_score=0.3)
    got = dict(zip(*[read_decisions(dec).column(c).to_pylist() for c in ("key", "reason")]))
    assert got == {"000000": None, "000001": "low_agreement", "000002": "too_small", "000003": None,
                   "000004": "not_scored", "000005": "not_scored"}
    assert summary.dropped == {"not_scored": 2, "low_agreement": 1, "too_small": 1}
    # the percentile is over every scored sample (4 values): top 50% -> the 2nd best, 0.5
    dec2 = _decisions(tmp_path / "f2.parquet", keys[:4], [None] * 4)
    summary = apply_scores(dec2, s, keep_top_percent=50)
    assert summary.threshold == pytest.approx(0.5) and summary.kept == 2
    with pytest.raises(ValueError):
        apply_scores(dec2, s)


def test_score_stats_percentiles_and_histogram(tmp_path):
    s = _scores_file(tmp_path / "s.parquet", [f"{i:06d}" for i in range(101)], np.linspace(0, 1, 101))
    st = sc.score_stats(s)
    d = st["fields"]["score"]
    assert d["count"] == 101 and d["p50"] == pytest.approx(0.5) and d["p90"] == pytest.approx(0.9)
    assert sum(d["histogram"]["counts"]) == 101
    assert d["top_percent_thresholds"]["30"] == pytest.approx(0.7, abs=0.011)
    png = sc.histogram_png(st, tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(CurationError):
        sc.histogram_png(st, tmp_path / "x.png", field="score_query")  # no values


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_semantic_reps_finds_planted_near_copies_exactly():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(400, 32)))
    copies_of = rng.choice(400, 40, replace=False)
    copies = _unit(base[copies_of] + 0.02 * rng.normal(size=(40, 32)))  # cosine ~0.99
    emb = np.concatenate([base, copies]).astype(np.float32)
    rows = np.arange(len(emb))
    reps = semantic_reps(emb, rows, len(emb), eps=0.05, clusters=8)
    dropped = np.flatnonzero(reps != rows)
    assert set(dropped.tolist()) == set(range(400, 440))  # every copy, nothing else
    assert (reps[400:] == copies_of).all()
    cos = (emb[dropped] * emb[reps[dropped]]).sum(1)
    assert (cos >= 0.95).all()  # exact check of every dropped pair
    # eps 0: nothing is a copy of anything else (random directions)
    assert (semantic_reps(base.astype(np.float32), np.arange(400), 400, eps=0.0) == np.arange(400)).all()


def test_kmeans_separates_clusters_and_handles_tiny_input():
    rng = np.random.default_rng(1)
    centres = _unit(rng.normal(size=(3, 8)))
    x = _unit(np.repeat(centres, 50, axis=0) + 0.05 * rng.normal(size=(150, 8)))
    cent = kmeans(x, 3, seed=0)
    assert np.sort((cent @ centres.T).max(axis=0)).min() > 0.95
    assert kmeans(x[:1], 5).shape == (1, 8)
    assert (semantic_reps(np.zeros((0, 8), np.float32), np.zeros(0, np.int64), 3, 0.1) == -1).all()
