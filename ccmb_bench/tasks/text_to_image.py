"""Text-to-image: score a folder of generated images with the registered model's image-text similarity
and a Fréchet distance in its image-embedding space against the reference images.

Generated images are looked up per prompt as ``<prompt_id>.<ext>`` or ``<index>.<ext>`` (png, jpg, jpeg,
webp) in the folder.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ccmb.datasets import TextToImageData
from ccmb.images import decode_image
from ccmb_bench.adapters import ModelAdapter
from ccmb_bench.cache import EmbeddingCache
from ccmb_bench.tasks.encode import encode_images, encode_texts

logger = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)`` of two sets of row vectors (the trace of
    the matrix square root via the symmetric form ``S_a^1/2 S_b S_a^1/2``, eigenvalues clipped at 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mu = a.mean(0) - b.mean(0)
    ca = np.cov(a, rowvar=False) if len(a) > 1 else np.zeros((a.shape[1], a.shape[1]))
    cb = np.cov(b, rowvar=False) if len(b) > 1 else np.zeros((b.shape[1], b.shape[1]))
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cb @ root_a)
    tr_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)


def find_generated(folder: Path, prompt_ids: List[str]) -> List[Optional[Path]]:
    files = {}
    for p in Path(folder).iterdir():
        if p.is_file() and p.suffix.lower() in EXTENSIONS:
            files.setdefault(p.stem, p)
    return [files.get(pid, files.get(str(k))) for k, pid in enumerate(prompt_ids)]


def evaluate(adapter: ModelAdapter, data: TextToImageData, cache: EmbeddingCache, batch_size: int = 64,
             generated: Optional[str] = None) -> Dict[str, Any]:
    if not generated:
        raise ValueError("text-to-image needs --generated DIR (one image per prompt: <prompt_id>.png)")
    folder = Path(generated)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: generated-images folder not found")
    paths = find_generated(folder, data.prompt_ids)
    have = [k for k, p in enumerate(paths) if p is not None]
    if not have:
        raise FileNotFoundError(f"{folder}: no generated image for any prompt (expected e.g. "
                                f"{data.prompt_ids[0]}.png or 0.png)")
    prompts = encode_texts(adapter, data.prompts, batch_size, cache, part="prompts")["embeds"]
    gen = encode_images(adapter, lambda j: decode_image(paths[have[j]].read_bytes(), source=str(paths[have[j]])),
                        [f"{paths[k].name}:{paths[k].stat().st_size}:{paths[k].stat().st_mtime_ns}" for k in have],
                        batch_size, EmbeddingCache(None, "", "", "", ""), desc="generated")["embeds"]
    refs = encode_images(adapter, data.load_image, data.image_ids, batch_size, cache)["embeds"]
    ref_of_prompt = refs[torch.tensor(data.reference_images, dtype=torch.long)]
    sel = torch.tensor(have, dtype=torch.long)
    sim = (gen * prompts[sel]).sum(-1)
    ref_sim = (ref_of_prompt * prompts).sum(-1)
    used_refs = sorted(set(data.reference_images))
    return {"clip_score": float(sim.mean() * 100), "reference_clip_score": float(ref_sim.mean() * 100),
            "frechet_distance": frechet_distance(gen.numpy(), refs[used_refs].numpy()),
            "prompts": len(data.prompts), "generated": len(have), "missing": len(data.prompts) - len(have)}
