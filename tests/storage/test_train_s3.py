"""The trainer streams shards from object storage (the S3 server on 127.0.0.1) exactly as from disk: the same
batches in the same order per rank and DataLoader worker, the same resume point, the same training steps."""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import make_shards, write_vocab  # noqa: E402

from ccmb import shards as fmt  # noqa: E402
from ccmb import storage  # noqa: E402
from models.tokenizer import load_tokenizer  # noqa: E402
from models.train.augment import TrainTransform  # noqa: E402
from models.train.config import LossConfig, TrainConfig  # noqa: E402
from models.train.data import ShardStream, Tokenize, make_loader, resolve_shards, shard_sizes  # noqa: E402
from models.train.pretrain import pretrain  # noqa: E402


def upload(local: Path, url: str) -> str:
    for p in sorted(local.iterdir()):
        storage.write_bytes(storage.join(url, p.name), p.read_bytes())
    return url


@pytest.fixture(scope="module")
def sets(tmp_path_factory, s3_server):
    root = tmp_path_factory.mktemp("s3train")
    local = make_shards(root / "shards", n_shards=3, per_shard=8, size=24)
    manifest = json.loads((local / "manifest.json").read_text())
    manifest["provenance"] = {"decision_tables": [], "decontamination": {"against": [], "report": None}}
    (local / "manifest.json").write_text(json.dumps(manifest))
    remote = upload(local, s3_server.url("train-shards"))
    return local, remote, write_vocab(root / "tok")


def batches(spec, vocab, n, workers=0, start=0, **kw):
    tok = load_tokenizer(vocab, max_length=16)
    args = dict(text_choice="title", seed=3, shuffle_buffer=10)
    args.update(kw)
    stream = ShardStream(resolve_shards(spec), 4, TrainTransform(16), Tokenize(tok, 16), **args)
    stream.set_epoch(1)
    stream.set_start(start)
    return list(itertools.islice(iter(make_loader(stream, workers)), n))


def same(a, b):
    assert [x["keys"] for x in a] == [x["keys"] for x in b]
    assert all(torch.equal(x["pixel_values"], y["pixel_values"]) and torch.equal(x["input_ids"], y["input_ids"])
               for x, y in zip(a, b))


def test_resolve_and_sizes_from_s3(sets):
    local, remote, _ = sets
    assert resolve_shards(remote) == [f"{remote}/0000{i}.tar" for i in range(3)]
    assert resolve_shards(remote + "/{00000..00001}.tar") == [f"{remote}/00000.tar", f"{remote}/00001.tar"]
    assert list(shard_sizes(resolve_shards(remote)).values()) == list(shard_sizes(resolve_shards(local)).values())
    with pytest.raises(FileNotFoundError, match=f"shard not found: {remote}/00003.tar"):
        resolve_shards(remote + "/{00000..00005}.tar")
    with pytest.raises(fmt.ShardFormatError, match=f"{remote}/nothing/sizes.json"):
        shard_sizes([f"{remote}/nothing/00000.tar"])


@pytest.mark.parametrize("case", [
    dict(workers=0),                                      # resampled shards, one process
    dict(workers=2, resampled=False),                     # split per worker, cycled
    dict(workers=2, rank=1, world_size=2),                # second rank of two
    dict(workers=2, rank=0, world_size=2, resampled=False),
])
def test_same_batches_from_s3_as_from_disk(sets, case):
    local, remote, vocab = sets
    same(batches(remote, vocab, 7, **case), batches(local, vocab, 7, **case))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_s3_continues_like_disk(sets, workers):
    local, remote, vocab = sets
    full = batches(local, vocab, 7, workers=workers)
    same(batches(remote, vocab, 4, workers=workers, start=3), full[3:])


def test_pretrain_steps_from_s3_equal_disk(sets, tmp_path):
    """A few training steps (DataLoader workers streaming from S3) give the same losses and weights as on disk;
    the shard set's provenance names the URL."""
    local, remote, vocab = sets
    cfg = TrainConfig(losses=LossConfig(queue_size=8), steps=3, batch_size=4, log_every=1, save_every=0,
                      num_workers=2, shuffle_buffer=8)
    a = pretrain("r2d2-tiny", remote, tmp_path / "s3run", cfg, tokenizer_path=vocab)
    b = pretrain("r2d2-tiny", local, tmp_path / "diskrun", cfg, tokenizer_path=vocab)
    assert a.steps == b.steps == 3
    for k in ("loss", "gcpr", "fgr", "tgd", "fgd"):
        assert a.last_log[k] == b.last_log[k], k
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "s3run" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "diskrun" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    prov = json.loads((tmp_path / "s3run" / "data_provenance.json").read_text())
    assert prov["shard_sets"][0]["path"] == remote


def test_cli_pretrain_takes_an_s3_brace_pattern(sets, tmp_path):
    from click.testing import CliRunner

    from ccmb.cli import main

    _, remote, vocab = sets
    res = CliRunner().invoke(main, [
        "train", "pretrain", "--config", "r2d2-tiny", "--shards", remote + "/{00000..00001}.tar",
        "--tokenizer", str(vocab), "--output", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4",
        "--log-every", "1", "--save-every", "0", "--num-workers", "0", "--queue-size", "8"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and lines[-1]["skipped_samples"] == 0
    assert json.loads((tmp_path / "run" / "run_args.json").read_text())["shards"] == remote + "/{00000..00001}.tar"


def test_workers_are_forked_without_the_parents_s3_client(sets, monkeypatch):
    """A DataLoader with workers closes the process's S3 clients first: a forked worker must not inherit the
    parent's pooled connections and event loop (against a keep-alive server each worker printed an asyncio
    "attached to a different loop" traceback at exit). The parent's filesystem handles reconnect on next use."""
    import s3fs

    _, remote, _ = sets
    held, _ = storage._fs(remote)
    assert storage.list_files(remote) and held._s3 is not None and s3fs.S3FileSystem._cache
    closed = []
    real = storage.close_clients
    monkeypatch.setattr(storage, "close_clients", lambda: (closed.append(1), real())[1])
    stream = ShardStream([remote + "/00000.tar"], 4, TrainTransform(16), None, resampled=False)
    make_loader(stream, num_workers=0)
    assert closed == []  # no workers, nothing forked: the client stays
    make_loader(stream, num_workers=1)
    assert closed == [1] and held._s3 is None and not s3fs.S3FileSystem._cache
    assert storage.list_files(remote) == storage.list_files(remote)  # new clients, the same answers
    assert held.ls(remote.split("://", 1)[1], refresh=True) and held._s3 is not None  # an old handle reconnects
