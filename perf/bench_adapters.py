"""Encoding throughput per adapter family: ccmb's encoding path (``ccmb_bench.tasks.encode`` through the adapter,
as ``ccmb-bench run`` encodes) next to the library's own plain loop (the model card's usage: its processor on each
batch, ``get_image_features``/``get_text_features`` under ``torch.no_grad``, normalised), on the same tiny random
model, the same in-memory images and the same texts, batch size and thread count; each repeat runs the two
back to back (alternating which goes first) and the ratio printed is the median of those pairs' ratios (with its
interquartile range).

    PYTHONPATH=. .venv/bin/python perf/bench_adapters.py [--images 256] [--texts 512] [--batch-size 64] [--repeats 5]

open_clip runs in a child process with the open-clip extra on its path (``.venv/extras/open-clip``, or
``$CCMB_OPEN_CLIP_PATH``); ``--no-open-clip`` skips it.
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # ccmb's progress bars off: they would only print over the table
import argparse  # noqa: E402
import json  # noqa: E402
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccmb.synthetic import all_items, render  # noqa: E402
from tests.bench.adapter_models import (  # noqa: E402
    build_altclip, build_chinese_clip, build_clip, build_metaclip2, build_open_clip, build_pair, build_siglip,
    build_siglip2_fixed, build_siglip2_naflex)

HF_CASES = {  # family case -> (builder, model class, text kwargs of the model card)
    "clip": (build_clip, "CLIPModel", {"padding": True, "truncation": True}),
    "metaclip2": (build_metaclip2, "MetaClip2Model", {"padding": True, "truncation": True}),
    "altclip": (build_altclip, "AltCLIPModel", {"padding": True, "truncation": True}),
    "siglip": (build_siglip, "SiglipModel", {"padding": "max_length", "truncation": True}),
    "siglip2-fixed": (build_siglip2_fixed, "SiglipModel", {"padding": "max_length", "max_length": 64,
                                                          "truncation": True}),
    "siglip2-naflex": (build_siglip2_naflex, "Siglip2Model", {}),
    "chinese-clip": (build_chinese_clip, "ChineseCLIPModel", {"padding": True, "truncation": True,
                                                             "max_length": 52}),
    "pair": (build_pair, None, None),
}


def inputs(n_images: int, n_texts: int):
    items = all_items()
    images = [render(items[k % len(items)], size=64, seed=k).convert("RGB") for k in range(n_images)]
    texts = [f"{it.title}，{it.content}" if k % 2 else f"{it.query}{k}" for k, it in
             ((k, items[k % len(items)]) for k in range(n_texts))]
    return images, texts


def _feat(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _batches(seq, bs):
    return [seq[i:i + bs] for i in range(0, len(seq), bs)]


def library_loops(case: str, d: Path, images, texts, bs: int) -> Dict[str, Callable[[], torch.Tensor]]:
    """The library's plain loops (as its documentation uses it)."""
    import transformers
    from transformers import AutoProcessor

    if case == "pair":
        from transformers import BertForSequenceClassification, BertTokenizerFast, CLIPImageProcessor, CLIPModel

        clip = CLIPModel.from_pretrained(str(d) + "-clip").eval()
        proc = CLIPImageProcessor.from_pretrained(str(d) + "-clip")
        text_encoder = BertForSequenceClassification.from_pretrained(d).eval()
        tok = BertTokenizerFast.from_pretrained(d)

        def img():
            with torch.no_grad():
                return torch.cat([torch.nn.functional.normalize(_feat(clip.get_image_features(
                    **proc(images=b, return_tensors="pt"))), dim=-1) for b in _batches(images, bs)])

        def txt():
            with torch.no_grad():
                return torch.cat([torch.nn.functional.normalize(text_encoder(**tok(b, padding=True, truncation=True,
                                                                                   return_tensors="pt")).logits,
                                                                dim=-1) for b in _batches(texts, bs)])
        return {"images": img, "texts": txt}
    _, cls, text_kwargs = HF_CASES[case]
    model = getattr(transformers, cls).from_pretrained(d).eval()
    processor = AutoProcessor.from_pretrained(d)

    def img():
        with torch.no_grad():
            return torch.cat([torch.nn.functional.normalize(_feat(model.get_image_features(
                **processor(images=b, return_tensors="pt"))), dim=-1) for b in _batches(images, bs)])

    def txt():
        with torch.no_grad():
            return torch.cat([torch.nn.functional.normalize(_feat(model.get_text_features(
                **processor(text=b, return_tensors="pt", **text_kwargs))), dim=-1) for b in _batches(texts, bs)])
    return {"images": img, "texts": txt}


def ccmb_loops(d: Path, images, texts, bs: int) -> Dict[str, Callable[[], torch.Tensor]]:
    """ccmb's path: ``load_adapter`` + ``tasks.encode`` (no embedding cache), as ``ccmb-bench run`` encodes."""
    from ccmb_bench.adapters import load_adapter
    from ccmb_bench.cache import EmbeddingCache
    from ccmb_bench.tasks.encode import encode_images, encode_texts

    adapter = load_adapter(str(d))
    cache = EmbeddingCache(None, adapter.name, adapter.fingerprint, "perf", "test")
    ids = [str(i) for i in range(len(images))]
    return {"images": lambda: encode_images(adapter, images.__getitem__, ids, bs, cache)["embeds"],
            "texts": lambda: encode_texts(adapter, texts, bs, cache)["embeds"]}


def measure(lib: Dict[str, Callable], ours: Dict[str, Callable], repeats: int) -> Dict[str, Dict[str, float]]:
    out = {}
    for part in ("images", "texts"):
        a, b = lib[part](), ours[part]()  # warm-up, and the two must agree
        diff = float((a - b).abs().max())
        t_lib: List[float] = []
        t_ours: List[float] = []
        for r in range(repeats):
            order = [(lib[part], t_lib), (ours[part], t_ours)]
            for fn, times in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        paired = sorted(a / b for a, b in zip(t_lib, t_ours))  # each repeat's two runs were back to back
        out[part] = {"library_s": statistics.median(t_lib), "ccmb_s": statistics.median(t_ours), "max_diff": diff,
                     "ratio": statistics.median(paired), "low": paired[len(paired) // 4],
                     "high": paired[(3 * len(paired)) // 4]}
    return out


def open_clip_child(args, n_images, n_texts) -> Dict[str, Dict[str, float]]:
    extra = Path(os.environ.get("CCMB_OPEN_CLIP_PATH") or Path(sys.prefix) / "extras" / "open-clip")
    if not (extra / "open_clip").is_dir():
        raise SystemExit(f"{extra}: the open-clip extra is missing (`make install`), or pass --no-open-clip")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(extra)])}
    cmd = [sys.executable, __file__, "--open-clip-child", "--images", str(n_images), "--texts", str(n_texts),
           "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def open_clip_measure(args) -> Dict[str, Dict[str, float]]:
    from ccmb_bench.adapters.tvcompat import prepare_torchvision

    prepare_torchvision()
    import open_clip

    images, texts = inputs(args.images, args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        d = build_open_clip(Path(tmp) / "open-clip-tiny")
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{d}")
        model.eval()
        bs = args.batch_size

        def img():
            with torch.no_grad():
                return torch.cat([model.encode_image(torch.stack([preprocess(im) for im in b]), normalize=True)
                                  for b in _batches(images, bs)])

        def txt():
            with torch.no_grad():
                return torch.cat([model.encode_text(tokenizer(b), normalize=True) for b in _batches(texts, bs)])
        return measure({"images": img, "texts": txt}, ccmb_loops(d, images, texts, bs), args.repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the same for both sides)")
    ap.add_argument("--families", default=",".join(list(HF_CASES) + ["open-clip"]))
    ap.add_argument("--no-open-clip", action="store_true")
    ap.add_argument("--open-clip-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)
    if args.open_clip_child:
        print(json.dumps(open_clip_measure(args)))
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    images, texts = inputs(args.images, args.texts)
    print(f"{args.images} images (64 px), {args.texts} texts, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'family':16s} {'part':7s} {'library/s':>10s} {'ccmb/s':>10s} {'ratio':>7s} {'IQR':>9s} {'max|diff|':>10s}")
    ratios = []
    for case in args.families.split(","):
        if case == "open-clip":
            if args.no_open_clip:
                continue
            res = open_clip_child(args, args.images, args.texts)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                d = HF_CASES[case][0](Path(tmp) / f"{case}-tiny")
                res = measure(library_loops(case, d, images, texts, args.batch_size),
                              ccmb_loops(d, images, texts, args.batch_size), args.repeats)
        for part, n in (("images", args.images), ("texts", args.texts)):
            r = res[part]
            ratios.append(r["ratio"])
            print(f"{case:16s} {part:7s} {n / r['library_s']:10.0f} {n / r['ccmb_s']:10.0f} {r['ratio']:6.2f}x "
                  f"{r['low']:6.2f}-{r['high']:.2f} {r['max_diff']:10.1e}", flush=True)
    print(f"ratio: median over the repeats of (library time / ccmb time) of two back-to-back runs (IQR beside it); "
          f"over the rows: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
