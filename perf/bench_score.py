"""``ccmb score`` speed on one core with the tiny R2D2, and the projected GPU time of a 250M-sample corpus.

Builds a synthetic download folder (256x256 JPEGs, Chinese titles and contents), then, one torch thread:

1. baseline: the model alone - ``encode_images`` on ready pixel tensors + ``encode_texts`` (title, content)
   of the same samples, no I/O;
2. ``ccmb score`` end to end (``ccmb_bench.scoring.score_corpus``): tar reading, JPEG decoding, preprocessing,
   both encoders, float16 embedding shards and the scores parquet; with draft (reduced-scale) JPEG decoding,
   the default, and with ``--full-decode``;
3. semantic dedup of the scores (k-means + exact cosine), rows/s.

Medians of ``--repeats`` runs, side by side, with the ratio (end to end / model alone). The projection for
250M samples with ViT-L/14 divides by a STATED throughput (``--gpu-samples-per-s``, default 1500 image+text
pairs/s per GPU in fp16 at 224 px - an assumption, not a measurement on this machine) and states the JPEG
decoding cores that rate needs from the measured decode rate.

    python perf/bench_score.py [--samples 512] [--repeats 3] [--gpu-samples-per-s 1500]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccmb import shards, synthetic  # noqa: E402
from ccmb.images import decode_image  # noqa: E402


def build_download(out: Path, n: int, per_shard: int = 128) -> None:
    items = synthetic.sample_items(n, seed=0)
    for s in range(0, n, per_shard):
        shard = s // per_shard
        with shards.ShardWriter(out, shard, source="bench.jsonl") as w:
            for i, it in enumerate(items[s:s + per_shard]):
                key = shards.make_key(shard, i, per_shard)
                img = synthetic.render(it, 256, seed=s + i)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                meta = {"key": key, "url": f"http://x/{key}.jpg", "caption": it.title, "title": it.title,
                        "content": it.content, "width": 256, "height": 256}
                w.write(key, buf.getvalue(), it.title, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--gpu-samples-per-s", type=float, default=1500.0,
                    help="ASSUMED ViT-L/14 image+text scoring rate per GPU (fp16, 224 px).")
    ap.add_argument("--corpus", type=float, default=250e6)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from models import build_model, get_config
    from models.tokenizer import write_test_vocab
    from ccmb.corpus.steps.levels.semdedup import semantic_reps
    from ccmb.corpus.tables.scores import read_embeddings
    from ccmb_bench.adapters import load_adapter
    from ccmb_bench.scoring import score_corpus

    tmp = Path(tempfile.mkdtemp(prefix="bench_score_"))
    try:
        dl = tmp / "dl"
        build_download(dl, args.samples)
        model_dir = tmp / "model"
        build_model(get_config("r2d2-tiny")).save_pretrained(str(model_dir))
        vocab = write_test_vocab(tmp / "tok", extra_chars=synthetic.caption_chars())
        shutil.copy(vocab, model_dir / "vocab.txt")
        adapter = load_adapter(str(model_dir), device="cpu")
        samples = list(shards.iter_samples(dl))
        t0 = time.perf_counter()
        images = [decode_image(s.image) for s in samples]
        decode_s = time.perf_counter() - t0
        pixels = adapter.preprocess(images)
        titles = [s.meta["title"] for s in samples]
        contents = [s.meta["content"] for s in samples]
        base, full, exact, sem = [], [], [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(0, len(samples), args.batch_size):
                adapter.encode_images(pixels[i:i + args.batch_size])
                adapter.encode_texts(titles[i:i + args.batch_size])
                adapter.encode_texts(contents[i:i + args.batch_size])
            base.append(len(samples) / (time.perf_counter() - t0))
            out = tmp / f"scores{r}.parquet"
            t0 = time.perf_counter()
            score_corpus(dl, adapter, out, batch_size=args.batch_size)
            full.append(len(samples) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            score_corpus(dl, adapter, tmp / f"exact{r}.parquet", batch_size=args.batch_size, draft=False)
            exact.append(len(samples) / (time.perf_counter() - t0))
            keys, emb = read_embeddings(out)
            t0 = time.perf_counter()
            semantic_reps(emb, np.arange(len(emb)), len(emb), eps=0.05)
            sem.append(len(emb) / (time.perf_counter() - t0))
        b, f, s = statistics.median(base), statistics.median(full), statistics.median(sem)
        print(f"{len(samples)} samples (256 px JPEG, title + content), r2d2-tiny, 1 torch thread, "
              f"medians of {args.repeats}")
        print(f"{'':32}{'samples/s/core':>16}{'ratio':>8}")
        print(f"{'model alone (baseline)':32}{b:16.1f}{1.0:8.2f}")
        e = statistics.median(exact)
        print(f"{'ccmb score end to end':32}{f:16.1f}{f / b:8.2f}")
        print(f"{'  same, --full-decode':32}{e:16.1f}{e / b:8.2f}")
        print(f"{'semantic dedup (k-means+exact)':32}{s:16.1f}")
        print(f"JPEG decoding alone: {len(samples) / decode_s:.0f} images/s/core")
        gpu_h = args.corpus / args.gpu_samples_per_s / 3600
        cores = args.gpu_samples_per_s / (len(samples) / decode_s)
        print(f"projection: {args.corpus / 1e6:.0f}M samples with ViT-L/14 at an ASSUMED "
              f"{args.gpu_samples_per_s:.0f} samples/s per GPU = {gpu_h:.1f} GPU-hours "
              f"({gpu_h / 8:.1f} h on 8 GPUs); feeding one GPU needs ~{cores:.0f} cores of JPEG decoding "
              f"at the measured decode rate")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
