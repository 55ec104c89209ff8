"""The shard pipeline: determinism, resume skipping, per-rank/worker splitting, text choice, crops."""
import itertools
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shards, write_vocab  # noqa: E402

from ccmb.shards import ShardFormatError  # noqa: E402
from models.tokenizer import load_tokenizer  # noqa: E402
from models.train.augment import TrainTransform, random_resized_crop_box  # noqa: E402
from models.train.data import (ShardStream, Tokenize, choose_text, make_loader, resolve_shards,  # noqa: E402
                               shard_sizes)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_shards(root / "shards", n_shards=3, per_shard=8, size=24)
    tok = load_tokenizer(write_vocab(root / "tok"), max_length=16)
    return root / "shards", tok


def stream(shard_set, **kw):
    shards, tok = shard_set
    args = dict(text_choice="title", seed=3, shuffle_buffer=10)
    args.update(kw)
    return ShardStream(resolve_shards(shards), 4, TrainTransform(16), Tokenize(tok, 16), **args)


def keys(loader, n):
    return [tuple(b["keys"]) for b in itertools.islice(iter(loader), n)]


def test_batches_shapes_and_sizes(shard_set):
    s = stream(shard_set)
    b = next(iter(make_loader(s, 0)))
    assert b["pixel_values"].shape == (4, 3, 16, 16)
    assert b["input_ids"].shape == (4, 16) and b["attention_mask"].shape == (4, 16)
    assert b["image_ids"].dtype == torch.long
    assert sum(shard_sizes(resolve_shards(shard_set[0])).values()) == 24
    brace = str(shard_set[0]) + "/{00000..00001}.tar"
    assert len(resolve_shards(brace)) == 2


def test_deterministic_and_epoch_dependent(shard_set):
    a = keys(make_loader(stream(shard_set), 0), 6)
    b = keys(make_loader(stream(shard_set), 0), 6)
    assert a == b
    s = stream(shard_set)
    s.set_epoch(1)
    assert keys(make_loader(s, 0), 6) != a
    # the same sample gets the same pixels (augmentation seeded per sample)
    x1 = next(iter(make_loader(stream(shard_set), 0)))["pixel_values"]
    x2 = next(iter(make_loader(stream(shard_set), 0)))["pixel_values"]
    assert torch.equal(x1, x2)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_skips_to_the_same_batches(shard_set, workers):
    full = list(itertools.islice(iter(make_loader(stream(shard_set), workers)), 7))
    s = stream(shard_set)
    s.set_start(3)
    resumed = list(itertools.islice(iter(make_loader(s, workers)), 4))
    assert [b["keys"] for b in resumed] == [b["keys"] for b in full[3:]]
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(resumed, full[3:]))


def test_ranks_get_different_streams_and_split_shards(shard_set):
    r0 = keys(make_loader(stream(shard_set, rank=0, world_size=2), 0), 4)
    r1 = keys(make_loader(stream(shard_set, rank=1, world_size=2), 0), 4)
    assert r0 != r1
    # without resampling, 3 shards over 2 ranks: rank 0 reads shards 0 and 2, rank 1 shard 1 only
    k1 = {k for b in keys(make_loader(stream(shard_set, rank=1, world_size=2, resampled=False), 0), 6) for k in b}
    assert {k[:5] for k in k1} == {"00001"}
    k0 = {k for b in keys(make_loader(stream(shard_set, rank=0, world_size=2, resampled=False), 0), 6) for k in b}
    assert {k[:5] for k in k0} == {"00000", "00002"}


def test_choose_text():
    meta = {"title": "标题", "content": "", "query": "查询"}
    rng = random.Random(0)
    seen = {choose_text(meta, "主", "random", rng) for _ in range(50)}
    assert seen == {"标题", "查询"}  # empty content never chosen
    assert choose_text(meta, "主", "title", rng) == "标题"
    assert choose_text(meta, "主", "content", rng) == "主"  # empty field falls back to .txt
    assert choose_text({}, "主", "random", rng) == "主"
    with pytest.raises(ValueError, match="text choice"):
        ShardStream([], 2, None, None, text_choice="caption")


def test_random_resized_crop_box():
    rng = random.Random(0)
    for _ in range(200):
        w, h = rng.randint(10, 300), rng.randint(10, 300)
        l, t, r, b = random_resized_crop_box(w, h, rng, (0.5, 1.0))
        assert 0 <= l < r <= w and 0 <= t < b <= h


def test_missing_sizes_names_the_file(tmp_path, shard_set):
    import shutil

    d = tmp_path / "s"
    d.mkdir()
    shutil.copy(Path(shard_set[0]) / "00000.tar", d / "00000.tar")
    with pytest.raises(ShardFormatError, match="sizes.json"):
        shard_sizes(resolve_shards(d))


def test_undecodable_image_is_skipped_counted_and_named(tmp_path, shard_set, caplog):
    from ccmb.shards import ShardWriter, finalize_shard_set
    from train_helpers import draw

    d = tmp_path / "bad"
    with ShardWriter(d, 0) as w:
        for i in range(6):
            img = b"not an image" if i == 2 else draw("红", "方", 24, seed=i)
            w.write(f"{i}", img, "红色方形", {"title": "红色方形"})
    finalize_shard_set(d)
    _, tok = shard_set
    s = ShardStream(resolve_shards(d), 5, TrainTransform(16), Tokenize(tok, 16), shuffle_buffer=0)
    with caplog.at_level("WARNING"):
        b = next(iter(make_loader(s, 0)))
    assert len(b["keys"]) == 5 and "2" not in b["keys"]
    assert b["skipped"] == 1 and s.failures == {"undecodable image": 1}
    assert any("00000.tar" in r.getMessage() and "2.jpg" in r.getMessage() for r in caplog.records)
