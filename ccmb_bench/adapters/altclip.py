"""transformers' ``AltCLIPModel`` (BAAI AltCLIP: an XLM-R text tower distilled onto CLIP's image tower): its
XLM-R tokenizer padded to the longest text with the attention mask (the first token is pooled), its CLIP image
processor."""
from __future__ import annotations

from ccmb_bench.adapters.hf import HFFamily, TextRecipe

FAMILY = HFFamily("altclip", {"altclip": "AltCLIPModel"}, TextRecipe(padding="longest", position_offset=2))
globals().update(FAMILY.exports())
