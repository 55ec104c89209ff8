"""MinHash signatures of captions over character n-grams, vectorised with numpy.

Captions are normalised (lower-case; punctuation, symbols and whitespace removed), split into character
n-grams (a caption shorter than ``n`` is one padded n-gram), each n-gram hashed to 64 bits (polynomial over
code points + splitmix64), and ``num_perm`` multiply-shift hash functions give the signature (the minimum
per function). LSH banding: ``bands`` bands of ``num_perm / bands`` rows; each band is reduced to one
64-bit bucket value. Signatures are deterministic for a seed: every engine computes the same values.
Signatures only propose candidate pairs; every candidate is checked with the exact Jaccard similarity of
the two n-gram sets (:func:`jaccard`) before anything is grouped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .hashing import splitmix64

#: Removed before shingling (RE2 syntax, Unicode classes): punctuation, symbols, separators, ``_``.
STRIP_PATTERN = r"[\p{P}\p{S}\p{Z}\s_]+"
MAX_SHINGLES_PER_CHUNK = 1 << 17
_P = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class MinHashParams:
    num_perm: int = 64
    ngram: int = 3
    bands: int = 16
    seed: int = 20240701

    def __post_init__(self) -> None:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm {self.num_perm} is not a multiple of bands {self.bands}")
        if self.ngram < 1:
            raise ValueError("ngram must be >= 1")

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands

    def coefficients(self) -> Tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        a = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) | np.uint64(1)
        b = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)
        return a, b


def normalize_texts(texts) -> pa.Array:
    """Lower-case and strip punctuation/symbols/whitespace (pyarrow compute, RE2)."""
    arr = pa.array(texts, pa.string()) if not isinstance(texts, (pa.Array, pa.ChunkedArray)) else texts
    return pc.replace_substring_regex(pc.utf8_lower(arr), STRIP_PATTERN, "")


def shingle_hashes(texts: Sequence[str], ngram: int) -> Tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every character n-gram of non-empty ``texts`` and the per-text start offsets."""
    padded = [t if len(t) >= ngram else t + "\0" * (ngram - len(t)) for t in texts]
    lengths = np.fromiter((len(t) for t in padded), np.int64, len(padded))
    cps = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    total = len(cps)
    nshingles = lengths - ngram + 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # position p starts a valid shingle when p - start(text) < nshingles(text)
    seg = np.repeat(np.arange(len(padded)), lengths)
    valid = (np.arange(total) - starts[seg]) < nshingles[seg]
    with np.errstate(over="ignore"):
        h = np.zeros(total - ngram + 1, np.uint64)
        for j in range(ngram):
            h = h * _P + cps[j: total - ngram + 1 + j]
    h = splitmix64(h[valid[: total - ngram + 1]])
    offsets = np.concatenate([[0], np.cumsum(nshingles)[:-1]])
    return h, offsets


def signatures(texts: Sequence[Optional[str]], params: MinHashParams = MinHashParams()
               ) -> Tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (N, num_perm) uint32 of normalised texts and a mask of texts that have one.

    Empty or missing texts get no signature (mask False, row of zeros).
    """
    n = len(texts)
    sig = np.zeros((n, params.num_perm), np.uint32)
    lengths = np.fromiter((len(t) if t else 0 for t in texts), np.int64, n)
    valid = lengths > 0
    idx = np.flatnonzero(valid)
    cost = np.cumsum(np.maximum(lengths[idx], params.ngram))
    a, b = params.coefficients()
    lo = 0
    while lo < len(idx):
        # a chunk of texts with a bounded number of shingles
        base = cost[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(cost, base + MAX_SHINGLES_PER_CHUNK, side="right")))
        h, offsets = shingle_hashes([texts[i] for i in idx[lo:hi]], params.ngram)
        # (num_perm x shingles): the minimum over each text's shingles runs along contiguous memory (reduceat
        # over the last axis is ~4x faster than over rows of a shingles x num_perm matrix)
        perm = np.multiply(a[:, None], h[None, :])
        with np.errstate(over="ignore"):
            np.add(perm, b[:, None], out=perm)
        np.right_shift(perm, np.uint64(32), out=perm)
        sig[idx[lo:hi]] = np.minimum.reduceat(perm, offsets, axis=1).T
        lo = hi
    return sig, valid


def band_values(sig: np.ndarray, params: MinHashParams = MinHashParams()) -> np.ndarray:
    """One int64 bucket value per band, shape (N, bands)."""
    n = len(sig)
    rows = sig.reshape(n, params.bands, params.rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.zeros((n, params.bands), np.uint64) + np.arange(params.bands, dtype=np.uint64)
        for j in range(params.rows):
            h = h * _P + rows[:, :, j]
    return splitmix64(h).view(np.int64)


def similarity(sig: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity (share of equal signature values) of row pairs (a[i], b[i]).

    An estimate: it only proposes candidates; decisions use :func:`jaccard`."""
    return (sig[a] == sig[b]).mean(axis=1)


def ngrams(text: str, ngram: int) -> frozenset:
    """The set of character n-grams of a normalised text (a text shorter than ``n`` is one padded n-gram)."""
    if len(text) < ngram:
        text = text + "\0" * (ngram - len(text))
    return frozenset(text[i: i + ngram] for i in range(len(text) - ngram + 1))


def jaccard_sets(a: frozenset, b: frozenset) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def jaccard(texts: Sequence[str], a: np.ndarray, b: np.ndarray, ngram: int) -> np.ndarray:
    """Exact Jaccard similarity of the character n-gram sets of pairs (texts[a[i]], texts[b[i]])."""
    cache: dict = {}

    def grams(i: int) -> frozenset:
        g = cache.get(i)
        if g is None:
            g = cache[i] = ngrams(texts[i], ngram)
        return g

    return np.fromiter((jaccard_sets(grams(i), grams(j)) for i, j in zip(a.tolist(), b.tolist())),
                       np.float64, len(a))
