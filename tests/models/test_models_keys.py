"""Full-size configs match the official checkpoints' keys and shapes (built on the meta device)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import models
from models.loading import load_state_dict_into
from models.r2d2 import R2D2Model

KEYS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "official_r2d2_keys.json").read_text())


def _meta_state(shapes):
    return {k: torch.empty(s, device="meta", dtype=torch.int64 if k.endswith("position_ids") else torch.float32)
            for k, s in shapes.items()}


@pytest.mark.parametrize("name", ["r2d2-vitl14", "r2d2-vitb16", "prd2-vitl14"])
def test_full_size_config_loads_every_official_key(name):
    reference = KEYS[name]
    with torch.device("meta"):
        model = R2D2Model(models.get_config(name))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(k for k in ours if k not in reference) == []
    leftover = sorted(k for k in reference if k not in ours)
    assert all(models.is_ignorable_key(k) for k in leftover), leftover
    assert {k: ours[k] for k in ours} == {k: reference[k] for k in ours}
    report = load_state_dict_into(model, _meta_state(reference), source=name)
    assert report.ok and sorted(report.ignored) == leftover
    assert model.has_cross_encoders == name.startswith("r2d2")


def test_tiny_fixture_config_is_a_valid_config():
    cfg = models.get_config(Path(__file__).resolve().parents[1] / "fixtures" / "r2d2_official_tiny")
    assert cfg.name == "r2d2_official_tiny" and cfg.joint_layers == 2 and cfg.family == "r2d2"


def test_missing_keys_raise_and_name_them():
    model = models.build_model("r2d2-tiny")
    state = model.state_dict()
    del state["itm_head_i.weight"]
    with pytest.raises(models.CheckpointError, match="itm_head_i.weight"):
        load_state_dict_into(model, state, source="x.pth")


def test_unexpected_keys_raise_unless_not_strict():
    model = models.build_model("prd2-tiny")
    r2d2 = models.build_model("r2d2-tiny").state_dict()
    with pytest.raises(models.CheckpointError, match="unexpected keys.*itm_head"):
        load_state_dict_into(model, r2d2, source="r2d2.pth")
    report = load_state_dict_into(model, r2d2, source="r2d2.pth", strict=False)
    assert "itm_head.weight" in report.unexpected and not report.missing
    assert torch.equal(model.vision_proj.weight, r2d2["vision_proj.weight"])


def test_shape_mismatch_raises_with_shapes():
    model = models.build_model("r2d2-tiny")
    state = model.state_dict()
    state["vision_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(models.CheckpointError, match=r"vision_proj.weight: checkpoint \(3, 3\)"):
        load_state_dict_into(model, state, source="x.pth")


def test_official_format_variants_load(tmp_path):
    model = models.build_model("r2d2-tiny")
    state = model.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    torch.save(state, tmp_path / "bare.pt")
    for name in ("ddp.pth", "bare.pt"):
        loaded = models.load_model("r2d2-tiny", tmp_path / name)
        assert torch.equal(loaded.itm_head.weight, model.itm_head.weight), name
    torch.save({"model": {"x": 1}}, tmp_path / "odd.pth")
    with pytest.raises(models.CheckpointError, match="odd.pth"):
        models.load_model("r2d2-tiny", tmp_path / "odd.pth")
