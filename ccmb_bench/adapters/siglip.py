"""transformers' ``SiglipModel`` (SigLIP, its multilingual checkpoints, and the fixed-resolution SigLIP 2
checkpoints, which are ``SiglipModel`` with a Gemma tokenizer) and ``Siglip2Model`` (SigLIP 2 NaFlex).

Texts are padded to the model's 64 tokens (``padding="max_length"``), as the model cards require: SigLIP was
trained on fixed-length text and pools the last position. SigLIP's sentencepiece tokenizer lower-cases and
strips punctuation itself. A protocol's shorter context (Chinese-CLIP's 52) truncates the text but the padding
stays at 64."""
from __future__ import annotations

from ccmb_bench.adapters.hf import HFFamily, TextRecipe

FAMILY = HFFamily("siglip", {"siglip": "SiglipModel", "siglip2": "Siglip2Model"}, TextRecipe(padding="max_length"))
globals().update(FAMILY.exports())
