"""Two-stage ranking speed: batched pairs (``model.rank``) vs the official per-query loop, tiny model on CPU.

The baseline scores each query's top-k candidates with one cross-encoder call per query (as the official
evaluation does: the query's hidden state repeated k times, texts padded to 64 tokens). Ours gathers every distinct
(image, text) pair of both directions, computes the image-only parts of the cross encoders once per image, and
runs the pairs in chunks of ``pair_batch_size``, bucketed by text length and cut to the chunk's longest text. Both
compute the last cross-encoder layer for the [CLS] position only (the baseline calls ``match_prob``, which does). Both must give the same scores (asserted). Prints, for each top-k,
medians of several repeats (baseline and ours alternate) and the ratio.

    .venv/bin/python perf/bench_rank.py [--images 200 --texts 400 --top-k 3 8 16 --repeats 5 --threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import models

NO_SCORE = -100.0


@torch.no_grad()
def per_query_rank(model, ie, ih, te, th, mask, top_k):
    """The official loop: one cross-encoder batch (k pairs) per query, both directions."""
    sims = ie @ te.T
    ni, nt = sims.shape
    i2t = torch.full((ni, nt), NO_SCORE, device=sims.device)
    t2i = torch.full((nt, ni), NO_SCORE, device=sims.device)
    for i in range(ni):
        vals, idx = sims[i].topk(min(top_k, nt))
        prob = model.match_prob(ih[i:i + 1].expand(len(idx), -1, -1), th[idx], mask[idx])
        i2t[i, idx] = prob + vals
    for j in range(nt):
        vals, idx = sims[:, j].topk(min(top_k, ni))
        prob = model.match_prob(ih[idx], th[j:j + 1].expand(len(idx), -1, -1), mask[j:j + 1].expand(len(idx), -1))
        t2i[j, idx] = prob + vals
    return i2t, t2i


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def _interleaved_medians(base_fn, ours_fn, repeats, device):
    """Alternate baseline and ours so that both see the same machine load; medians of each."""
    base_times, ours_times, base_out, ours_out = [], [], None, None
    for _ in range(repeats):
        t, base_out = _timed(base_fn, device)
        base_times.append(t)
        t, ours_out = _timed(ours_fn, device)
        ours_times.append(t)
    return statistics.median(base_times), base_out, statistics.median(ours_times), ours_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="r2d2-tiny")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--top-k", type=int, nargs="+", default=[3, 8, 16],
                        help="pre-ranking depths to compare (r2d2-tiny's own default is 3)")
    parser.add_argument("--pair-batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = stable timings)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = models.build_model(args.config, device=device).eval()
    cfg = model.config
    pixels = torch.randn(args.images, 3, cfg.image_size, cfg.image_size)
    lengths = torch.randint(4, 33, (args.texts,))
    mask = (torch.arange(64)[None, :] < lengths[:, None]).long()  # padded to 64 like the official tokenizer
    ids = torch.randint(5, cfg.vocab_size, (args.texts, 64)) * mask
    ie, ih = model.encode_images_batched(pixels, batch_size=64, hidden_device=device)
    te, th, mask = model.encode_texts_batched(ids, mask, batch_size=128, hidden_device=device)

    print(f"config={cfg.name} device={device} images={args.images} texts={args.texts} threads={args.threads} "
          f"repeats={args.repeats} pair_batch_size={args.pair_batch_size}")
    print(f"{'top_k':>5}  {'per-query loop (ms)':>20}  {'batched pairs (ms)':>19}  {'speed-up':>8}")
    for k in args.top_k:
        base_t, (b_i2t, b_t2i), ours_t, (o_i2t, o_t2i) = _interleaved_medians(
            lambda: per_query_rank(model, ie, ih, te, th, mask, k),
            lambda: model.rank(ie, ih, te, th, mask, top_k=k, pair_batch_size=args.pair_batch_size),
            args.repeats, device)
        torch.testing.assert_close(o_i2t, b_i2t.cpu(), atol=1e-5, rtol=0)
        torch.testing.assert_close(o_t2i, b_t2i.cpu(), atol=1e-5, rtol=0)
        print(f"{k:>5}  {base_t * 1000:>20.1f}  {ours_t * 1000:>19.1f}  {base_t / ours_t:>7.1f}x")
    print("scores identical within 1e-5 (asserted)")

if __name__ == "__main__":
    main()
