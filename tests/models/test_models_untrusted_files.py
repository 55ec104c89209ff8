"""A model's config.json and checkpoint from elsewhere are checked before anything is allocated or inflated:
sizes against the family's limits and a parameter budget (errors name config.json and the field), bounded
reading (size, nesting, UTF-8), and torch zip checkpoints whose members would inflate far past their size."""
from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch

import models
from ccmb.fetch import VerificationError, read_checkpoint_shapes
from ccmb.fetch.verify import check_checkpoint_archive
from models.config import LIMITS, ConfigError, R2D2Config, estimate_params, get_config

TINY = json.loads((Path(models.__file__).parent / "configs" / "r2d2-tiny.json").read_text(encoding="utf-8"))
HUGE = dict(TINY, vision_width=4096, vision_heads=64, vision_mlp=16384, vision_layers=64, text_width=4096,
            text_heads=64, text_mlp=16384, text_layers=64, vocab_size=250000)


def _folder(tmp_path, name, text):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(text if isinstance(text, str) else json.dumps(text), encoding="utf-8")
    return d


@pytest.mark.parametrize("name,value,field,reason", [
    ("zero", dict(TINY, vision_width=0), "vision_width", "outside the family's limits"),
    ("string", dict(TINY, text_layers="12"), "text_layers", "expected an integer"),
    ("negative", dict(TINY, vocab_size=-5), "vocab_size", "outside the family's limits"),
    ("float", dict(TINY, text_heads=4.0), "text_heads", "expected an integer"),
    ("bool", dict(TINY, joint_layers=True), "joint_layers", "expected an integer"),
    ("nested", dict(TINY, embed_dim={"a": 1}), "embed_dim", "expected an integer"),
    ("nan", dict(TINY, temp_init=float("nan")), "temp_init", "finite number"),
    ("too-big", dict(TINY, vision_layers=10_000), "vision_layers", "outside the family's limits"),
])
def test_bad_sizes_name_the_file_and_field(tmp_path, name, value, field, reason):
    d = _folder(tmp_path, name, value)
    with pytest.raises(ConfigError) as info:
        get_config(d)
    msg = str(info.value)
    assert str(d / "config.json") in msg and f"{field}: " in msg and reason in msg, msg


def test_over_the_parameter_budget_before_any_allocation(tmp_path, monkeypatch):
    d = _folder(tmp_path, "huge", HUGE)
    models.load_model  # noqa: B018 (imports torch and transformers before memory is traced)
    tracemalloc.start()
    with pytest.raises(ConfigError, match=r"config.json: about \d+\.\dB parameters .* exceed the budget"):
        models.load_model(d, checkpoint=tmp_path / "none.pth")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20  # nothing of the 28B parameters was allocated
    monkeypatch.setenv("CCMB_MAX_MODEL_PARAMS", "1e12")  # the budget is a setting
    assert estimate_params(get_config(d)) > 2.5e9


@pytest.mark.parametrize("name,text,reason", [
    ("deep", "[" * 100_000 + "]" * 100_000, "nested deeper than"),
    ("binary", "\udcff", "not UTF-8"),
    ("array", "[1, 2]", "must be a JSON object"),
    ("broken", '{\n"image_size": 32,\n', "config.json:3: invalid JSON"),
])
def test_unreadable_config_files(tmp_path, name, text, reason):
    d = tmp_path / name
    d.mkdir()
    data = text.encode("utf-8", "surrogateescape")
    (d / "config.json").write_bytes(data)
    with pytest.raises(ConfigError, match=reason):
        get_config(d)


def test_oversized_config_is_not_read(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    with open(d / "config.json", "wb") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MiB of zeros
    with pytest.raises(ConfigError, match="config of 67,108,864 bytes, more than the bound"):
        get_config(d)


def test_estimate_matches_built_models():
    for name in ("r2d2-tiny", "prd2-tiny"):
        cfg = get_config(name)
        real = sum(p.numel() for p in models.build_model(cfg).parameters())
        assert abs(estimate_params(cfg) - real) <= 0.01 * real
    for name in models.list_configs():  # the shipped configs stay inside the limits and the budget
        cfg = get_config(name)
        assert not cfg.problems()
        assert set(LIMITS) <= set(cfg.to_dict())
    assert R2D2Config().problems() == []


def test_bench_names_config_json_not_the_weights(tmp_path):
    """`ccmb-bench run --model DIR` with a hostile config.json: one error naming config.json and the field."""
    d = _folder(tmp_path, "zero", dict(TINY, vision_width=0))
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    (d / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    from ccmb_bench.adapters import ModelLoadError, load_adapter

    with pytest.raises(ModelLoadError, match=r"config.json: vision_width: 0"):
        load_adapter(str(d))
    deep = _folder(tmp_path, "deep", "[" * 50_000 + "]" * 50_000)
    out = subprocess.run([sys.executable, "-m", "ccmb_bench", "run", "-m", str(deep), "-d", "icr", "-r", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"Error: {deep / 'config.json'}: ")


# ---------------------------------------------------------------------------------------------- checkpoints
def _bomb(path: Path, inflated: int = 256 << 20) -> Path:
    """A real torch checkpoint plus one deflated member of ``inflated`` zero bytes (a few hundred KB on disk)."""
    torch.save({"model": {"w": torch.zeros(4, 4)}}, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{path.stem}/data/99", "w", force_zip64=True) as fh:
            chunk = b"\0" * (1 << 20)
            for _ in range(inflated >> 20):
                fh.write(chunk)
    return path


def test_a_checkpoint_that_would_inflate_is_refused_before_loading(tmp_path):
    bomb = _bomb(tmp_path / "bomb.pth")
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    with pytest.raises(models.CheckpointError) as info:
        models.read_state_dict(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(bomb) in str(info.value) and "inflate" in str(info.value)
    assert peak < 32 << 20  # refused from the zip directory: nothing inflated
    with pytest.raises(VerificationError, match="inflate"):
        read_checkpoint_shapes(bomb)  # ccmb fetch's key check refuses it too


def test_a_plain_checkpoint_passes_the_bound(tmp_path):
    good = tmp_path / "good.pth"
    state = {"w": torch.randn(64, 64)}
    torch.save({"model": state}, good)
    assert check_checkpoint_archive(good) >= 64 * 64 * 4
    assert torch.equal(models.read_state_dict(good)["w"], state["w"])
    legacy = tmp_path / "legacy.pth"  # not a zip: cannot inflate
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert check_checkpoint_archive(legacy) == legacy.stat().st_size
    with pytest.raises(VerificationError, match="inflate"):
        check_checkpoint_archive(good, max_bytes=1000)
