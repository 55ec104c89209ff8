"""BLEU / ROUGE-L / CIDEr-D on hand-computed small cases."""
from __future__ import annotations

import math

import pytest

from ccmb_bench.caption_metrics import bleu, caption_scores, cider_d, lcs_length, rouge_l, segment


def test_bleu_hand_cases():
    # precisions 4/5, 3/4, 2/3, 1/2, equal lengths -> BLEU-4 = (0.2)^(1/4)
    b = bleu([list("abcde")], [[list("abcdf")]])
    assert b[0] == pytest.approx(0.8)
    assert b[3] == pytest.approx(0.2 ** 0.25, rel=1e-6)
    # clipping: "the the the" vs "the cat" -> unigram precision 1/3, brevity: c=3 > r=2 -> no penalty
    assert bleu([["the"] * 3], [[["the", "cat"]]])[0] == pytest.approx(1 / 3)
    # brevity penalty: c=2, r=4 -> exp(1 - 4/2); BLEU-2 with p1 = p2 = 1
    assert bleu([["a", "b"]], [[list("abcd")]], max_n=2)[1] == pytest.approx(math.exp(-1), rel=1e-6)
    # closest reference length (2 over 6) -> no brevity penalty
    assert bleu([["a", "b"]], [[list("abcdef"), ["a", "b"]]], max_n=2)[1] == pytest.approx(1.0, rel=1e-6)


def test_rouge_l_hand_case():
    assert lcs_length(list("abcd"), list("acdef")) == 3
    p, r = 3 / 4, 3 / 5
    expected = (1 + 1.44) * p * r / (r + 1.44 * p)
    assert rouge_l(list("abcd"), [list("acdef"), list("xyz")]) == pytest.approx(expected)
    assert rouge_l(list("ab"), [list("xy")]) == 0.0


def test_cider_identical_and_penalised():
    # two images whose candidates equal their single reference: n=1,2 cosines are 1, n=3,4 empty -> 0
    mean, per = cider_d([["a", "b"], ["c", "d"]], [[["a", "b"]], [["c", "d"]]])
    assert per == pytest.approx([5.0, 5.0])
    assert mean == pytest.approx(5.0)
    # the same with an extra unseen word: bigram lengths 2 vs 1 -> Gaussian penalty exp(-1/72);
    # the cosines shrink by the norm of the unseen words (weight log 2 each, df 0 -> clipped to 1)
    mean2, per2 = cider_d([["a", "b", "z"], ["c", "d"]], [[["a", "b"]], [["c", "d"]]])
    l2 = math.log(2)
    n1 = (2 * l2 * l2) / (math.sqrt(3 * l2 * l2) * math.sqrt(2 * l2 * l2))
    n2 = (l2 * l2) / (math.sqrt(2 * l2 * l2) * math.sqrt(l2 * l2))
    assert per2[0] == pytest.approx((n1 + n2) / 4 * 10 * math.exp(-1 / 72))
    assert per2[1] == pytest.approx(5.0)


def test_segmentation_and_scores():
    toks = segment("一只猫在草地上。")
    assert "。" not in toks and "猫" in "".join(toks)
    perfect = caption_scores(["一只猫在草地上"], [["一只猫在草地上。", "草地上的猫"]])
    assert perfect["BLEU-4"] == pytest.approx(100.0, rel=1e-6) and perfect["ROUGE-L"] == pytest.approx(100.0)
    worse = caption_scores(["一辆红色的汽车"], [["一只猫在草地上。", "草地上的猫"]])
    assert worse["BLEU-4"] < 1 and worse["ROUGE-L"] < perfect["ROUGE-L"]
    with pytest.raises(ValueError):
        caption_scores(["a"], [])
