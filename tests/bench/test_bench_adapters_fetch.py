"""Registered names of the new families are fetched by name like the others: the real ``models/weights.json``
entries (hub ids, revisions, file names) served by a loopback Hugging Face endpoint holding tiny models of the
same layout; ``ccmb-bench run -m NAME`` fetches them into ``$CCMB_HOME/models/NAME/`` and evaluates."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ccmb_bench.cli import main
from tests.bench.adapter_models import build_clip, build_pair, build_siglip2_fixed
from tests.fetch.fetch_helpers import LoopbackServer, Served


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("CCMB_HOME", str(tmp_path / "home"))
    for var in ("CCMB_OFFLINE", "CCMB_MIRRORS", "CCMB_GDRIVE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CCMB_FETCH_TIMEOUT", "3")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with LoopbackServer() as state:
        monkeypatch.setenv("HF_ENDPOINT", state.base)
        yield state


def serve_entry(server, name: str, local: Path, renames=None) -> None:
    """Serve, at the URLs of ``name``'s weights.json sources, the file of ``local`` each one becomes."""
    from models import hub

    renames = renames or {}
    for spec in hub.artifact(name).files:
        src = spec.sources[0]
        path = local / renames.get(spec.name, spec.name)
        if spec.name.endswith(".bin"):  # the official repos hold pickled state dicts
            from safetensors.torch import load_file

            buf = io.BytesIO()
            torch.save(load_file(str(path.with_name("model.safetensors"))), buf)
            body = buf.getvalue()
        else:
            body = path.read_bytes() if path.is_file() else b"{}"
        server.files[f"/{src.repo}/resolve/{src.revision}/{src.file}"] = Served(body)


def _run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def test_taiyi_pair_fetched_by_name_and_run(hub_server, bench_root, tmp_path):
    d = build_pair(tmp_path / "taiyi")
    serve_entry(hub_server, "taiyi-clip-roberta-large-326m", d)
    res = _run("-m", "taiyi-clip-roberta-large-326m", "-d", "flickr30k-cna", "-r", bench_root, "-o", tmp_path / "o",
               "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    folder = tmp_path / "home" / "models" / "taiyi-clip-roberta-large-326m"
    assert {"pytorch_model.bin", "vision_config.json", "model.vision.safetensors", "vocab.txt"} <= \
        {p.name for p in folder.iterdir()}
    assert hub_server.requests_for("/IDEA-CCNL/Taiyi-CLIP-Roberta-large-326M-Chinese/resolve/"
                                   "2d54979689151036d4624e20e5f104cf73eadcf1/pytorch_model.bin")
    assert hub_server.requests_for("/openai/clip-vit-large-patch14/resolve/main/model.safetensors")
    result = json.loads(next((tmp_path / "o" / "results").glob("taiyi*.json")).read_text(encoding="utf-8"))
    assert result["model_kind"] == "pair" and result["metrics"]["t2i_queries"] > 0


def test_siglip2_fetched_by_name_and_run(hub_server, bench_root, tmp_path):
    d = build_siglip2_fixed(tmp_path / "sig")
    serve_entry(hub_server, "siglip2-so400m-patch16-256", d)
    res = _run("-m", "siglip2-so400m-patch16-256", "-d", "icm", "-r", bench_root, "-o", tmp_path / "o",
               "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    result = json.loads(next((tmp_path / "o" / "results").glob("siglip2*.json")).read_text(encoding="utf-8"))
    assert result["model_kind"] == "siglip" and 0 <= result["metrics"]["AUC"] <= 100


def test_missing_weights_say_how_to_fetch(bench_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CCMB_HOME", str(tmp_path / "home"))
    res = _run("-m", "altclip", "-d", "icm", "-r", bench_root, "-o", tmp_path / "o", "--no-fetch")
    assert res.exit_code == 1 and "ccmb fetch model altclip" in res.output and "Traceback" not in res.output
    assert "--revision 5bd7aeb416ce2d4ca223baa8fa119f15abea5ffb" in res.output


def test_every_registered_name_has_a_weights_entry_with_the_same_hub_and_revision():
    from ccmb_bench.adapters import MODELS
    from models import hub

    names = set(hub.weights_names())
    for spec in MODELS.values():
        assert spec.name in names, spec.name
        if not spec.hub:
            continue
        sources = [s for f in hub.artifact(spec.name).files for s in f.sources]
        own = [s for s in sources if getattr(s, "repo", None) == spec.hub]
        assert own, spec.name
        assert {s.revision for s in own} == {spec.revision or "main"}, spec.name


def test_reference_rows_of_registered_names_exist():
    """Every ``reference`` of registry.json names rows of paper_results.json (``ccmb-bench models`` shows them)."""
    from ccmb_bench.adapters import MODELS, reference_rows

    for spec in MODELS.values():
        for model in spec.reference:
            assert any(r["model"] == model for r in reference_rows(spec)), (spec.name, model)
    altclip = reference_rows(MODELS["altclip"])
    assert {(r["dataset"], r["setting"]) for r in altclip} == {("flickr30k-cn", "zero-shot"), ("coco-cn", "zero-shot")}


def test_clip_registered_name_from_the_hugging_face_cache_name(tmp_path, monkeypatch):
    """A directory holding a CLIPModel loads through the clip family by its model_type."""
    from ccmb_bench.adapters import load_adapter

    d = build_clip(tmp_path / "c")
    a = load_adapter(str(d))
    assert a.kind == "clip" and a.max_len == 32
    assert a.encode_texts(["红色的圆形", "红色的圆形"])["embeds"].shape == (2, 16)
