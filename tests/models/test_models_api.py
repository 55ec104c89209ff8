"""The model API: build, save/load round trip, PRD2 behaviour, configs, training-side methods."""
from __future__ import annotations

import json

import pytest
import torch

import models
from models.config import R2D2Config


def _inputs(cfg, n_img=3, n_txt=4, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n_img, 3, cfg.image_size, cfg.image_size, generator=g)
    ids = torch.randint(5, cfg.vocab_size, (n_txt, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(n_txt, length, dtype=torch.long)
    for i in range(n_txt):
        mask[i, 2 + i:] = 0
    ids[mask == 0] = 0
    return pixels, ids, mask


def test_shipped_configs_and_families():
    names = models.list_configs()
    for name in ["r2d2-vitl14", "r2d2-vitb16", "prd2-vitl14", "r2d2-tiny", "prd2-tiny"]:
        assert name in names
        cfg = models.get_config(name)
        assert cfg.name == name and cfg.family == name.split("-")[0]
    big = models.get_config("r2d2-vitl14")
    assert (big.vision_width, big.vision_layers, big.vision_heads, big.vision_mlp) == (1024, 24, 16, 4096)
    assert (big.text_width, big.vocab_size, big.max_position, big.joint_layers) == (768, 21128, 512, 6)
    assert big.temp_init == pytest.approx(0.07) and big.max_text_len == 64


def test_config_errors_name_the_source(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"image_size": 32, "patch_sise": 8}))
    with pytest.raises(models.ConfigError, match=r"bad.json.*patch_sise"):
        models.get_config(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "image_size": 32,\n  oops\n}')
    with pytest.raises(models.ConfigError, match=r"broken.json:3"):
        models.get_config(broken)
    with pytest.raises(models.ConfigError, match="unknown config"):
        models.get_config("r2d2-vitz99")
    with pytest.raises(models.ConfigError, match="multiple of patch_size"):
        R2D2Config(image_size=30, patch_size=8)


def test_save_and_load_round_trip(tmp_path):
    model = models.build_model("r2d2-tiny").eval()
    with torch.no_grad():
        model.temp.fill_(0.05)
    out = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = models.load_model(tmp_path / "ckpt")
    assert loaded.config == model.config and loaded.load_report.ok and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    pixels, ids, mask = _inputs(model.config)
    with torch.no_grad():
        a = model.encode_image(pixels)
        b = loaded.encode_image(pixels)
    assert torch.equal(a, b)
    # a config plus a bare safetensors file works too
    again = models.load_model("r2d2-tiny", tmp_path / "ckpt" / "model.safetensors")
    assert float(again.temp.detach()) == pytest.approx(0.05)


def test_load_model_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(models.CheckpointError, match="no weights given"):
        models.load_model("r2d2-tiny")
    (tmp_path / "config.json").write_text(json.dumps(models.get_config("r2d2-tiny").to_dict()))
    with pytest.raises(models.CheckpointError, match="no model.safetensors"):
        models.load_model(tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(models.CheckpointError, match="junk.pth"):
        models.load_model("r2d2-tiny", junk)


def test_prd2_has_no_cross_encoders():
    model = models.build_model("prd2-tiny").eval()
    assert not model.has_cross_encoders and not hasattr(model, "itm_head")
    pixels, ids, mask = _inputs(model.config)
    with torch.no_grad():
        ie, ih = model.encode_image(pixels, return_hidden=True)
        te, th = model.encode_text(ids, mask, return_hidden=True)
    assert torch.allclose(ie.norm(dim=-1), torch.ones(len(ie)), atol=1e-5)
    for call in (lambda: model.rank(ie, ih, te, th, mask), lambda: model.match_prob(ih[:1], th[:1], mask[:1]),
                 lambda: model.itm_logits(ih[:1], th[:1], mask[:1])):
        with pytest.raises(models.NoCrossEncoderError, match="PRD2"):
            call()


def test_training_step_reaches_every_parameter():
    model = models.build_model("r2d2-tiny").train()
    pixels, ids, mask = _inputs(model.config, n_img=4, n_txt=4)
    out = model(pixels, ids, mask)
    logits = out["image_embeds"] @ out["text_embeds"].T / model.temp
    itc = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    t_logits, i_logits = model.itm_logits(out["image_hidden"], out["text_hidden"], mask)
    itm = torch.nn.functional.cross_entropy(t_logits, torch.ones(4, dtype=torch.long)) + \
        torch.nn.functional.cross_entropy(i_logits, torch.ones(4, dtype=torch.long))
    (itc + itm).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None
               and not n.startswith(("visual_encoder.post_layernorm", "text_encoder.pooler"))
               and "token_type" not in n]
    assert no_grad == []


def test_rank_is_independent_of_chunking_and_padding():
    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny").eval()
    pixels, ids, mask = _inputs(model.config, n_img=6, n_txt=5)
    with torch.no_grad():
        ie, ih = model.encode_image(pixels, return_hidden=True)
        te, th = model.encode_text(ids, mask, return_hidden=True)
        # padded to 64 tokens as the official code does: same scores
        ids64 = torch.nn.functional.pad(ids, (0, 64 - ids.shape[1]))
        mask64 = torch.nn.functional.pad(mask, (0, 64 - mask.shape[1]))
        te64, th64 = model.encode_text(ids64, mask64, return_hidden=True)
    a = model.rank(ie, ih, te, th, mask, top_k=4, pair_batch_size=3)
    b = model.rank(ie, ih, te64, th64, mask64, top_k=4, pair_batch_size=1000)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5)
    i2t, t2i = a
    assert i2t.shape == (6, 5) and t2i.shape == (5, 6)
    assert ((i2t > -100).sum(1) == 4).all() and ((t2i > -100).sum(1) == 4).all()
    # the scored candidates are exactly the top-4 by cosine
    sims = ie @ te.T
    assert torch.equal((i2t > -100), torch.zeros_like(sims, dtype=torch.bool).scatter(1, sims.topk(4).indices, True))


def test_cls_only_last_layer_equals_full_forward():
    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny").eval()
    pixels, ids, mask = _inputs(model.config, n_img=4, n_txt=4)
    with torch.no_grad():
        _, ih = model.encode_image(pixels, return_hidden=True)
        _, th = model.encode_text(ids, mask, return_hidden=True)
        full = model.text_joint_layer(th, mask, ih, None)
        cls = model.text_joint_layer(th, mask, ih, None, cls_only=True)
        full_i = model.img_joint_layer(model.img_joint_proj(ih), None, th, mask)
        cls_i = model.img_joint_layer(model.img_joint_proj(ih), None, th, mask, cls_only=True)
    assert full.shape == (4, th.shape[1], 40) and cls.shape == (4, 1, 40)
    assert torch.allclose(full[:, :1], cls, atol=1e-6) and torch.allclose(full_i[:, :1], cls_i, atol=1e-6)
    # padding really is masked: changing padded hidden states changes nothing
    th2 = th.clone()
    th2[mask == 0] = 123.0
    with torch.no_grad():
        assert torch.allclose(model.match_prob(ih, th2, mask), model.match_prob(ih, th, mask), atol=1e-6)


def test_rank_under_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny").eval()
    pixels, ids, mask = _inputs(model.config, n_img=4, n_txt=5)
    with torch.no_grad():
        ie, ih = model.encode_image(pixels, return_hidden=True)
        te, th = model.encode_text(ids, mask, return_hidden=True)
        ref, _ = model.rank(ie, ih, te, th, mask, top_k=10)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = model.rank(ie, ih, te, th, mask, top_k=10)
    assert got.dtype == torch.float32 and (got - ref).abs().max() < 0.05


@pytest.mark.parametrize("joint_layers", [1, 3])
def test_rank_equals_brute_force_for_other_depths(joint_layers):
    torch.manual_seed(joint_layers)
    cfg = models.get_config("r2d2-tiny").to_dict()
    cfg.update(joint_layers=joint_layers, name=f"tiny-{joint_layers}")
    model = models.build_model(cfg).eval()
    pixels, ids, mask = _inputs(model.config, n_img=3, n_txt=4)
    with torch.no_grad():
        ie, ih = model.encode_image(pixels, return_hidden=True)
        te, th = model.encode_text(ids, mask, return_hidden=True)
        ii = torch.arange(3).repeat_interleave(4)
        jj = torch.arange(4).repeat(3)
        brute = model.match_prob(ih[ii], th[jj], mask[jj]).view(3, 4) + ie @ te.T
    i2t, t2i = model.rank(ie, ih, te, th, mask, top_k=10, pair_batch_size=5, cache_mb=0)
    assert torch.allclose(i2t, brute, atol=1e-5) and torch.allclose(t2i, brute.T, atol=1e-5)


def test_itm_logits_pairs_equals_itm_logits_per_pair():
    """The training path that runs one-sided parts once per item gives the per-pair logits and gradients."""
    import models as mdl

    torch.manual_seed(0)
    model = mdl.build_model("r2d2-tiny").eval()
    img = torch.randn(4, 17, 48, requires_grad=True)
    txt = torch.randn(3, 7, 40, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    ii, tt = torch.tensor([0, 1, 2, 3, 0, 2]), torch.tensor([0, 0, 1, 2, 2, 1])
    t1, i1 = model.itm_logits_pairs(img, txt, mask, ii, tt)
    (t1.sum() + 2 * i1.sum()).backward()
    g_img, g_txt = img.grad.clone(), txt.grad.clone()
    img.grad, txt.grad = None, None
    t2, i2 = model.itm_logits(img[ii], txt[tt], mask[tt])
    (t2.sum() + 2 * i2.sum()).backward()
    assert torch.allclose(t1, t2, atol=1e-5) and torch.allclose(i1, i2, atol=1e-5)
    assert torch.allclose(g_img, img.grad, atol=1e-5) and torch.allclose(g_txt, txt.grad, atol=1e-5)
