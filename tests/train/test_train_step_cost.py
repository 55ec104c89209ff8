"""Work removed from the training step (issue 13's speed item) changes no value: the trainer's gradient
clipping equals torch's, the EMA teacher moves exactly the parameters the losses read, and the cheaper
attention/dropout paths of the cross encoders keep their values and their dropout rate."""
import copy

import pytest
import torch

import models
from models.train.config import LossConfig
from models.train.loop import clip_gradients
from models.train.objective import TEACHER_READS, R2D2Objective


def _grads(seed: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in ((3, 4), (7,), (2, 2, 2), (1,))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


@pytest.mark.parametrize("scale", [10.0, 1e-3])  # clipped, and left alone
def test_clip_gradients_equals_torch(scale):
    ours, ref = _grads(0, scale), _grads(0, scale)
    ours[3].grad = None  # parameters without a gradient are skipped by both
    ref[3].grad = None
    n_ours = clip_gradients(ours, 1.0)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0, foreach=False)  # the per-parameter loop
    assert torch.equal(n_ours, n_ref)
    for a, b in zip(ours[:3], ref[:3]):
        assert torch.equal(a.grad, b.grad)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours[:3]]))
    assert (total <= 1.0 + 1e-5) if scale > 1 else float(total) == pytest.approx(float(n_ref))
    assert float(clip_gradients([torch.nn.Parameter(torch.zeros(2))], 1.0)) == 0.0  # no gradient at all


def test_ema_moves_only_what_the_losses_read():
    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny")
    obj = R2D2Objective(model, LossConfig(queue_size=8), mask_token_id=4, special_ids=[0, 2, 3, 4],
                        patch_size=model.config.patch_size)
    teacher = obj.teacher
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    obj.after_step()
    m = LossConfig().momentum
    tracked = set(teacher.tracked_names())
    assert tracked and all(n.startswith(TEACHER_READS) for n in tracked)
    assert any(n.startswith("text_joint_layer.") for n, _ in teacher.model.named_parameters())
    students = dict(model.named_parameters())
    for name, t in teacher.model.named_parameters():
        if name in tracked:  # the encoders and projections follow the student
            want = torch.lerp(before[name], students[name].detach(), 1 - m)
            assert torch.allclose(t, want, atol=1e-7), name
        else:  # cross encoders and match heads: never read by TgD/FgD, so never updated
            assert name.startswith(("text_joint_layer.", "img_joint_layer.", "img_joint_proj.", "itm_head",
                                    "temp")), name
            assert torch.equal(t, before[name]), name
    # what the teacher computes is what a full EMA would give (its losses read no untracked parameter)
    full = copy.deepcopy(teacher)
    full.reads, full._pairs = None, None
    for p_full, p_before in zip(full.model.parameters(), (before[n] for n, _ in teacher.model.named_parameters())):
        p_full.data.copy_(p_before)
    full.update(model)
    pix = torch.randn(2, 3, 32, 32)
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones_like(ids)
    assert torch.equal(teacher.model.encode_image(pix), full.model.encode_image(pix))
    assert torch.equal(teacher.model.encode_text(ids, mask), full.model.encode_text(ids, mask))


def test_ema_of_a_generic_module_moves_everything():
    from models.train.teacher import EMATeacher

    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    teacher = EMATeacher(student, momentum=0.5)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(2.0)
    teacher.update(student)
    for t, s in zip(teacher.model.parameters(), student.parameters()):
        assert torch.allclose(t, s.detach() - 1.0)


def test_fast_dropout_has_dropouts_distribution():
    from models.cross_encoder import FastDropout, fast_dropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = fast_dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 200k draws: 0.1 +- 5 sigma
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))  # survivors scaled as F.dropout
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    d = FastDropout(0.25)
    assert isinstance(d, torch.nn.Dropout) and d.p == 0.25 and not list(d.state_dict())
    x = torch.randn(64, 40, requires_grad=True)
    out = d.train()(x)
    out.sum().backward()  # the gradient is the same mask and scale
    assert torch.allclose(x.grad, (out != 0).float() / 0.75)


@pytest.mark.parametrize("queries,keys,masked", [(16, 17, True), (17, 17, False), (1, 17, True), (1, 17, False), (16, 12, True),
                                                 (16, 16, True), (9, 9, True), (16, 9, False)])
def test_training_attention_equals_sdpa(queries, keys, masked):
    """The CPU training path (written-out attention: keys-major softmax for key lengths off the vector width,
    elementwise for one query) computes SDPA's values; with a vanishing dropout rate they must agree,
    gradients included."""
    import torch.nn.functional as F

    from models.cross_encoder import KeyMask, attention

    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 4, queries, 10, generator=g, requires_grad=True)
    k = torch.randn(6, 4, keys, 10, generator=g, requires_grad=True)
    v = torch.randn(6, 4, keys, 10, generator=g, requires_grad=True)
    keep = torch.rand(6, keys, generator=g) > 0.4
    keep[:, 0] = True
    mask = KeyMask(keep) if masked else None
    ours = attention(q, k, v, mask, 1e-12, training=True)
    grads = torch.autograd.grad(ours.sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :] if masked else None)
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)
    # evaluation: SDPA itself
    assert torch.equal(attention(q, k, v, mask, 0.1, training=False), ref)


@pytest.mark.parametrize("queries", [1, 3])
def test_training_attention_drops_probabilities(queries):
    from models.cross_encoder import attention

    torch.manual_seed(0)
    q, k = torch.zeros(200, 4, queries, 8), torch.zeros(200, 4, 10, 8)  # 10 keys: the keys-major path for 3
    v = torch.eye(10)[None, None].expand(200, 4, 10, 10)[..., :8].clone()  # value j = unit vector j (j < 8)
    out = attention(q, k, v, None, 0.5, training=True)  # uniform probabilities 0.1, half dropped, rest x2
    vals = out[..., :8].flatten()
    assert bool(((vals == 0) | torch.isclose(vals, torch.tensor(0.2))).all())
    assert abs((vals == 0).float().mean().item() - 0.5) < 0.03


def test_text_encoder_training_internals_keep_outputs():
    """The text encoder's fast dropout and attention change nothing in evaluation, and in training without
    dropout they give the sdpa model's values."""
    from models.cross_encoder import FastDropout

    torch.manual_seed(0)
    model = models.build_model("r2d2-tiny")
    te = model.text_encoder
    assert te.config._attn_implementation == "ccmb_sdpa"
    assert not any(type(m) is torch.nn.Dropout for m in te.modules())
    assert any(isinstance(m, FastDropout) for m in te.modules())
    ref = copy.deepcopy(te)
    ref.set_attn_implementation("sdpa")
    ids = torch.randint(5, 100, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        assert torch.equal(te.eval()(input_ids=ids, attention_mask=mask).last_hidden_state,
                           ref.eval()(input_ids=ids, attention_mask=mask).last_hidden_state)
    for m in list(te.modules()) + list(ref.modules()):
        if isinstance(m, torch.nn.Dropout):
            m.p = 1e-12  # the training paths, with a vanishing dropout rate
    a = te.train()(input_ids=ids, attention_mask=mask).last_hidden_state
    b = ref.train()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
