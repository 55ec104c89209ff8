"""Caption metrics on jieba-segmented Chinese: BLEU-4, ROUGE-L and CIDEr(-D), as coco-caption defines them.

- BLEU-n (``bleu_scorer.py``): corpus level; clipped n-gram counts against the per-n-gram maximum over the
  references; the reference length of a candidate is the one closest to its length (ties: the shorter);
  brevity penalty ``exp(1 - r/c)`` when ``c < r``; BLEU-n = geometric mean of the precisions 1..n,
  with coco-caption's smoothing constants (1e-15 / 1e-9).
- ROUGE-L (``rouge.py``): per candidate the best LCS precision and the best LCS recall over the references,
  ``F = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``; averaged over images.
- CIDEr (``cider_scorer.py``, i.e. CIDEr-D): TF-IDF vectors of 1..4-grams with document frequencies over the
  reference sets of the evaluated images, clipped by the reference weights, a Gaussian length penalty
  (sigma 6, on coco-caption's length count), averaged over n and references, times 10, averaged over images.

Scores are reported in percent (x100) like the other metrics.
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter, defaultdict
from typing import Dict, List, Sequence, Tuple

Ngram = Tuple[str, ...]


def _is_punct(token: str) -> bool:
    return all(unicodedata.category(ch).startswith(("P", "S")) or ch.isspace() for ch in token)


def segment(text: str) -> List[str]:
    """jieba word segmentation, lower-cased, punctuation and whitespace tokens dropped."""
    import jieba

    jieba.setLogLevel(60)
    return [t.lower() for t in jieba.lcut(text.strip()) if t.strip() and not _is_punct(t)]


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _counts(tokens: Sequence[str], max_n: int = 4) -> Counter:
    out: Counter = Counter()
    for n in range(1, max_n + 1):
        out.update(ngrams(tokens, n))
    return out


# ---------------------------------------------------------------------------------------------- BLEU
def bleu(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
         max_n: int = 4) -> List[float]:
    """Corpus BLEU-1..``max_n`` (fractions 0-1) of tokenised candidates against their reference lists."""
    tiny, small = 1e-15, 1e-9
    correct = [0] * max_n
    guess = [0] * max_n
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        max_counts: Dict[Ngram, int] = {}
        for ref in refs:
            for ng, c in _counts(ref, max_n).items():
                max_counts[ng] = max(max_counts.get(ng, 0), c)
        lens = [len(r) for r in refs]
        c_len = len(cand)
        ref_len += min(lens, key=lambda x: (abs(x - c_len), x))
        test_len += c_len
        for ng, c in _counts(cand, max_n).items():
            correct[len(ng) - 1] += min(max_counts.get(ng, 0), c)
        for k in range(max_n):
            guess[k] += max(0, c_len - k)
    scores = []
    b = 1.0
    ratio = (test_len + tiny) / (ref_len + small)
    for k in range(max_n):
        b *= (correct[k] + tiny) / (guess[k] + small)
        s = b ** (1.0 / (k + 1))
        if ratio < 1:
            s *= math.exp(1 - 1 / ratio)
        scores.append(s)
    return scores


# ---------------------------------------------------------------------------------------------- ROUGE-L
def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) len(b)))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: Sequence[str], refs: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Sentence ROUGE-L F (fraction 0-1) of one candidate against its references."""
    precs, recs = [], []
    for ref in refs:
        lcs = lcs_length(ref, candidate)
        precs.append(lcs / len(candidate) if candidate else 0.0)
        recs.append(lcs / len(ref) if ref else 0.0)
    p, r = max(precs, default=0.0), max(recs, default=0.0)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta ** 2) * p * r) / (r + beta ** 2 * p)


# ---------------------------------------------------------------------------------------------- CIDEr-D
def cider_d(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
            n: int = 4, sigma: float = 6.0) -> Tuple[float, List[float]]:
    """Corpus CIDEr-D (coco-caption's ``Cider``) and the per-image scores (not x100: 0-10 range)."""
    ref_counts = [[_counts(r, n) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_counts:
        for ng in set(ng for rc in refs for ng in rc):
            df[ng] += 1
    log_n = math.log(float(len(references))) if references else 0.0

    def vec(cnts: Counter):
        v: List[Dict[Ngram, float]] = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ng, tf in cnts.items():
            k = len(ng) - 1
            w = float(tf) * (log_n - math.log(max(1.0, df[ng])))
            v[k][ng] = w
            norm[k] += w * w
            if k == 1:  # coco-caption counts the length on bigrams (kept for parity)
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    def sim(vh, nh, lh, vr, nr, lr) -> List[float]:
        delta = float(lh - lr)
        val = [0.0] * n
        for k in range(n):
            for ng, w in vh[k].items():
                val[k] += min(w, vr[k].get(ng, 0.0)) * vr[k].get(ng, 0.0)
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        return val

    per_image = []
    for cand, refs in zip(candidates, ref_counts):
        vh, nh, lh = vec(_counts(cand, n))
        total = [0.0] * n
        for rc in refs:
            vr, nr, lr = vec(rc)
            for k, x in enumerate(sim(vh, nh, lh, vr, nr, lr)):
                total[k] += x
        score = sum(total) / n
        score /= max(1, len(refs))
        per_image.append(score * 10.0)
    mean = sum(per_image) / len(per_image) if per_image else float("nan")
    return mean, per_image


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Dict[str, float]:
    """``BLEU-4``, ``ROUGE-L`` and ``CIDEr`` (x100) of raw Chinese predictions against raw references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} images")
    cands = [segment(p) for p in predictions]
    refs = [[segment(r) for r in rs] for rs in references]
    b = bleu(cands, refs)
    rouge = [rouge_l(c, r) for c, r in zip(cands, refs)]
    cider, _ = cider_d(cands, refs)
    return {"BLEU-1": b[0] * 100, "BLEU-4": b[3] * 100,
            "ROUGE-L": sum(rouge) / len(rouge) * 100 if rouge else float("nan"),
            "CIDEr": cider * 100, "images": len(cands)}
