"""Each R2D2 loss against a small hand-computed case; queue, masking and LR schedule."""
import math

import pytest
import torch

from models.train.losses import (FGRLoss, FgDLoss, GCPRLoss, MatchLoss, TgDLoss, sample_hard_negatives,
                                 soft_targets)
from models.train.schedule import warmup_cosine
from models.train.teacher import FeatureQueue, drop_patches, mask_tokens

L1 = math.log(1 + math.exp(-1))  # -log softmax([1, 0])[0]
L2 = math.log(1 + math.exp(1))   # -log softmax([1, 0])[1]


def test_gcpr_one_to_one():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = GCPRLoss()(img, txt, torch.tensor(1.0))
    # logits [[1,0],[0,1]]: every row and column gives -log(e/(e+1))
    assert loss.item() == pytest.approx(L1, abs=1e-6)
    # temperature 0.5 doubles the logits
    loss_t = GCPRLoss()(img, txt, torch.tensor(0.5))
    assert loss_t.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_gcpr_soft_targets_for_shared_image():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([7, 7])  # both texts describe the same image: targets [0.5, 0.5]
    loss = GCPRLoss()(img, txt, torch.tensor(1.0), ids)
    assert loss.item() == pytest.approx(0.5 * (L1 + L2), abs=1e-6)
    assert torch.equal(soft_targets(torch.tensor([1, 2, 1]), torch.tensor([1, 2, 1])),
                       torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]))


def test_gcpr_gradient_direction():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    txt = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    loss = GCPRLoss()(img, txt, torch.tensor(1.0))
    loss.backward()
    # the gradient of CE moves image 0 toward text 0 and away from text 1: -grad . (t0 - t1) > 0
    assert float(-(img.grad[0] @ (txt[0] - txt[1]))) > 0


def test_fgr_class_weights():
    labels = torch.tensor([1, 0, 0])
    text_logits = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    image_logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    loss = FGRLoss((1.0, 2.0))(text_logits, image_logits, labels)
    # weighted mean: (2*L1 + 1*log2 + 1*L1) / (2+1+1) for the text side; log 2 for the image side
    text_side = (2 * L1 + math.log(2) + L1) / 4
    assert loss.item() == pytest.approx(0.5 * (text_side + math.log(2)), abs=1e-6)
    unweighted = FGRLoss((1.0, 1.0))(text_logits, image_logits, labels)
    assert unweighted.item() == pytest.approx(0.5 * ((L1 + math.log(2) + L1) / 3 + math.log(2)), abs=1e-6)


def test_hard_negatives_never_positive_and_follow_similarity():
    g = torch.Generator().manual_seed(0)
    sims = torch.tensor([[10.0, 9.0, 0.0, -5.0], [0.0, 10.0, 0.0, 0.0]])
    pos = torch.tensor([[True, False, False, False], [False, True, False, False]])
    draws = torch.stack([sample_hard_negatives(sims, pos, g) for _ in range(200)])
    assert not (draws[:, 0] == 0).any() and not (draws[:, 1] == 1).any()
    # row 0: column 1 (sim 9) dominates the masked softmax (e^9 vs e^0 + e^-5)
    assert (draws[:, 0] == 1).float().mean() > 0.99
    # row 1: the three negatives are equally likely
    counts = torch.bincount(draws[:, 1], minlength=4)
    assert counts[1] == 0 and counts[[0, 2, 3]].min() > 40


def test_tgd_mixes_ground_truth_and_teacher():
    s_img = torch.tensor([[1.0, 0.0]])
    s_txt = torch.tensor([[1.0, 0.0]])
    t_img = torch.tensor([[0.0, 1.0]])
    t_txt = torch.tensor([[0.0, 1.0]])
    cols_img = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # batch column (id 0) + one queue column (id 5)
    cols_txt = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    ids_local, ids_cols = torch.tensor([0]), torch.tensor([0, 5])
    temp = torch.tensor(1.0)
    # student logits [0, 1]; teacher logits [1, 0] -> teacher distribution p = softmax([1, 0])
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    logq = torch.log_softmax(torch.tensor([0.0, 1.0]), 0)
    for alpha in (0.0, 0.4, 1.0):
        target = alpha * p + (1 - alpha) * torch.tensor([1.0, 0.0])
        # KL(target || student) = cross-entropy - entropy of the target (0 log 0 = 0)
        want = float(-(target * logq).sum() + torch.special.xlogy(target, target).sum())
        got = TgDLoss()(s_img, s_txt, temp, t_img, t_txt, cols_img, cols_txt, ids_local, ids_cols, alpha)
        assert got.item() == pytest.approx(want, abs=1e-6)
    # a student equal to its targets scores 0; the gradient is the cross-entropy's
    s_img = torch.tensor([[1.0, 0.0]], requires_grad=True)
    got = TgDLoss()(s_img, s_txt, temp, t_img, t_txt, cols_img, cols_txt, ids_local, ids_cols, 0.4)
    got.backward()
    target = 0.4 * p + 0.6 * torch.tensor([1.0, 0.0])
    q = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    want_grad = 0.5 * ((q - target) @ cols_txt)  # d CE / d logits = q - target; logits = s_img @ cols.T
    assert torch.allclose(s_img.grad[0], want_grad, atol=1e-6)


def test_fgd_regression():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 3.0]])  # normalised: distance^2 = 2
    assert FgDLoss()([(s, t)]).item() == pytest.approx(2.0)
    assert FgDLoss()([(s, 5 * s)]).item() == pytest.approx(0.0, abs=1e-7)
    assert FgDLoss()([(s, t), (s, s)]).item() == pytest.approx(1.0)


def test_match_loss():
    lg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert MatchLoss()(lg, lg, torch.tensor([1, 0])).item() == pytest.approx(L1, abs=1e-6)


def test_queue_ring_buffer():
    q = FeatureQueue(5, 2)
    # starts full of random unit vectors with id -1 (ALBEF): every column counts from the first step
    image, text, ids = q.contents()
    assert image.shape == (5, 2) and ids.tolist() == [-1] * 5 and int(q.valid) == 0
    assert torch.allclose(image.norm(dim=1), torch.ones(5)) and torch.allclose(text.norm(dim=1), torch.ones(5))
    assert not torch.allclose(image[0], image[1])
    q.enqueue(torch.ones(3, 2), torch.ones(3, 2), torch.tensor([1, 2, 3]))
    assert q.contents()[2].tolist() == [1, 2, 3, -1, -1]
    q.enqueue(torch.zeros(4, 2), torch.zeros(4, 2), torch.tensor([4, 5, 6, 7]))
    assert int(q.valid) == 5 and int(q.ptr) == 2
    assert q.ids.tolist() == [6, 7, 3, 4, 5]


def test_masking():
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0]])  # [CLS]=2 ... [SEP]=3, padding 0
    mask = (ids != 0).long()
    out = mask_tokens(ids, mask, mask_token_id=4, ratio=1.0, special_ids=(2, 3, 0))
    assert out.tolist() == [[2, 4, 4, 4, 3, 0, 0]]
    assert torch.equal(mask_tokens(ids, mask, 4, 0.0, (2, 3, 0)), ids)
    pix = torch.ones(2, 3, 8, 8)
    dropped = drop_patches(pix, 4, 0.5, torch.Generator().manual_seed(1))
    blocks = dropped.unfold(2, 4, 4).unfold(3, 4, 4)  # [2,3,2,2,4,4]
    per_block = blocks.reshape(2, 3, 2, 2, 16)
    assert ((per_block == 0).all(-1) | (per_block == 1).all(-1)).all()  # whole patches only
    assert 0 < (dropped == 0).float().mean() < 1


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, min_lr_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("where", ["global", "local"])
def test_objective_fgr_negatives(where):
    import models
    from models.train.config import LossConfig
    from models.train.objective import R2D2Objective

    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny")
    obj = R2D2Objective(model, LossConfig(fgr_negatives=where, tgd=0, fgd=0))
    batch = {"pixel_values": torch.randn(4, 3, 32, 32), "input_ids": torch.randint(5, 100, (4, 8)),
             "attention_mask": torch.ones(4, 8, dtype=torch.long), "image_ids": torch.tensor([0, 1, 1, 2])}
    out = obj(batch)
    assert set(out) == {"gcpr", "fgr", "loss"} and torch.isfinite(out["fgr"])
    out["loss"].backward()
    assert model.itm_head.weight.grad is not None and model.itm_head_i.weight.grad is not None
    assert any(p.grad is not None for p in model.img_joint_layer.parameters())
    with pytest.raises(ValueError, match="fgr_negatives"):
        LossConfig(fgr_negatives="remote")
    with pytest.raises(ValueError, match="every loss is disabled"):
        R2D2Objective(models.build_model("prd2-tiny"), LossConfig(gcpr=0, tgd=0, fgd=0))


def test_ema_teacher_update():
    from models.train.teacher import EMATeacher

    student = torch.nn.Linear(2, 2)
    teacher = EMATeacher(student, momentum=0.9)
    before = teacher.model.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student)
    assert torch.allclose(teacher.model.weight, 0.9 * before + 0.1 * student.weight.detach())
    assert not teacher.model.weight.requires_grad and not teacher.train().model.training


def test_mlm_masking_follows_bert():
    from models.train.teacher import mlm_mask

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (400, 50))
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    out, labels = mlm_mask(ids, mask, mask_token_id=4, vocab_size=100, ratio=0.15, special_ids=(0, 2, 3, 4),
                           generator=g)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # specials never chosen
    assert 0.13 < chosen.float().mean() < 0.17
    assert torch.equal(labels[chosen], ids[chosen])
    masked = (out == 4) & chosen
    kept = (out == ids) & chosen
    assert 0.77 < masked.sum() / chosen.sum() < 0.83
    assert 0.08 < kept.sum() / chosen.sum() < 0.13  # 10 % unchanged (+ random draws equal to the original)
    assert torch.equal(out[~chosen], ids[~chosen])
    # a batch that draws nothing still predicts one token (no empty loss), even when its first row is empty
    ids2 = torch.tensor([[2, 3, 0, 0], [2, 11, 12, 3]])
    _, labels2 = mlm_mask(ids2, (ids2 != 0).long(), 4, 100, ratio=0.0, special_ids=(0, 2, 3, 4))
    assert (labels2 != -100).sum() == 1 and labels2[1, 1] == 11
