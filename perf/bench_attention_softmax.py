"""Training attention on CPU: torch's row-major softmax (over the last dim) against the keys-major layout that
:func:`models.cross_encoder.attention` uses when there are fewer keys than ``SHORT_KEYS``.

For each attention shape of the tiny and ViT-B/16 training steps ([pairs, heads, queries, keys]) it times the
softmax forward + backward both ways (same values: softmax over dim -1 of S equals softmax over dim -2 of Sᵀ,
and the attention matmuls produce either layout at no extra cost), one thread, and prints the medians and the
ratio. Then the whole ``attention`` call (scores, mask, softmax, dropout, values; forward + backward) with the
layout rule on and forced off.

    .venv/bin/python perf/bench_attention_softmax.py [--repeats 7] [--number 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models.cross_encoder as ce  # noqa: E402

SHAPES = [  # (label, pairs, heads, queries, keys)
    ("tiny: text-side cross-attention, 17 image keys", 96, 4, 16, 17),
    ("tiny: text-side cross-attention, 9 kept image keys", 96, 4, 16, 9),
    ("tiny: image-side self-attention, 17 x 17", 64, 4, 17, 17),
    ("tiny: image-side self-attention, 9 x 9", 64, 4, 9, 9),
    ("tiny: image-side cross-attention, 16 text keys", 96, 4, 17, 16),
    ("tiny: text self-attention, 16 x 16", 64, 4, 16, 16),
    ("B/16: text-side cross-attention, 197 image keys", 8, 12, 64, 197),
]


def median_us(fn, number: int, repeats: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--number", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"softmax forward + backward, us (median of {args.repeats} x {args.number}, one thread)")
    print(f"  {'shape':58s} {'row-major':>10s} {'keys-major':>11s} {'ratio':>6s}")
    for label, b, h, lq, lk in SHAPES:
        s = torch.randn(b, h, lq, lk, requires_grad=True)
        st = s.detach().transpose(-1, -2).contiguous().requires_grad_()
        g = torch.randn(b, h, lq, lk)
        gt = g.transpose(-1, -2).contiguous()
        row = median_us(lambda: torch.softmax(s, -1).backward(g), args.number, args.repeats)
        col = median_us(lambda: torch.softmax(st, -2).backward(gt), args.number, args.repeats)
        print(f"  {label + f' {[b, h, lq, lk]}':58s} {row:10.0f} {col:11.0f} {row / col:6.2f}")
    print("whole training attention (scores, mask, softmax, dropout 0.1, values), forward + backward, us")
    print(f"  {'shape':58s} {'row-major':>10s} {'layout rule':>11s} {'ratio':>6s}")
    for label, b, h, lq, lk in SHAPES:
        q = torch.randn(b, h, lq, 10, requires_grad=True)
        k = torch.randn(b, h, lk, 10, requires_grad=True)
        v = torch.randn(b, h, lk, 10, requires_grad=True)
        keep = torch.ones(b, lk, dtype=torch.bool)
        keep[:, lk // 2:] = torch.rand(b, lk - lk // 2) > 0.3
        mask = ce.KeyMask(keep)

        def call():
            ce.attention(q, k, v, mask, 0.1, True).sum().backward()

        rule = median_us(call, args.number, args.repeats)
        saved = ce.SHORT_KEYS
        ce.SHORT_KEYS = 0  # no key length is short: the row-major path
        try:
            row = median_us(call, args.number, args.repeats)
        finally:
            ce.SHORT_KEYS = saved
        print(f"  {label + f' {[b, h, lq, lk]}':58s} {row:10.0f} {rule:11.0f} {row / rule:6.2f}")


if __name__ == "__main__":
    main()
