"""transformers' ``ChineseCLIPModel`` (Chinese-CLIP, and checkpoints of the same architecture such as QA-CLIP)
with its tokenizer and image processor: texts truncated at 52 tokens as Chinese-CLIP does."""
from __future__ import annotations

import logging
from pathlib import Path

from ccmb_bench.adapters.hf import HFDualEncoderAdapter, HFFamily, TextRecipe

logger = logging.getLogger(__name__)

#: Chinese-CLIP's context length (``cn_clip`` ``context_length=52``)
CONTEXT_LENGTH = 52


class ChineseCLIPAdapter(HFDualEncoderAdapter):
    """transformers' ``ChineseCLIPModel`` with its tokenizer and image processor (dual encoder)."""

    kind = "chinese-clip"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model_max_len = self.max_len = min(CONTEXT_LENGTH, int(self.model.config.text_config.max_position_embeddings))


class _ChineseCLIPFamily(HFFamily):
    def build(self, source, name, fingerprint, device):
        import torch
        from transformers import AutoTokenizer, ChineseCLIPModel

        model = ChineseCLIPModel.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
        processor, transform = None, None
        if Path(source, "preprocessor_config.json").is_file() or not Path(source).exists():
            try:
                from transformers import ChineseCLIPImageProcessor

                processor = ChineseCLIPImageProcessor.from_pretrained(source)
            except Exception as exc:  # a hub name without a processor, or an incompatible file
                logger.warning("%s: no usable image processor (%s); using CLIP resize/crop", source, exc)
        if processor is None:  # a folder saved without its processor: CLIP's resize + centre crop
            from models.preprocess import ImageTransform

            transform = ImageTransform(int(model.config.vision_config.image_size))
        return ChineseCLIPAdapter(model, tokenizer, processor, name, fingerprint, device, kind=self.kind,
                                  recipe=self.recipe, transform=transform)


FAMILY = _ChineseCLIPFamily("chinese-clip", {"chinese_clip": "ChineseCLIPModel"},
                            TextRecipe(padding="longest", max_len=CONTEXT_LENGTH))
globals().update(FAMILY.exports())
