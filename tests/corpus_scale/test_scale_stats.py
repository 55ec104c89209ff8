"""``ccmb stats`` streams shard by shard, reading only the columns it reports, with exact percentiles."""
from __future__ import annotations

import numpy as np

from ccmb.corpus import stats as stats_mod
from ccmb.corpus.stats import STATS_COLUMNS, ValueCounts, distribution


def test_value_counts_equal_numpy_percentiles():
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 97, 2000):
        values = rng.integers(0, 300, n)
        acc = ValueCounts()
        for part in np.array_split(values, 3):
            acc.add(part)
        got, want = acc.distribution(), distribution(values)
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-9 for k in want), (got, want)
    assert ValueCounts().distribution() == {"count": 0}


def test_stats_reads_only_reported_columns(planted_scale, monkeypatch):
    seen = []
    real = stats_mod.read_file_columns

    def spy(path, columns):
        seen.append(columns)
        return real(path, columns)

    monkeypatch.setattr(stats_mod, "read_file_columns", spy)
    s = stats_mod.corpus_stats(planted_scale)
    assert seen and all(c is not None and set(c) == set(STATS_COLUMNS) for c in seen)
    assert "url" not in STATS_COLUMNS and "sha256" not in STATS_COLUMNS
    assert s["rows"] == 59 and s["successes"] == 55 and s["status"] == {"success": 55, "failed_to_download": 4}
    assert s["text_length"]["caption"]["count"] == 55
