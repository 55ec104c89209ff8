"""Fetch by name end to end on loopback: `ccmb fetch model/dataset`, the registries, and the implicit fetch of
`ccmb-bench run` (a tiny R2D2 served as an "official" checkpoint, a MUGE-layout zip served as a Hugging Face
dataset) including --no-fetch and the manual steps of sets behind a login."""
from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from click.testing import CliRunner

from ccmb.synthetic import all_items, jpeg_bytes, render
from fetch_helpers import Served, make_zip, sha256

ITEMS = all_items()


def _muge_zip() -> bytes:
    imgs = "".join(f"{200 + k}\t{base64.b64encode(jpeg_bytes(render(ITEMS[k], size=40, seed=k))).decode()}\n"
                   for k in range(10))  # Chinese-CLIP's evaluation (the official protocol) needs 10 images
    texts = "".join(json.dumps({"text_id": t, "text": ITEMS[t % 5].query + str(t), "image_ids": [200 + t % 5]},
                               ensure_ascii=False) + "\n" for t in range(7))
    return make_zip({"MUGE/valid_imgs.tsv": imgs.encode(), "MUGE/valid_texts.jsonl": texts.encode()})


@pytest.fixture
def registries(server, home, hf_online, monkeypatch, tmp_path):
    """Point models.hub and ccmb.datasets.sources at the loopback server: a tiny R2D2 behind a fake Google Drive
    id, its vocab.txt on a plain mirror, MUGE.zip as a Hugging Face dataset file."""
    import models
    from ccmb.datasets import sources
    from ccmb_bench import adapters
    from models import hub
    from models.tokenizer import write_test_vocab

    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny")
    buf = io.BytesIO()
    torch.save({"model": model.state_dict()}, buf)
    (tmp_path / "vocab").mkdir()
    vocab = write_test_vocab(tmp_path / "vocab").read_bytes()
    server.gdrive["TINYID"] = ("r2d2_tiny.pth", Served(buf.getvalue()))
    server.files["/raw/vocab.txt"] = Served(vocab)
    server.files["/datasets/org/chinese-clip-eval/resolve/main/MUGE.zip"] = Served(_muge_zip())
    monkeypatch.setenv("CCMB_GDRIVE_URL", server.base + "/uc?id={id}")
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    registry = {
        "files": {"vocab.txt": {"name": "vocab.txt", "size": len(vocab), "sha256": sha256(vocab),
                                "sources": [{"url": server.base + "/raw/vocab.txt"}]}},
        "models": {"r2d2-tinyhub": {"config": "r2d2-tiny", "keys": "r2d2-tiny", "description": "tiny",
                                    "checkpoint": {"name": "r2d2_tiny.pth", "size": None, "sha256": None,
                                                   "sources": [{"gdrive": "TINYID"}]},
                                    "tokenizer": "vocab.txt", "manual": "ask the maintainers"}}}
    keys = {"r2d2-tiny": {k: list(v.shape) for k, v in model.state_dict().items()}}
    monkeypatch.setattr(hub, "_registry", lambda: registry)
    monkeypatch.setattr(hub, "official_keys", lambda: keys)
    entries = json.loads(sources.SOURCES_FILE.read_text(encoding="utf-8"))["datasets"]
    entries["muge"]["files"][0]["sources"] = [{"hf": "org/chinese-clip-eval", "file": "MUGE.zip",
                                               "repo_type": "dataset"}]
    monkeypatch.setattr(sources, "_entries", lambda: entries)
    monkeypatch.setitem(adapters.MODELS, "r2d2-tinyhub",
                        adapters.ModelSpec("r2d2-tinyhub", "r2d2", "tiny", "", config="r2d2-tiny"))
    return {"model": model, "registry": registry}


def _ccmb(*args):
    from ccmb.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _bench(*args):
    from ccmb_bench.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_fetch_model_by_name_then_offline(registries, server, home, monkeypatch):
    res = _ccmb("fetch", "model", "r2d2-tinyhub")
    assert res.exit_code == 0, res.output
    folder = home / "models" / "r2d2-tinyhub"
    assert (folder / "r2d2_tiny.pth").is_file() and (folder / "vocab.txt").is_file()
    import models

    loaded = models.load_model("r2d2-tiny", folder / "r2d2_tiny.pth")
    ref = registries["model"].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items() if k in ref)
    monkeypatch.setenv("CCMB_OFFLINE", "1")
    n = len(server.log)
    res = _ccmb("fetch", "model", "r2d2-tinyhub")
    assert res.exit_code == 0 and "cached, verified" in res.output and len(server.log) == n


def test_fetch_model_with_missing_key_fails_and_names_it(registries, server, home):
    sd = registries["model"].state_dict()
    del sd["itm_head.weight"]
    buf = io.BytesIO()
    torch.save({"model": sd}, buf)
    server.gdrive["TINYID"] = ("r2d2_tiny.pth", Served(buf.getvalue()))
    res = _ccmb("fetch", "model", "r2d2-tinyhub")
    assert res.exit_code == 1 and "itm_head.weight" in res.output and "ask the maintainers" in res.output
    assert not (home / "models" / "r2d2-tinyhub" / "r2d2_tiny.pth").exists()


def test_fetch_dataset_unpacks_into_the_root(registries, home, tmp_path):
    from ccmb import datasets as ds

    root = tmp_path / "data"
    res = _ccmb("fetch", "dataset", "muge", "--root", root)
    assert res.exit_code == 0, res.output
    assert "ccmb datasets verify muge --root" in res.output
    data = ds.load_dataset("muge", root)
    assert len(data.texts) == 7 and len(data.image_ids) == 10
    assert (home / "downloads" / "datasets" / "muge" / "MUGE.zip").is_file()  # kept for offline re-unpacking
    res = _ccmb("fetch", "dataset", "muge", "--root", root, "--offline")
    assert res.exit_code == 0 and "already in place" in res.output
    import shutil

    shutil.rmtree(root / "MUGE")  # offline: unpacked again from the cached archive
    res = _ccmb("fetch", "dataset", "muge", "--root", root, "--offline")
    assert res.exit_code == 0 and "unpacked" in res.output and len(ds.load_dataset("muge", root).texts) == 7


def test_manual_dataset_prints_the_steps(home, tmp_path):
    res = _ccmb("fetch", "dataset", "icr", "--root", tmp_path)
    assert res.exit_code == 1
    for part in ("https://zero.so.com", "ICR/val/long_itr_val.json", f"ccmb datasets verify icr --root {tmp_path}"):
        assert part in res.output
    res = _ccmb("fetch", "dataset", "zero")
    assert "pan.baidu.com" in res.output and "iau8" in res.output


def test_fetch_list_json():
    res = _ccmb("fetch", "list", "--json")
    data = json.loads(res.output)
    names = {r["name"] for r in data["models"]}
    assert {"r2d2-vitl14", "prd2-vitl14", "r2d2-vitb16"} <= names
    vitl = next(r for r in data["models"] if r["name"] == "r2d2-vitl14")
    assert vitl["files"][0]["sources"] == [{"gdrive": "18Fd3vGvj0Dz8rPlxROxugjZaF8Z4jf7g"}]
    muge = next(r for r in data["datasets"] if r["name"] == "muge")
    assert muge["fetchable"] and muge["files"][0]["sources"][0]["hf"] == "OFA-Sys/chinese-clip-eval"


def test_bench_run_fetches_model_and_data(registries, home, tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    res = _bench("run", "-m", "r2d2-tinyhub", "-d", "muge", "-r", root, "-o", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    result = json.loads(next((out / "results").glob("r2d2-tinyhub__*__muge__*.json")).read_text())
    assert result["dataset"] == "muge" and 0 <= result["metrics"]["t2i_R@1"] <= 100
    assert (home / "models" / "r2d2-tinyhub" / "r2d2_tiny.pth").is_file() and (root / "MUGE").is_dir()


def test_bench_run_no_fetch(registries, server, home, tmp_path):
    res = _bench("run", "-m", "r2d2-tinyhub", "-d", "muge", "-r", tmp_path, "--no-fetch")
    assert res.exit_code == 1 and "--no-fetch" in res.output and "ccmb fetch model r2d2-tinyhub" in res.output
    assert not server.log


def test_chinese_clip_by_name_from_hf_files(server, home, monkeypatch, tmp_path):
    """A transformers-format Chinese-CLIP (pytorch_model.bin, vocab.txt only, as the official repos) fetched file by
    file through HF_ENDPOINT, then loaded by ccmb-bench as a registered name."""
    from transformers import ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    from ccmb_bench import adapters
    from models import hub
    from models.tokenizer import write_test_vocab

    src = tmp_path / "src"
    src.mkdir()
    vocab = write_test_vocab(src)
    torch.manual_seed(0)
    cfg = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(vocab.read_text(encoding="utf-8").splitlines()), hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=32, patch_size=8), projection_dim=16)
    model = ChineseCLIPModel(cfg).eval()
    model.save_pretrained(src)
    ChineseCLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}) \
        .save_pretrained(src)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    repo = "/org/cclip-tiny/resolve/main/"
    server.files[repo + "pytorch_model.bin"] = Served(buf.getvalue())
    for name in ("config.json", "preprocessor_config.json", "vocab.txt"):
        server.files[repo + name] = Served((src / name).read_bytes())
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    registry = {"files": {}, "models": {"chinese-clip-tiny": {
        "kind": "chinese-clip", "description": "tiny", "manual": "",
        "files": [{"name": n, "sources": [{"hf": "org/cclip-tiny", "file": n}],
                   **({"check": "state_dict"} if n.endswith(".bin") else {})}
                  for n in ("pytorch_model.bin", "vocab.txt", "preprocessor_config.json", "config.json")]}}}
    monkeypatch.setattr(hub, "_registry", lambda: registry)
    monkeypatch.setitem(adapters.MODELS, "chinese-clip-tiny",
                        adapters.ModelSpec("chinese-clip-tiny", "chinese-clip", "tiny", "", hub="org/cclip-tiny"))
    res = _bench("run", "-m", "chinese-clip-tiny", "-d", "muge", "-r", tmp_path, "--no-fetch")
    assert res.exit_code == 1 and "ccmb fetch model chinese-clip-tiny" in res.output
    import huggingface_hub.constants as hc

    with monkeypatch.context() as m:  # online for our fetch only (the adapter's hub-name path stays offline)
        m.setattr(hc, "HF_HUB_OFFLINE", False)
        res = _ccmb("fetch", "model", "chinese-clip-tiny")
    assert res.exit_code == 0, res.output
    folder = home / "models" / "chinese-clip-tiny"
    adapter = adapters.load_adapter("chinese-clip-tiny")
    assert adapter.kind == "chinese-clip" and adapter.fingerprint != "random"
    emb = adapter.encode_texts(["一只猫"])["embeds"]
    with torch.no_grad():
        ref = model.get_text_features(**{k: v for k, v in adapter.tokenizer(["一只猫"], return_tensors="pt").items()
                                         if k in ("input_ids", "attention_mask", "token_type_ids")})
    ref = getattr(ref, "pooler_output", ref)
    assert torch.allclose(emb, torch.nn.functional.normalize(ref.float(), dim=-1), atol=1e-5)
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
