"""init_from_hf: initialise from local (tiny, random) Hugging Face CLIP and BERT directories."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, CLIPVisionModel

import models
from models.r2d2 import bert_config, clip_vision_config


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    cfg = models.get_config("r2d2-tiny")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(1)
    vision = CLIPVisionModel(clip_vision_config(cfg))
    vision.save_pretrained(root / "clip-vision")
    full = CLIPModel(CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "vocab_size": 99},
                                vision_config=clip_vision_config(cfg).to_dict(), projection_dim=16))
    full.save_pretrained(root / "clip-full")
    text = BertModel(bert_config(cfg))
    text.save_pretrained(root / "bert")
    return cfg, root, vision, full, text


def _same(a, b):
    return torch.equal(a.detach(), b.detach())


def test_init_from_vision_and_bert_dirs(hf_dirs):
    cfg, root, vision, _, text = hf_dirs
    model = models.init_from_hf("r2d2-tiny", vision_dir=root / "clip-vision", text_dir=root / "bert")
    for k, v in vision.state_dict().items():
        assert _same(model.visual_encoder.state_dict()[k], v), k
    for k, v in text.state_dict().items():
        assert _same(model.text_encoder.state_dict()[k], v), k
    top = cfg.text_layers - cfg.joint_layers
    for enc in (model.text_joint_layer, model.img_joint_layer):
        for i, layer in enumerate(enc.encoder.layer):
            src = text.encoder.layer[top + i]
            assert _same(layer.attention.self.query.weight, src.attention.self.query.weight)
            assert _same(layer.output.LayerNorm.weight, src.output.LayerNorm.weight)
            assert _same(layer.intermediate.dense.bias, src.intermediate.dense.bias)
            assert not _same(layer.crossattention.self.query.weight, src.attention.self.query.weight)
    assert float(model.temp.detach()) == pytest.approx(cfg.temp_init)


def test_init_from_a_full_clip_model_dir(hf_dirs):
    cfg, root, _, full, _ = hf_dirs
    model = models.init_from_hf(cfg, vision_dir=root / "clip-full", text_dir=root / "bert")
    ours = model.visual_encoder.state_dict()
    assert _same(ours["embeddings.patch_embedding.weight"], full.vision_model.embeddings.patch_embedding.weight)
    assert _same(ours["encoder.layers.1.mlp.fc2.weight"], full.vision_model.encoder.layers[1].mlp.fc2.weight)


def test_init_rejects_mismatched_dims(hf_dirs, tmp_path):
    cfg, root, *_ = hf_dirs
    BertModel(BertConfig(vocab_size=1024, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "bert32")
    with pytest.raises(models.CheckpointError, match=r"bert32.*hidden_size: 32 \(ours 40\)"):
        models.init_from_hf(cfg, vision_dir=root / "clip-vision", text_dir=tmp_path / "bert32")
    with pytest.raises(models.CheckpointError, match="nowhere"):
        models.init_from_hf(cfg, vision_dir=tmp_path / "nowhere", text_dir=root / "bert")


def test_init_from_legacy_vision_layout_and_rejects_incomplete(hf_dirs, tmp_path):
    import shutil

    from safetensors.torch import save_file

    cfg, root, vision, _, _ = hf_dirs
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(root / "clip-vision" / "config.json", legacy / "config.json")
    state = {f"vision_model.{k}": v.contiguous() for k, v in vision.state_dict().items()}
    save_file(state, str(legacy / "model.safetensors"))
    model = models.init_from_hf(cfg, vision_dir=legacy, text_dir=root / "bert")
    assert _same(model.visual_encoder.embeddings.class_embedding, vision.embeddings.class_embedding)
    del state["vision_model.encoder.layers.1.mlp.fc1.weight"]
    save_file(state, str(legacy / "model.safetensors"))
    with pytest.raises(models.CheckpointError, match="legacy: CLIP vision weights missing.*layers.1.mlp.fc1"):
        models.init_from_hf(cfg, vision_dir=legacy, text_dir=root / "bert")
