"""Pre-training end to end on CPU: a tiny model overfits a tiny shard set; the CLI writes logs,
checkpoints and a loadable model; PRD2 and the CLIP-only baseline run."""
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import concepts, make_shards, write_vocab  # noqa: E402

import models  # noqa: E402
from ccmb.cli import main  # noqa: E402
from ccmb.shards import iter_samples  # noqa: E402
from models.preprocess import ImageTransform  # noqa: E402
from models.tokenizer import load_tokenizer  # noqa: E402
from models.train.config import LossConfig, TrainConfig  # noqa: E402
from models.train.pretrain import pretrain  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    make_shards(root / "shards", n_shards=2, per_shard=16, size=48)
    return root / "shards", write_vocab(root / "tok")


@pytest.mark.slow
def test_tiny_model_overfits_tiny_shards(data, tmp_path):
    shards, vocab = data
    torch.manual_seed(0)
    # momentum 0.9: in a 160-step run the default 0.995 teacher would stay at its random start
    cfg = TrainConfig(losses=LossConfig(queue_size=32, momentum=0.9), steps=160, batch_size=16, lr=1e-3, warmup_steps=5,
                      weight_decay=0.0, log_every=5, save_every=0, num_workers=0, shuffle_buffer=16,
                      text_choice="title")
    result = pretrain("r2d2-tiny", shards, tmp_path / "run", cfg, tokenizer_path=vocab)
    first, last = result.history[0], result.history[-1]
    assert set(last) >= {"gcpr", "fgr", "tgd", "fgd", "loss", "lr", "temp", "samples_per_s"}
    assert last["gcpr"] <= 0.5 * first["gcpr"], (first, last)
    # in-batch retrieval over one training sample of each of the eight concepts, with the saved model
    model = models.load_model(tmp_path / "run" / "model")
    tok = load_tokenizer(vocab)
    tf = ImageTransform(32)
    items = iter_samples(shards / "00000.tar")
    first = {}
    for s in items:
        first.setdefault(s.meta["title"], s)
    samples = list(first.values())
    assert len(samples) == len(concepts())
    pix = torch.stack([tf(Image.open(io.BytesIO(s.image))) for s in samples])
    enc = tok([s.meta["title"] for s in samples], padding="longest", return_tensors="pt")
    with torch.no_grad():
        sims = model.encode_image(pix) @ model.encode_text(enc["input_ids"], enc["attention_mask"]).T
    items = samples
    target = torch.arange(len(items))
    assert (sims.argmax(1) == target).float().mean() >= 0.9
    assert (sims.argmax(0) == target).float().mean() >= 0.9


def test_cli_pretrain_writes_logs_checkpoints_and_model(data, tmp_path):
    shards, vocab = data
    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards) + "/{00000..00001}.tar",
        "--tokenizer", str(vocab), "--output", str(out), "--steps", "6", "--batch-size", "4",
        "--log-every", "2", "--save-every", "2", "--keep-last", "2", "--num-workers", "0",
        "--queue-size", "16", "--text-choice", "query"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "samples/s" in res.output and "gcpr" in res.output
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 4, 6]  # a first line at step 1, then every 2
    assert lines[-1]["skipped_samples"] == 0
    assert lines[0]["total_steps"] == 6 and lines[0]["eta_s"] >= 0 and lines[-1]["eta_s"] == 0
    first = next(x for x in res.output.splitlines() if x.startswith("step 1/6"))
    assert "/device)" in first and "GPU" not in first and "ETA" in first  # CPU run: "per device"
    # the tokenizer travels with the model: ccmb-bench run --model RUN_DIR needs no --tokenizer
    assert (out / "model" / "vocab.txt").read_bytes() == Path(vocab).read_bytes()
    assert not (out / "data_provenance.json").exists()  # the test shards' manifest records no provenance
    for k in ("loss", "gcpr", "fgr", "tgd", "fgd", "lr", "temp", "samples_per_s", "samples_per_s_per_device"):
        assert k in lines[-1]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step_00000004", "step_00000006"]  # keep-last 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    ck = out / "checkpoints" / "step_00000006"
    for f in ("model.safetensors", "config.json", "teacher.safetensors", "optimizer.pt", "trainer_state.json"):
        assert (ck / f).is_file(), f
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["train_config"]["text_choice"] == "query"
    blob = torch.load(ck / "optimizer.pt", weights_only=True)
    assert blob["scheduler"]["last_epoch"] == 6
    model = models.load_model(out / "model")
    assert model.config.name == "r2d2-tiny"


@pytest.mark.parametrize("config,objective,expect,ckpt", [("prd2-tiny", "r2d2", {"gcpr", "tgd", "fgd"}, False),
                                                           ("r2d2-tiny", "clip", {"gcpr"}, True)])
def test_prd2_and_clip_objective(data, tmp_path, config, objective, expect, ckpt):
    shards, vocab = data
    cfg = TrainConfig(losses=LossConfig(queue_size=8), steps=2, batch_size=4, log_every=1, save_every=0,
                      num_workers=0, shuffle_buffer=4, freeze_vision=not ckpt, grad_checkpointing=ckpt,
                      grad_accum=2 if ckpt else 1)
    result = pretrain(config, shards, tmp_path / "run", cfg, tokenizer_path=vocab, objective=objective)
    losses = {k for k in result.last_log if k in ("gcpr", "fgr", "tgd", "fgd")}
    assert losses == expect


def test_provenance_and_mlm_travel_into_the_run(data, tmp_path):
    """The shard set's manifest provenance is copied to RUN_DIR/data_provenance.json and into the model folder;
    --mlm trains the MLM head (checkpointed with the teacher), the saved model keeps the official key set."""
    import shutil

    shards, vocab = data
    own = tmp_path / "shards"
    shutil.copytree(shards, own)
    manifest = json.loads((own / "manifest.json").read_text())
    provenance = {"decision_tables": [{"path": "/x/dedup.parquet", "fingerprint": "abc", "kind": "dedup",
                                       "dropped": 3}],
                  "decontamination": {"against": ["icr/test"], "report": None}}
    manifest["provenance"] = provenance
    (own / "manifest.json").write_text(json.dumps(manifest))
    cfg = TrainConfig(losses=LossConfig(queue_size=8, mlm=1.0), steps=2, batch_size=4, log_every=1, save_every=2,
                      num_workers=0, shuffle_buffer=4)
    out = tmp_path / "run"
    result = pretrain("r2d2-tiny", own, out, cfg, tokenizer_path=vocab)
    assert "mlm" in result.last_log and result.last_log["mlm"] > 0
    want = {"shard_sets": [{"path": str(own.resolve()), "provenance": provenance}]}
    assert json.loads((out / "data_provenance.json").read_text()) == want
    assert json.loads((out / "model" / "data_provenance.json").read_text()) == want
    from safetensors.torch import load_file

    aux = load_file(str(out / "checkpoints" / "step_00000002" / "teacher.safetensors"))
    assert "cls.predictions.decoder.weight" in aux
    assert not any(k.startswith("cls.") for k in load_file(str(out / "model" / "model.safetensors")))
    # resuming restores the MLM head and its optimizer state
    result = pretrain("r2d2-tiny", own, out, cfg.override(steps=3), tokenizer_path=vocab, resume="latest")
    assert result.steps == 3


def test_bad_inputs(data, tmp_path):
    shards, vocab = data
    cfg = TrainConfig(steps=1, batch_size=2, num_workers=0)
    with pytest.raises(FileNotFoundError, match="no shard set"):
        pretrain("r2d2-tiny", tmp_path / "nothing", tmp_path / "r", cfg, tokenizer_path=vocab)
    with pytest.raises(ValueError, match="tokenizer"):
        pretrain("r2d2-tiny", shards, tmp_path / "r", cfg)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        pretrain("r2d2-tiny", shards, tmp_path / "r", cfg.override(batch_size=64), tokenizer_path=vocab)
    bad = tmp_path / "train.json"
    bad.write_text('{"lr": 1e-4, "lrr": 2}')
    res = CliRunner().invoke(main, ["train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards),
                                    "--tokenizer", str(vocab), "--output", str(tmp_path / "r"),
                                    "--train-config", str(bad)])
    assert res.exit_code == 1 and "Error:" in res.output and "lrr" in res.output


def test_cli_pretrain_from_hf_dirs_tokenizer_from_init_text(data, tmp_path):
    from transformers import BertModel, CLIPVisionModel

    from models.r2d2 import bert_config, clip_vision_config

    shards, vocab = data
    cfg = models.get_config("r2d2-tiny")
    torch.manual_seed(1)
    vision = CLIPVisionModel(clip_vision_config(cfg))
    vision.save_pretrained(tmp_path / "clip")
    BertModel(bert_config(cfg)).save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "vocab.txt").write_text(Path(vocab).read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards), "--output", str(out),
        "--init-vision", str(tmp_path / "clip"), "--init-text", str(tmp_path / "bert"), "--steps", "1",
        "--batch-size", "4", "--num-workers", "0", "--queue-size", "8", "--lr", "1e-12", "--freeze-vision"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    trained = models.load_model(out / "model")
    ref = vision.state_dict()
    assert all(torch.equal(trained.visual_encoder.state_dict()[k], v) for k, v in ref.items())
    res = CliRunner().invoke(main, ["train", "pretrain", "--config", "r2d2-tiny", "--shards", str(shards),
                                    "--output", str(tmp_path / "r2"), "--init-vision", str(tmp_path / "clip"),
                                    "--steps", "1", "--tokenizer", str(vocab)])
    assert res.exit_code == 1 and "go together" in res.output and "Traceback" not in res.output


def test_cli_bad_config_is_a_clear_error_not_a_traceback(tmp_path):
    from click.testing import CliRunner

    from ccmb.cli import main

    res = CliRunner().invoke(main, ["train", "pretrain", "--config", "nosuch", "--shards", str(tmp_path),
                                    "--output", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert "Error: unknown config 'nosuch'" in res.output and "r2d2-tiny" in res.output
    assert "Traceback" not in res.output
