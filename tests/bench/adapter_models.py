"""Tiny random-initialised models of every adapter family, built offline (configs, tokenizers and image
processors generated here), and each family's *reference* embeddings: what the model's own library gives when
used as its model card / documentation shows (ccmb's adapters must equal them).

Tokenizers: CLIP's byte-level BPE from the 256-symbol byte alphabet (no merges), XLM-R/Gemma from a tiny
vocabulary list, SigLIP's sentencepiece model trained here on a few sentences, BERT from ``write_test_vocab``
(a vocabulary dict: transformers 5 ignores ``vocab_file=``).
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
VISION = dict(LAYERS, image_size=32, patch_size=8)


def _chars() -> str:
    from ccmb.synthetic import all_items

    text = "".join(i.title + i.content + i.query for i in all_items())
    return "abcdefghijklmnopqrstuvwxyz0123456789" + "".join(sorted(set(text) - set(" abcdefghijklmnopqrstuvwxyz0123456789")))


CHARS = _chars()


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


# ------------------------------------------------------------------------------------------ tokenizers
def clip_tokenizer(max_len: int):
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_len)


def xlmr_tokenizer(max_len: int):
    from transformers import XLMRobertaTokenizer

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0 - (i % 5)) for i, c in enumerate(CHARS)] + [("▁" + c, -4.0) for c in CHARS[:26]]
    pieces.append(("<mask>", 0.0))
    return XLMRobertaTokenizer(vocab=pieces, model_max_length=max_len)


def gemma_tokenizer(max_len: int):
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "▁": 4}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=[], model_max_length=max_len)
    tok.padding_side = "right"
    return tok


def siglip_tokenizer(d: Path, max_len: int):
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    from ccmb.synthetic import all_items

    sentences = [t for it in all_items()[:60] for t in (it.title, it.content, it.query)] + ["a red circle photo"] * 5
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=120,
                                   model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    (d / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(str(d / "spiece.model"), model_max_length=max_len)


def bert_tokenizer(d: Path):
    from models.tokenizer import load_tokenizer, write_test_vocab

    from ccmb.synthetic import all_items

    chars = "".join(sorted(set("".join(i.title + i.content + i.query for i in all_items()))))
    return load_tokenizer(write_test_vocab(d, extra_chars=chars))


def _clip_image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


# ------------------------------------------------------------------------------------------ builders
def _clip_like(d: Path, config_class: str, model_class: str, tok, max_positions: int, **text) -> Path:
    """A CLIP-architecture model (text tower + image tower + projections) with ``tok`` and CLIP's image
    processor, saved in ``d``."""
    import transformers

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = getattr(transformers, config_class)(
        text_config=dict(LAYERS, vocab_size=len(tok), max_position_embeddings=max_positions, **ids, **text),
        vision_config=VISION, projection_dim=16)
    torch.manual_seed(0)
    getattr(transformers, model_class)(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    _clip_image_processor().save_pretrained(d)
    return d


def build_clip(d: Path) -> Path:
    return _clip_like(d, "CLIPConfig", "CLIPModel", clip_tokenizer(32), 32)


def build_metaclip2(d: Path) -> Path:
    return _clip_like(d, "MetaClip2Config", "MetaClip2Model", xlmr_tokenizer(32), 32)


def build_altclip(d: Path) -> Path:
    """XLM-R positions start after the padding index: 40 tokens need 42 positions."""
    return _clip_like(d, "AltCLIPConfig", "AltCLIPModel", xlmr_tokenizer(40), 42, project_dim=16)


def _siglip_model(d: Path, tok, max_positions: int) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    cfg = SiglipConfig(text_config=dict(LAYERS, vocab_size=len(tok), max_position_embeddings=max_positions),
                       vision_config=VISION)
    torch.manual_seed(0)
    SiglipModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def build_siglip(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return _siglip_model(d, siglip_tokenizer(d, 16), 16)


def build_siglip2_fixed(d: Path) -> Path:
    """A fixed-resolution SigLIP 2 checkpoint: ``SiglipModel`` with a Gemma tokenizer, as google/siglip2-*-256."""
    return _siglip_model(d, gemma_tokenizer(64), 64)


def build_siglip2_naflex(d: Path) -> Path:
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    tok = gemma_tokenizer(64)
    # the processor's call-time defaults (patch 16, up to 256 patches) apply, as with the real checkpoints
    vision = {k: v for k, v in VISION.items() if k not in ("image_size", "patch_size")}
    cfg = Siglip2Config(text_config=dict(LAYERS, vocab_size=len(tok), max_position_embeddings=64),
                        vision_config=dict(vision, patch_size=16, num_patches=16))
    torch.manual_seed(0)
    Siglip2Model(cfg).save_pretrained(d)
    Siglip2Processor(image_processor=Siglip2ImageProcessor(patch_size=16, max_num_patches=16),
                     tokenizer=tok).save_pretrained(d)
    return d


def build_chinese_clip(d: Path) -> Path:
    from transformers import ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    d.mkdir(parents=True, exist_ok=True)
    tok = bert_tokenizer(d)
    cfg = ChineseCLIPConfig(text_config=dict(LAYERS, vocab_size=tok.vocab_size, max_position_embeddings=64),
                            vision_config=VISION, projection_dim=16)
    torch.manual_seed(0)
    ChineseCLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    ChineseCLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}) \
        .save_pretrained(d)
    return d


def build_pair(d: Path) -> Path:
    """Taiyi-style: a CLIPModel's files renamed beside a BertForSequenceClassification text tower."""
    from transformers import BertConfig, BertForSequenceClassification

    clip = build_clip(d.parent / (d.name + "-clip"))
    d.mkdir(parents=True, exist_ok=True)
    tok = bert_tokenizer(d)
    torch.manual_seed(1)
    cfg = BertConfig(**LAYERS, vocab_size=tok.vocab_size, max_position_embeddings=64, num_labels=16)
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    shutil.copy(clip / "config.json", d / "vision_config.json")
    shutil.copy(clip / "model.safetensors", d / "model.vision.safetensors")
    shutil.copy(clip / "preprocessor_config.json", d / "preprocessor_config.json")
    return d


OPEN_CLIP_CONFIG = {
    "model_cfg": {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                  "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                       "interpolation": "bicubic", "resize_mode": "shortest"},
}


def build_open_clip(d: Path, multilingual: bool = False) -> Path:
    """An open_clip hub-style folder (``open_clip_config.json`` + ``open_clip_model.safetensors``); with
    ``multilingual`` an HF XLM-R text tower (mean pooling + linear projection, like xlm-roberta-base-ViT-B-32).
    Needs open_clip importable (the test runs this in a subprocess with the extra on the path)."""
    import open_clip
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(OPEN_CLIP_CONFIG))
    if multilingual:
        from transformers import XLMRobertaConfig

        tower = d / "xlmr"
        tok = xlmr_tokenizer(24)
        tok.save_pretrained(tower)
        tok.save_pretrained(d)  # open_clip reads a local-dir model's tokenizer from the folder itself
        XLMRobertaConfig(**LAYERS, vocab_size=len(tok), max_position_embeddings=30,
                         pad_token_id=tok.pad_token_id).save_pretrained(tower)
        cfg["model_cfg"]["text_cfg"] = {"hf_model_name": str(tower), "hf_tokenizer_name": str(tower),
                                        "hf_model_pretrained": False, "hf_proj_type": "linear",
                                        "hf_pooler_type": "mean_pooler", "context_length": 24}
    (d / "open_clip_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{d}", load_weights=False, pretrained_text=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return d


# ------------------------------------------------------------------------------------------ references
def _processor_reference(d: Path, images, texts, model_class: str, text_kwargs: Dict) -> Tuple[torch.Tensor, ...]:
    import transformers
    from transformers import AutoProcessor

    model = getattr(transformers, model_class).from_pretrained(d).eval()
    processor = AutoProcessor.from_pretrained(d)
    with torch.no_grad():
        img = _features(model.get_image_features(**processor(images=list(images), return_tensors="pt")))
        txt = _features(model.get_text_features(**processor(text=list(texts), return_tensors="pt", **text_kwargs)))
    return _norm(img), _norm(txt)


def reference_pair(d: Path, images, texts) -> Tuple[torch.Tensor, torch.Tensor]:
    """Taiyi-CLIP's model card: the CLIP model's ``get_image_features``; the text encoder's logits on the
    ``input_ids`` (here one text at a time: the card's batch of one)."""
    from transformers import BertForSequenceClassification, BertTokenizerFast, CLIPImageProcessor, CLIPModel

    clip = CLIPModel.from_pretrained(str(d) + "-clip").eval()
    processor = CLIPImageProcessor.from_pretrained(str(d) + "-clip")
    text_encoder = BertForSequenceClassification.from_pretrained(d).eval()
    tokenizer = BertTokenizerFast.from_pretrained(d)
    with torch.no_grad():
        img = _features(clip.get_image_features(**processor(images=list(images), return_tensors="pt")))
        txt = torch.cat([text_encoder(tokenizer([t], return_tensors="pt")["input_ids"]).logits for t in texts])
    return _norm(img), _norm(txt)


#: family case -> (builder, reference(d, images, texts))
CASES: Dict[str, Tuple[Callable[[Path], Path], Callable]] = {
    "clip": (build_clip, lambda d, i, t: _processor_reference(d, i, t, "CLIPModel", {"padding": True,
                                                                                     "truncation": True})),
    "metaclip2": (build_metaclip2, lambda d, i, t: _processor_reference(d, i, t, "MetaClip2Model",
                                                                        {"padding": True, "truncation": True})),
    "altclip": (build_altclip, lambda d, i, t: _processor_reference(d, i, t, "AltCLIPModel",
                                                                    {"padding": True, "truncation": True})),
    "siglip": (build_siglip, lambda d, i, t: _processor_reference(d, i, t, "SiglipModel",
                                                                  {"padding": "max_length", "truncation": True})),
    "siglip2-fixed": (build_siglip2_fixed, lambda d, i, t: _processor_reference(
        d, i, t, "SiglipModel", {"padding": "max_length", "max_length": 64, "truncation": True})),
    "siglip2-naflex": (build_siglip2_naflex, lambda d, i, t: _processor_reference(d, i, t, "Siglip2Model", {})),
    "chinese-clip": (build_chinese_clip, lambda d, i, t: _processor_reference(
        d, i, t, "ChineseCLIPModel", {"padding": True, "truncation": True, "max_length": 52})),
    "pair": (build_pair, reference_pair),
}


def reference_open_clip(d: Path, images, texts) -> Tuple[torch.Tensor, torch.Tensor]:
    """open_clip's README: ``create_model_and_transforms`` + ``get_tokenizer``, ``encode_*`` normalised."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{d}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{d}")
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]))
        txt = model.encode_text(tokenizer(list(texts)))
    return _norm(img), _norm(txt)


def strict_ranks(img: torch.Tensor, txt: torch.Tensor, image_to_texts: Sequence[Sequence[int]],
                 text_to_images: Sequence[Sequence[int]]) -> Dict[str, List[int]]:
    """A plain loop: a query's rank = the number of non-positive candidates scoring at least its best positive."""
    s = img @ txt.T
    out: Dict[str, List[int]] = {"i2t": [], "t2i": []}
    for name, scores, positives in (("i2t", s, image_to_texts), ("t2i", s.T, text_to_images)):
        for q, pos in enumerate(positives):
            row = scores[q].tolist()
            if not pos:
                out[name].append(-1)
                continue
            best = max(row[p] for p in pos)
            out[name].append(sum(1 for c, v in enumerate(row) if c not in set(pos) and v >= best))
    return out
