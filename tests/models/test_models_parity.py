"""Parity with the official R2D2 code: the tiny official checkpoint reproduces every array of expected.npz."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import models

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "r2d2_official_tiny"
HIDDEN_TOL = 2e-5
TOL = 1e-5


@pytest.fixture(scope="module")
def official():
    model = models.load_model(FIXTURE, FIXTURE / "checkpoint.pth")
    inputs = {k: torch.from_numpy(v) for k, v in np.load(FIXTURE / "inputs.npz").items()}
    expected = dict(np.load(FIXTURE / "expected.npz"))
    with torch.no_grad():
        ie, ih = model.encode_image(inputs["pixel_values"], return_hidden=True)
        te, th = model.encode_text(inputs["input_ids"], inputs["attention_mask"], return_hidden=True)
    return model, inputs, expected, (ie, ih, te, th)


def _close(name, ours, expected, tol):
    ours = ours.detach().cpu().numpy()
    assert ours.shape == expected[name].shape, name
    diff = float(np.abs(ours - expected[name]).max())
    assert diff <= tol, f"{name}: max abs diff {diff} > {tol}"


def test_load_report_lists_only_ignorable_keys(official):
    model = official[0]
    report = model.load_report
    assert report.ok and not report.missing and not report.unexpected
    assert any(k.endswith("position_ids") for k in report.ignored)
    assert any(k.startswith("text_joint_layer.embeddings.word_embeddings") for k in report.ignored)
    assert all(models.is_ignorable_key(k) for k in report.ignored)
    assert not model.training
    assert float(model.temp.detach()) == pytest.approx(0.07)


def test_encoders_match_official(official):
    _, _, expected, (ie, ih, te, th) = official
    _close("image_hidden", ih, expected, HIDDEN_TOL)
    _close("text_hidden", th, expected, HIDDEN_TOL)
    _close("image_embeds", ie, expected, TOL)
    _close("text_embeds", te, expected, TOL)
    _close("itc_sims", ie @ te.T, expected, TOL)


def test_match_prob_matches_official(official):
    model, inputs, expected, (ie, ih, te, th) = official
    ni, nt = ie.shape[0], te.shape[0]
    ii = torch.arange(ni).repeat_interleave(nt)
    jj = torch.arange(nt).repeat(ni)
    with torch.no_grad():
        probs = model.match_prob(ih[ii], th[jj], inputs["attention_mask"][jj]).view(ni, nt)
        t_logits, i_logits = model.itm_logits(ih[ii], th[jj], inputs["attention_mask"][jj])
    assert t_logits.shape == i_logits.shape == (ni * nt, 2)
    _close("itm_scores", probs, expected, TOL)
    pair_probs = model.pair_match_prob(ih, th, inputs["attention_mask"], ii, jj, pair_batch_size=5, cache_mb=0)
    _close("itm_scores", pair_probs.view(ni, nt), expected, TOL)


@pytest.mark.parametrize("pair_batch_size,cache_mb", [(1, 1024), (4, 1024), (256, 1024), (4, 0)])
def test_rank_matches_official(official, pair_batch_size, cache_mb):
    model, inputs, expected, (ie, ih, te, th) = official
    # cache_mb=0: one image per block (the per-image precomputed parts are rebuilt block by block)
    i2t, t2i = model.rank(ie, ih, te, th, inputs["attention_mask"], pair_batch_size=pair_batch_size,
                          cache_mb=cache_mb)
    _close("i2t_scores", i2t, expected, TOL)
    _close("t2i_scores", t2i, expected, TOL)
    assert int((i2t > -100).sum(1).max()) == model.config.top_k


def test_rank_top_k_covering_everything_is_itm_plus_itc(official):
    model, inputs, expected, (ie, ih, te, th) = official
    i2t, t2i = model.rank(ie, ih, te, th, inputs["attention_mask"], top_k=100)
    full = expected["itm_scores"] + expected["itc_sims"]
    assert np.abs(i2t.numpy() - full).max() <= TOL
    assert np.abs(t2i.numpy() - full.T).max() <= TOL


def test_batched_encoders_equal_single_batch(official):
    model, inputs, expected, (ie, ih, te, th) = official
    e, h = model.encode_images_batched(inputs["pixel_values"], batch_size=2)
    assert torch.allclose(e, ie, atol=1e-6) and torch.allclose(h, ih, atol=1e-5)
    e, h, m = model.encode_texts_batched(inputs["input_ids"], inputs["attention_mask"], batch_size=3)
    assert torch.allclose(e, te, atol=1e-6) and torch.allclose(h, th, atol=1e-5)
    assert torch.equal(m, inputs["attention_mask"])
    # an iterable of batches with different lengths: hidden states are right-padded, results unchanged
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    batches = [(ids[:3, :6], mask[:3, :6]), (ids[3:], mask[3:])]
    e2, h2, m2 = model.encode_texts_batched(batches)
    assert h2.shape == th.shape and torch.equal(m2, mask)
    assert torch.allclose(e2, te, atol=1e-6)
    i2t, _ = model.rank(ie, ih, e2, h2, m2)
    _close("i2t_scores", i2t, expected, TOL)


def test_rank_from_half_precision_hidden_states(official):
    model, inputs, expected, (ie, ih, te, th) = official
    e, h = model.encode_images_batched(inputs["pixel_values"], batch_size=4, hidden_dtype=torch.float16)
    assert h.dtype == torch.float16
    i2t, t2i = model.rank(ie, h, te, th.half(), inputs["attention_mask"])
    assert np.abs(i2t.numpy() - expected["i2t_scores"]).max() < 1e-2
    assert np.abs(t2i.numpy() - expected["t2i_scores"]).max() < 1e-2
