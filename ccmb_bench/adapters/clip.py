"""transformers' ``CLIPModel`` (OpenAI CLIP and its re-trainings) and ``MetaClip2Model`` (MetaCLIP 2,
multilingual): the checkpoint's CLIP tokenizer (lower-cased, 77 tokens) padded to the longest text — CLIP pools
the end-of-text token under a causal mask, so padding does not reach it — and its CLIP image processor."""
from __future__ import annotations

from ccmb_bench.adapters.hf import HFFamily, TextRecipe

FAMILY = HFFamily("clip", {"clip": "CLIPModel", "metaclip_2": "MetaClip2Model"}, TextRecipe(padding="longest"))
globals().update(FAMILY.exports())
