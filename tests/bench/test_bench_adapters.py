"""The adapters package: kind -> family table, one-file families, load errors that name the file."""
from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

import ccmb_bench.adapters as adapters
from ccmb_bench.adapters import FAMILIES, MODELS, ModelAdapter, ModelLoadError, ModelSpec, load_adapter
from ccmb_bench.cli import main


def test_every_registered_model_belongs_to_a_family():
    assert set(FAMILIES) >= {"r2d2", "chinese-clip", "clip", "altclip", "siglip", "pair", "open-clip"}
    assert {s.kind for s in MODELS.values()} <= set(FAMILIES)
    assert list(MODELS)[:3] == ["r2d2-vitl14", "r2d2-vitb16", "prd2-vitl14"]
    # the historical import paths keep working
    from ccmb_bench.adapters import ChineseCLIPAdapter, R2D2Adapter  # noqa: F401
    from ccmb_bench.adapters import MissingCheckpointError, UnknownModelError  # noqa: F401


def test_a_new_family_is_one_module_and_one_line(monkeypatch, tmp_path):
    """A family module registered in FAMILIES is dispatched for its names and the folders it claims."""
    fam = types.ModuleType("toy_family")

    class ToyAdapter(ModelAdapter):
        kind = "toy"

        def __init__(self, name, where):
            self.name, self.where = name, where

    fam.KIND = "toy"
    fam.DIRECTORY = "a folder with toy.json"
    fam.SPECS = (ModelSpec("toy-1", "toy", "a toy model"),)
    fam.load_registered = lambda spec, checkpoint, device, tokenizer: ToyAdapter(spec.name, checkpoint)
    fam.claims_directory = lambda path: (path / "toy.json").is_file()
    fam.load_directory = lambda path, checkpoint, device, tokenizer: ToyAdapter(path.name, path)
    monkeypatch.setitem(FAMILIES, "toy", fam)
    monkeypatch.setitem(MODELS, "toy-1", fam.SPECS[0])
    a = load_adapter("toy-1", checkpoint="/w")
    assert isinstance(a, ToyAdapter) and a.name == "toy-1" and a.where == "/w"
    d = tmp_path / "mytoy"
    d.mkdir()
    (d / "toy.json").write_text("{}", encoding="utf-8")
    b = load_adapter(str(d))
    assert isinstance(b, ToyAdapter) and b.name == "mytoy"
    assert any(r["name"] == "toy-1" and r["kind"] == "toy" for r in adapters.list_models())


def test_unknown_directory_names_what_is_expected(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    with pytest.raises(adapters.UnknownModelError, match="not a model directory"):
        load_adapter(str(tmp_path))


def _truncate(path: Path, keep: int = 200) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("where", ["directory", "config+checkpoint"])
def test_truncated_r2d2_safetensors_is_a_clear_error(where, tiny_models, bench_root, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(tiny_models.prd2, d)
    _truncate(d / "model.safetensors")
    with pytest.raises(ModelLoadError) as info:
        if where == "directory":
            load_adapter(str(d))
        else:
            load_adapter("prd2-tiny", checkpoint=str(d / "model.safetensors"), tokenizer=str(d))
    assert str(d / "model.safetensors") in str(info.value)
    res = CliRunner().invoke(main, ["run", "-m", str(d), "-d", "icm", "-r", str(bench_root), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "Error:" in res.output and str(d / "model.safetensors") in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)


def test_truncated_chinese_clip_weights_name_the_folder(tiny_models, bench_root, tmp_path):
    d = tmp_path / "cclip-broken"
    shutil.copytree(tiny_models.cclip, d)
    weights = next(p for p in d.iterdir() if p.suffix in (".safetensors", ".bin"))
    _truncate(weights)
    with pytest.raises(ModelLoadError, match="cclip-broken"):
        load_adapter(str(d))
    res = CliRunner().invoke(main, ["run", "-m", str(d), "-d", "icm", "-r", str(bench_root), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "cclip-broken" in res.output and "Traceback" not in res.output


def test_module_is_a_package():
    assert Path(adapters.__file__).name == "__init__.py"
    assert "ccmb_bench.adapters.r2d2" in sys.modules and "ccmb_bench.adapters.chinese_clip" in sys.modules


def test_the_registry_is_readable_without_torch():
    """Names, families and plug-in entry points are listed, and `ccmb-bench models` runs, without importing any
    model library (fast name checks before torch)."""
    import subprocess

    probe = ("import sys, json; import ccmb_bench.adapters as a; names = a.model_names(); "
             "from click.testing import CliRunner; from ccmb_bench.cli import main; "
             "assert CliRunner().invoke(main, ['models']).exit_code == 0; "
             "print(json.dumps([len(names), a.is_model_name('altclip'), a.is_model_name('open_clip:ViT-B-32'), "
             "a.is_model_name('nope'), sorted(m for m in ('torch', 'transformers', 'open_clip', 'PIL', 'numpy') "
             "if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    n, altclip, oc, nope, heavy = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert n >= len(MODELS) and altclip and oc and not nope
    assert heavy == []


def test_a_trainer_run_directory_loads_its_model_folder(tiny_models, tmp_path):
    """``ccmb-bench run --model RUN_DIR``: the trainer's run folder has no config.json of its own; its model/
    folder (with the vocab.txt the trainer copies) is used, with no --tokenizer."""
    from ccmb_bench.adapters import run_model_dir

    run = tmp_path / "run"
    shutil.copytree(tiny_models.r2d2, run / "model")
    assert run_model_dir(run) == run / "model"
    adapter = load_adapter(str(run))
    assert adapter.encode_texts(["红色圆形"])["embeds"].shape[0] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="not a model directory"):
        load_adapter(str(empty))


def test_the_makefile_installs_the_open_clip_extra_of_pyproject():
    """`make install` puts the open-clip extra beside the venv with --no-deps: the same requirements as
    pyproject's extra (torchvision pinned to the torch the Makefile installs), plus ftfy's wcwidth."""
    import re

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        pytest.skip("tomllib needs Python 3.11")
    root = Path(__file__).resolve().parents[2]
    extra = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    make = (root / "Makefile").read_text(encoding="utf-8")
    torch_pin = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", make, re.M).group(1)
    vision_pin = re.search(r"^TORCHVISION\s*\?=\s*torchvision==(\S+)", make, re.M).group(1)
    pkgs = re.search(r"^OPEN_CLIP_PKGS\s*\?=\s*(.+)$", make, re.M).group(1).replace("'", "").split()
    pkgs = [p.replace("$(TORCHVISION)", f"torchvision=={vision_pin}") for p in pkgs]
    for req in extra["open-clip"]:
        name = re.split(r"[<>=!~ ]", req, 1)[0]
        assert any(p.startswith(name) for p in pkgs), (req, pkgs)
    assert "wcwidth" in pkgs
    pairs = {"2.13": "0.28"}  # torch minor -> torchvision minor
    assert vision_pin.startswith(pairs[".".join(torch_pin.split(".")[:2])])
    assert f"torchvision=={vision_pin.rsplit('.', 1)[0]}.*" in extra["open-clip"]
    assert "--no-deps" in make and "$(OPEN_CLIP_DIR)" in make


def test_texts_are_batched_longest_first_and_returned_in_input_order(tiny_models):
    """``encode_texts`` batches texts sorted by length (little padding per batch) and puts embeddings, hidden
    states and masks back in the input order: each equals encoding that text alone (up to float rounding)."""
    import torch

    from ccmb_bench.cache import EmbeddingCache
    from ccmb_bench.tasks.encode import encode_texts

    adapter = load_adapter(str(tiny_models.r2d2))
    seen = []
    plain = adapter.encode_texts

    def counting(texts, with_hidden=False):
        seen.append([len(t) for t in texts])
        return plain(texts, with_hidden=with_hidden)

    adapter.encode_texts = counting
    texts = [("红色圆形" * 6) if k % 2 else f"猫{k}" for k in range(12)]
    cache = EmbeddingCache(None, adapter.name, adapter.fingerprint, "t", "t")
    out = encode_texts(adapter, texts, 4, cache, with_hidden=True)
    assert [len(b) for b in seen] == [4, 4, 4]
    assert sum(seen, []) == sorted(map(len, texts), reverse=True)  # long texts together, short ones together
    adapter.encode_texts = plain
    for k, text in enumerate(texts):
        alone = adapter.encode_texts([text], with_hidden=True)
        assert torch.allclose(out["embeds"][k], alone["embeds"][0], atol=1e-5)
        if "hidden" in alone:
            n = int(alone["mask"][0].sum())
            assert int(out["mask"][k].sum()) == n
            assert torch.allclose(out["hidden"][k, :n].float(), alone["hidden"][0, :n].float(), atol=1e-3)
