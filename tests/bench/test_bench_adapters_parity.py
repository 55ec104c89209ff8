"""Parity of every adapter family with its own library, through ``ccmb-bench run --model DIR``.

For each family a tiny random model is built offline; ``ccmb-bench run`` evaluates it on the Flickr30k-CNA fixture
(6 images, 18 captions, strict protocol). The embeddings it cached must equal, within 1e-5, what the library
gives when used as its documentation shows (``tests/bench/adapter_models.py``), and the per-query ranks it wrote
must equal a plain loop over the library's own embeddings. open_clip runs in subprocesses with the open-clip
extra on ``PYTHONPATH`` (installed by the Makefile beside the venv), so this process never imports torchvision.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ccmb_bench.cli import main
from tests.bench.adapter_models import CASES, strict_ranks

ROOT = Path(__file__).resolve().parents[2]
DATASET = "flickr30k-cna"
TOL = 1e-5


def open_clip_path() -> Path:
    """The open-clip extra beside the venv (``make install``), or ``$CCMB_OPEN_CLIP_PATH``."""
    path = Path(os.environ.get("CCMB_OPEN_CLIP_PATH") or Path(sys.prefix) / "extras" / "open-clip")
    assert (path / "open_clip").is_dir(), (
        f"{path}: the open-clip extra is not installed; `make install` puts it there (or set CCMB_OPEN_CLIP_PATH)")
    return path


def dataset_view(root: Path):
    """The images and texts the run encodes (strict protocol) and their ground truth."""
    from ccmb import datasets as ds
    from ccmb_bench.protocols import resolve
    from ccmb_bench.tasks.views import retrieval_view

    spec = ds.get_spec(DATASET)
    data = ds.load_dataset(DATASET, root, split=spec.default_split)
    view = retrieval_view(data, resolve("strict", spec).rules, spec.format)
    images = [data.load_image(i) for i in range(len(data.image_ids))]
    return images, view


def run_result(out: Path):
    from ccmb_bench.results import read_per_query

    result_file = next((out / "results").glob(f"*__{DATASET}__*.json"))
    res = json.loads(result_file.read_text(encoding="utf-8"))
    cache = out / "cache" / res["model"] / res["checkpoint_fingerprint"] / DATASET / res["split"]
    from safetensors.torch import load_file

    per_query, _ = read_per_query(res, result_file)
    return res, load_file(str(cache / "images.safetensors"))["embeds"], \
        load_file(str(next(cache.glob("texts*.safetensors"))))["embeds"], per_query


def check(out: Path, ref_img: torch.Tensor, ref_txt: torch.Tensor, view) -> dict:
    res, img, txt, per_query = run_result(out)
    assert res["metrics"]["t2i_queries"] == len(view.text_to_images)
    assert img.shape == ref_img.shape and txt.shape == ref_txt.shape
    diff = {"images": float((img - ref_img).abs().max()), "texts": float((txt - ref_txt).abs().max())}
    assert diff["images"] < TOL and diff["texts"] < TOL, diff
    per_text = ref_txt[torch.as_tensor(view.text_index, dtype=torch.long)]  # unique texts -> text queries
    loop = strict_ranks(ref_img, per_text, view.image_to_texts, view.text_to_images)
    for direction in ("i2t", "t2i"):
        assert per_query[direction]["rank"].tolist() == loop[direction], direction
    return diff


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_parity_through_ccmb_bench_run(case, bench_root, tmp_path):
    build, reference = CASES[case]
    model = build(tmp_path / f"{case}-tiny")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "-m", str(model), "-d", DATASET, "-r", str(bench_root), "-o", str(out),
                                    "--protocol", "strict", "--bootstrap", "10", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    images, view = dataset_view(bench_root)
    ref_img, ref_txt = reference(model, images, view.unique_texts)
    diff = check(out, ref_img, ref_txt, view)
    kind = json.loads(next((out / "results").glob("*.json")).read_text(encoding="utf-8"))["model_kind"]
    print(f"parity {case} ({kind}): max |diff| images {diff['images']:.2e}, texts {diff['texts']:.2e}")


OPEN_CLIP_REFERENCE = """
import sys, torch
sys.path.insert(0, {root!r})
from ccmb_bench.adapters.tvcompat import prepare_torchvision
prepare_torchvision()
from pathlib import Path
from tests.bench.adapter_models import build_open_clip, reference_open_clip
from tests.bench.test_bench_adapters_parity import dataset_view
d = build_open_clip(Path({model!r}), multilingual={multilingual})
images, view = dataset_view(Path({data!r}))
img, txt = reference_open_clip(d, images, view.unique_texts)
torch.save({{"images": img, "texts": txt}}, {ref!r})
"""


@pytest.mark.parametrize("multilingual", [False, True], ids=["clip-text", "xlmr-text"])
def test_open_clip_parity_through_ccmb_bench_run(multilingual, bench_root, tmp_path):
    extra = open_clip_path()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(extra)]), "CCMB_HOME": str(tmp_path / "h")}
    model, ref, out = tmp_path / "oc-tiny", tmp_path / "ref.pt", tmp_path / "out"
    script = OPEN_CLIP_REFERENCE.format(root=str(ROOT), model=str(model), multilingual=multilingual,
                                        data=str(bench_root), ref=str(ref))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "ccmb_bench", "run", "-m", str(model), "-d", DATASET,
                           "-r", str(bench_root), "-o", str(out), "--protocol", "strict", "--bootstrap", "10",
                           "--batch-size", "4", "--no-fetch"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torchvision" not in sys.modules  # this process stays torchvision-free
    ref_t = torch.load(ref, weights_only=True)
    _, view = dataset_view(bench_root)
    diff = check(out, ref_t["images"], ref_t["texts"], view)
    print(f"parity open-clip ({'xlm-r' if multilingual else 'clip'} text): max |diff| images {diff['images']:.2e}, "
          f"texts {diff['texts']:.2e}")


def test_a_protocol_context_truncates_but_keeps_the_family_padding(tmp_path):
    """Chinese-CLIP's protocol caps texts at 52 tokens (here 6): SigLIP texts are cut there and still padded to
    the model's length (it pools the last position); CLIP-style texts are cut and padded to the longest."""
    from transformers import AutoProcessor, SiglipModel

    from ccmb_bench.adapters import load_adapter
    from ccmb_bench.tasks.encode import context_length

    d = CASES["siglip2-fixed"][0](tmp_path / "sig")
    adapter = load_adapter(str(d))
    texts = ["一个红色的圆形在白色背景上", "蓝色方形"]
    with context_length(adapter, 6) as capped:
        assert capped
        enc = adapter.tokenize(texts)
        ours = adapter.encode_texts(texts)["embeds"]
    assert enc["input_ids"].shape == (2, 64) and int(enc["attention_mask"][0].sum()) == 6
    processor = AutoProcessor.from_pretrained(d)
    cut = processor.tokenizer(texts, truncation=True, max_length=6)
    ref_in = processor.tokenizer.pad(cut, padding="max_length", max_length=64, return_tensors="pt")
    model = SiglipModel.from_pretrained(d).eval()
    with torch.no_grad():
        ref = model.get_text_features(**ref_in)
    ref = torch.nn.functional.normalize(getattr(ref, "pooler_output", ref), dim=-1)
    assert float((ours - ref).abs().max()) < TOL
    assert adapter.max_len == 64  # restored after the run

    clip = load_adapter(str(CASES["clip"][0](tmp_path / "clip")))
    with context_length(clip, 6):
        assert clip.tokenize(texts)["input_ids"].shape == (2, 6)
