"""Metric parity with plain reference implementations (random matrices, several positives, planted ties)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ccmb_bench.metrics import (average_ranks, classification_metrics, matching_metrics, query_ranks,
                                recall_at_k, retrieval_metrics, roc_auc)


def ref_rank(row, positives):
    """Plain loop: count non-positive candidates scoring >= the best positive."""
    best = max(row[p] for p in positives)
    return sum(1 for j, s in enumerate(row) if j not in positives and s >= best)


def ref_recall(scores, positives, k):
    hits = [ref_rank(list(scores[q]), set(p)) < k for q, p in enumerate(positives) if p]
    return 100.0 * sum(hits) / len(hits)


def make_problem(seed, n_img=13, caps=3):
    rng = np.random.default_rng(seed)
    n_txt = n_img * caps
    t2i = [[t // caps] for t in range(n_txt)]
    t2i[-1] = [0, n_img - 1]  # a text with two positive images
    i2t = [[] for _ in range(n_img)]
    for t, imgs in enumerate(t2i):
        for i in imgs:
            i2t[i].append(t)
    sims = np.round(rng.standard_normal((n_img, n_txt)), 1).astype(np.float32)  # coarse: many ties
    # plant ties between each query's best positive and a negative
    for i in range(0, n_img, 2):
        best = max(sims[i, t] for t in i2t[i])
        neg = next(t for t in range(n_txt) if t not in i2t[i])
        sims[i, neg] = best
    return sims, i2t, t2i


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_reference_with_ties(seed):
    sims, i2t, t2i = make_problem(seed)
    for block_rows in (None, 1, 4):
        m = retrieval_metrics(torch.from_numpy(sims), torch.from_numpy(sims.T.copy()), i2t, t2i,
                              block_rows=block_rows)
        for k in (1, 5, 10):
            assert m[f"i2t_R@{k}"] == pytest.approx(ref_recall(sims, i2t, k))
            assert m[f"t2i_R@{k}"] == pytest.approx(ref_recall(sims.T, t2i, k))
        six = [m[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
        assert m["MR"] == pytest.approx(np.mean(six))
        assert m["i2t_mean"] == pytest.approx(np.mean(six[:3]))


def test_callable_blocks_never_exceed_block_rows():
    sims, i2t, t2i = make_problem(3)
    seen = []

    def block(a, b):
        seen.append(b - a)
        return torch.from_numpy(sims[a:b])

    ranks = query_ranks(block, i2t, sims.shape[1], block_rows=5)
    assert max(seen) <= 5 and sum(seen) == sims.shape[0]
    assert list(ranks) == [ref_rank(list(sims[q]), set(p)) for q, p in enumerate(i2t)]


def test_tie_counts_against_query_hand_case():
    # query 0: positive 0.5 tied with one negative -> rank 1 (miss at R@1, hit at R@5)
    # query 1: positive strictly best -> rank 0; query 2: no positive -> excluded
    s = torch.tensor([[0.5, 0.5, 0.1], [0.9, 0.2, 0.3], [0.1, 0.2, 0.3]])
    ranks = query_ranks(s, [[0], [0], []], 3)
    assert list(ranks) == [1, 0, -1]
    assert recall_at_k(ranks, (1, 5)) == {1: 50.0, 5: 100.0}
    # a constant score matrix: every query misses at K=1 (ties against the query)
    flat = torch.zeros(4, 6)
    assert recall_at_k(query_ranks(flat, [[0], [1], [2], [3]], 6), (1,))[1] == 0.0


def test_one_direction_mr_is_mean_of_three():
    sims, i2t, t2i = make_problem(4)
    m = retrieval_metrics(None, torch.from_numpy(sims.T.copy()), i2t, t2i, directions=("t2i",))
    assert "i2t_R@1" not in m
    assert m["MR"] == pytest.approx(np.mean([m["t2i_R@1"], m["t2i_R@5"], m["t2i_R@10"]]))


def ref_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return 100.0 * total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_is_mann_whitney_with_half_ties(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(300), 1)  # ~10 distinct values: heavy ties
    labels = rng.random(300) < 0.4
    assert roc_auc(scores, labels) == pytest.approx(ref_auc(scores, labels))
    assert roc_auc([0.5, 0.5], [1, 0]) == 50.0
    assert roc_auc([0.9, 0.1, 0.4], [1, 0, 1]) == 100.0
    m = matching_metrics([0.9, 0.1, 0.4, 0.6], [1, 0, 1, 0])
    assert m["accuracy"] == 50.0 and m["AUC"] == pytest.approx(75.0)


def test_average_ranks():
    assert list(average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]


def test_classification_metrics_against_loop():
    rng = np.random.default_rng(5)
    logits = np.round(rng.standard_normal((40, 7)), 1).astype(np.float32)
    labels = rng.integers(0, 7, 40)
    logits[0, :] = logits[0, labels[0]]  # all tied: a top-1 miss, a top-5 miss (6 others >= it)
    m = classification_metrics(torch.from_numpy(logits), labels.tolist(), 7, block_rows=6)
    ranks = [ref_rank(list(logits[i]), {int(labels[i])}) for i in range(40)]
    assert m["top1"] == pytest.approx(100 * np.mean([r < 1 for r in ranks]))
    assert m["top5"] == pytest.approx(100 * np.mean([r < 5 for r in ranks]))
    per_class = [np.mean([ranks[i] < 1 for i in range(40) if labels[i] == c]) for c in sorted(set(labels))]
    assert m["mean_per_class_recall"] == pytest.approx(100 * np.mean(per_class))
    assert ranks[0] == 6


def test_frechet_distance_hand_cases():
    from ccmb_bench.tasks.text_to_image import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0, 0, 0.5, 0])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # isotropic Gaussians fitted exactly: covariances I and 4I -> 6 * (1 + 4 - 2*2) = 6
    z = rng.standard_normal((400, 6))
    z = (z - z.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    assert frechet_distance(z, 2 * z) == pytest.approx(6.0, rel=1e-6)


def test_nan_scores_are_never_hits():
    import numpy as np

    from ccmb_bench.metrics import query_ranks, roc_auc

    nan = float("nan")
    # NaN positive: ranked below every real score -> a miss at every K < 3
    assert query_ranks(np.array([[nan, 0.2, 0.3]], dtype=np.float32), [[0]], 3).tolist() == [2]
    # NaN negative never beats a positive
    assert query_ranks(np.array([[0.1, nan, 0.05]], dtype=np.float32), [[0]], 3).tolist() == [0]
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([nan, 0.2, 0.1], [1, 0, 0])


def test_repeated_positive_counts_once():
    import numpy as np

    from ccmb_bench.metrics import query_ranks

    s = np.array([[0.9, 0.1, 0.2], [0.1, 0.5, 0.9]], dtype=np.float32)
    assert query_ranks(s, [[0, 0], [1, 1, 1]], 3).tolist() == [0, 1]
