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
