"""Image transform (vs transformers' PIL CLIP processor) and the tokenizer (vocab-size trap)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.preprocess import CLIP_MEAN, CLIP_STD, ImageTextCollator, ImageTransform, stack_images
from models.tokenizer import SPECIAL_TOKENS, load_tokenizer, tokenize, write_test_vocab


@pytest.mark.parametrize("size,shape", [(32, (97, 151)), (32, (151, 97)), (24, (24, 24)), (40, (33, 50))])
def test_image_transform_matches_clip_processor(size, shape):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    rng = np.random.default_rng(size + shape[0])
    img = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    ref = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    expected = ref(images=img, return_tensors="pt")["pixel_values"][0]
    ours = ImageTransform(size)(img)
    assert ours.dtype == torch.float32 and ours.shape == (3, size, size)
    assert (ours - expected).abs().max() <= 1e-5


def test_centre_crop_and_normalisation():
    img = np.zeros((32, 64, 3), dtype=np.uint8)
    img[:, :16] = (255, 0, 0)
    img[:, 16:48] = (10, 200, 30)
    img[:, 48:] = (0, 0, 255)
    out = ImageTransform(32)(Image.fromarray(img))
    for c, value in enumerate((10, 200, 30)):
        assert torch.allclose(out[c], torch.full((32, 32), (value / 255 - CLIP_MEAN[c]) / CLIP_STD[c]), atol=1e-6)
    gray = ImageTransform(8)(Image.new("L", (20, 10), 128))
    assert gray.shape == (3, 8, 8)
    with pytest.raises(TypeError):
        ImageTransform(8)(np.zeros((8, 8, 3)))


def test_tokenizer_from_vocab_file_and_dir(tmp_path):
    vocab = write_test_vocab(tmp_path / "tok", extra_chars="龘")
    lines = vocab.read_text(encoding="utf-8").splitlines()
    tok = load_tokenizer(vocab)
    assert tok.vocab_size == len(lines) > 500  # not transformers 5's silent 5-token vocabulary
    assert load_tokenizer(tmp_path / "tok").vocab_size == len(lines)
    assert lines[:5] == SPECIAL_TOKENS and "龘" in tok.get_vocab()
    enc = tokenize(tok, ["一只猫在草地上", "狗ABC 123", "长" * 200])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == (3, 64) and mask.shape == (3, 64)
    assert tok.convert_ids_to_tokens(ids[0, :9].tolist()) == ["[CLS]", "一", "只", "猫", "在", "草", "地", "上", "[SEP]"]
    assert tok.unk_token_id not in ids[:2][mask[:2].bool()].tolist()
    assert mask[0].sum() == 9 and mask[2].sum() == 64 and ids[2, 63] == tok.sep_token_id
    # a HF directory written by save_pretrained (tokenizer.json only)
    tok.save_pretrained(tmp_path / "hf")
    again = load_tokenizer(tmp_path / "hf")
    assert again.vocab_size == len(lines) and again("一只猫")["input_ids"] == tok("一只猫")["input_ids"]


def test_tokenizer_rejects_broken_vocab(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n猫\n猫\n", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.txt: tokenizer has 6 tokens but the file has 7 lines"):
        load_tokenizer(bad)
    nospecial = tmp_path / "v2" / "vocab.txt"
    nospecial.parent.mkdir()
    nospecial.write_text("猫\n狗\n", encoding="utf-8")
    with pytest.raises(ValueError, match="special tokens"):
        load_tokenizer(nospecial)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")


def test_collator_builds_a_model_batch(tmp_path):
    import models

    tok = load_tokenizer(write_test_vocab(tmp_path))
    cfg = models.get_config("r2d2-tiny")
    assert tok.vocab_size <= cfg.vocab_size
    collate = ImageTextCollator(ImageTransform(cfg.image_size), tok, max_length=cfg.max_text_len)
    batch = collate([(Image.new("RGB", (50, 40), (255, 0, 0)), "红色的车"), (Image.new("RGB", (40, 50)), "黑")])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["input_ids"].shape == (2, 6)
    model = models.build_model(cfg).eval()
    with torch.no_grad():
        out = model(**batch)
    assert out["text_embeds"].shape == (2, cfg.embed_dim)
    assert stack_images([torch.zeros(3, 4, 4)]).shape == (1, 3, 4, 4)
