"""``ccmb score`` end to end with a tiny random R2D2: scores and float16 embeddings, resume per shard, an
empty shard, an undecodable image; then ``ccmb filter --scores``, ``ccmb stats --scores`` and
``ccmb dedup --semantic`` on the result."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus_curation"))
from curation_helpers import CAPTIONS, jpeg, rand_image, write_download  # noqa: E402

from ccmb.cli import main  # noqa: E402
from ccmb.corpus.tables.decisions import read_decisions  # noqa: E402
from ccmb.corpus.tables.scores import read_embeddings, read_scores  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from models import build_model, get_config
    from models.tokenizer import write_test_vocab

    root = tmp_path_factory.mktemp("scoring")
    rows = [dict(url=f"http://x/{i}.jpg", caption=CAPTIONS[i % 12], content=f"内容{CAPTIONS[(i + 1) % 12]}",
                 image=jpeg(rand_image(i))) for i in range(20)]
    rows[3]["image"] = rows[3]["image"][: len(rows[3]["image"]) // 2]  # truncated: does not decode
    rows[7]["image"] = jpeg(rand_image(5))  # same picture as row 5: a semantic duplicate
    rows += [dict(url=f"http://x/dead{i}.jpg", caption="死链", image=None) for i in range(8)]  # shard 2: empty tar
    dl = write_download(root / "dl", rows, per_shard=10)
    vocab = write_test_vocab(root / "tok", extra_chars="".join(CAPTIONS) + "内容死链")
    model = root / "model"
    build_model(get_config("r2d2-tiny")).save_pretrained(str(model))
    shutil.copy(vocab, model / "vocab.txt")
    return root, dl, model


def _score(root, dl, model, name="scores.parquet"):
    res = CliRunner().invoke(main, ["score", "--input", str(dl), "--model", str(model), "--output",
                                    str(root / name), "--batch-size", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return root / name, res.output


def test_score_writes_cosines_and_embeddings(corpus):
    root, dl, model = corpus
    path, out = _score(root, dl, model)
    t = read_scores(path).to_pydict()
    assert len(t["key"]) == 20  # downloaded samples only (the empty shard has none)
    assert "3 shards" in out
    bad = t["key"].index("000003")
    assert "cannot decode" in t["error"][bad] and t["score"][bad] is None
    ok = [i for i, e in enumerate(t["error"]) if e is None]
    assert all(-1.0 <= t["score"][i] <= 1.0 for i in ok)
    assert all(t["score_content"][i] is not None for i in ok) and all(v is None for v in t["score_query"])
    keys, emb = read_embeddings(path)
    assert len(keys) == 19 and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-3)
    img = np.load(root / "scores_embeddings" / "00000.image.npy")
    txt = np.load(root / "scores_embeddings" / "00000.text.npy")
    assert img.dtype == np.float16 and img.shape == txt.shape and img.shape[0] == 10
    # the stored cosine is the one of the stored (float16) embeddings
    cos = (img.astype(np.float32) * txt.astype(np.float32)).sum(1)
    np.testing.assert_allclose(cos[0], t["score"][0], atol=2e-3)
    empty = np.load(root / "scores_embeddings" / "00002.image.npy")
    assert empty.shape[0] == 0


def test_score_resumes_per_shard(corpus):
    root, dl, model = corpus
    path, _ = _score(root, dl, model, "resume.parquet")
    before = read_scores(path)
    emb_dir = root / "resume_embeddings"
    mtime0 = (emb_dir / "00000.parquet").stat().st_mtime_ns
    (emb_dir / "00001.parquet").unlink()  # as if killed while scoring shard 1
    _, out = _score(root, dl, model, "resume.parquet")
    assert "(2 already done)" in out
    assert (emb_dir / "00000.parquet").stat().st_mtime_ns == mtime0
    assert read_scores(path).equals(before)


def test_score_refuses_embeddings_of_another_model(corpus, tmp_path):
    root, dl, model = corpus
    other = tmp_path / "other"
    shutil.copytree(model, other)
    from models import build_model, get_config

    m = build_model(get_config("r2d2-tiny"))
    m.save_pretrained(str(other))
    res = CliRunner().invoke(main, ["score", "--input", str(dl), "--model", str(other), "--output",
                                    str(tmp_path / "s.parquet"), "--embeddings", str(root / "scores_embeddings")])
    assert res.exit_code != 0 and "another model" in res.output


def test_filter_stats_and_semantic_dedup_on_scores(corpus):
    root, dl, model = corpus
    path = root / "scores.parquet"
    if not path.exists():
        _score(root, dl, model)
    runner = CliRunner()
    out = root / "filter.parquet"
    res = runner.invoke(main, ["filter", "--input", str(dl), "--output", str(out), "--min-side", "0",
                               "--min-chinese-share", "0", "--scores", str(path), "--keep-top-percent", "50"])
    assert res.exit_code == 0, res.output
    reasons = read_decisions(out).column("reason").to_pylist()
    assert reasons.count("low_agreement") == 9  # 19 scored: top ceil(9.5)=10 stay
    assert reasons.count("not_scored") == 1 and reasons.count("not_downloaded") == 8
    res = runner.invoke(main, ["filter", "--input", str(dl), "--output", str(out), "--scores", str(path)])
    assert res.exit_code != 0 and "exactly one" in res.output
    res = runner.invoke(main, ["stats", "--scores", str(path), "--histogram", str(root / "h.png")])
    assert res.exit_code == 0, res.output
    assert "p50=" in res.output and (root / "h.png").stat().st_size > 0
    ded = root / "dedup.parquet"
    res = runner.invoke(main, ["dedup", "--input", str(dl), "--output", str(ded), "--no-url", "--no-sha256",
                               "--no-phash", "--no-caption", "--semantic", str(path), "--eps", "0.0001"])
    assert res.exit_code == 0, res.output
    t = read_decisions(ded).to_pydict()
    dropped = {k: d for k, r, d in zip(t["key"], t["reason"], t["duplicate_of"]) if r == "duplicate_semantic"}
    assert dropped.get("000007") == "000005"  # the same picture under another caption


def test_semdedup_switch_without_scores_names_what_is_missing(corpus, tmp_path):
    root, dl, model = corpus
    res = CliRunner().invoke(main, ["dedup", "--input", str(dl), "--output", str(tmp_path / "d.parquet"),
                                    "--semdedup"])
    assert res.exit_code != 0 and "--semantic SCORES.parquet" in res.output
