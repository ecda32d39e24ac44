"""What FGDLoss does with bad and non-finite input (docs/fgd.md, "Validation"):
clear errors naming the argument, NaN/Inf propagated by default (an AMP
GradScaler then skips the step), raised with check_finite=True."""
import warnings

import pytest
import torch

from fgdkern import FGDLoss, MultiLevelFGDLoss
from fgdkern.losses.fgd import fgd_pyramid_terms
from tests.harness import FUSED_BACKENDS
from tests.losses.test_fgd import build

BACKENDS = ["reference", pytest.param("torch")] + FUSED_BACKENDS


@pytest.fixture
def one_level():
    ms, S, T, boxes, shapes = build(2, 4, 4, [(4, 6)])
    return ms.levels[0], S[0], T[0], boxes, shapes


def poisoned(S, T, which, value):
    bad = (S if which == "preds_S" else T).clone()
    bad[1, 2, 3, 4] = value
    return (bad, T) if which == "preds_S" else (S, bad)


# --------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["preds_S", "preds_T"])
def test_check_finite_raises(backend, which, one_level):
    m, S, T, boxes, shapes = one_level
    S_, T_ = poisoned(S, T, which, float("nan"))
    with pytest.raises(ValueError, match=rf"{which}.*non-finite"):
        fgd_pyramid_terms([m], [S_], [T_], boxes, shapes, backend, check_finite=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["preds_S", "preds_T"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_propagates_by_default(backend, which, value, one_level):
    """As in torch.nn's losses: no exception, a non-finite loss and non-finite gradients."""
    m, S, T, boxes, shapes = one_level
    S_, T_ = poisoned(S, T, which, value)
    S_ = S_.detach().requires_grad_()
    terms = fgd_pyramid_terms([m], [S_], [T_], boxes, shapes, backend)[0]
    loss = m.weighted(terms)
    assert not torch.isfinite(loss)
    loss.backward()
    assert not torch.isfinite(S_.grad).all()


def test_multi_level_names_the_bad_level():
    ms, S, T, boxes, shapes = build(1, 4, 4, [(4, 6), (2, 3)])
    ms.check_finite = True
    bad = T[1].clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"preds_T\[1\] contains non-finite"):
        ms(S, [T[0], bad], boxes, shapes)
    with pytest.raises(ValueError, match=r"preds_S\[1\] has 3 channels"):
        ms([S[0], S[1][:, :3]], T, boxes, shapes)


def test_grad_scaler_skips_an_overflowing_step():
    """A step whose features overflow is skipped by torch.amp.GradScaler, not a crash:
    the parameters of student and loss stay as they were and the scale backs off."""
    torch.manual_seed(0)
    student = torch.nn.Conv2d(3, 8, 3, padding=1)
    fgd = MultiLevelFGDLoss(1, 8, 8)
    params = list(student.parameters()) + list(fgd.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    images, feats_T = torch.randn(2, 3, 16, 16), torch.randn(2, 8, 16, 16)
    boxes = [torch.tensor([[2.0, 2.0, 9.0, 12.0]]), torch.zeros(0, 4)]
    for step, overflow in enumerate([False, True, False]):
        before = [p.detach().clone() for p in params]
        opt.zero_grad()
        feats_S = student(images) * (float("inf") if overflow else 1.0)
        loss = fgd([feats_S], [feats_T], boxes, [(16, 16)] * 2)
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        unchanged = all(torch.equal(a, p) for a, p in zip(before, params))
        assert unchanged == overflow, step
        assert (scaler.get_scale() < scale) == overflow, step


# ------------------------------------------------------------------ caller mistakes
@pytest.mark.parametrize("mutate,exc,match", [
    (lambda S, T, b, s: (S[:1], T, b, s), ValueError, "batch size"),
    (lambda S, T, b, s: (S[..., :3], T, b, s), ValueError, "spatial size"),
    (lambda S, T, b, s: (S[:, :3], T, b, s), ValueError, "preds_S has 3 channels"),
    (lambda S, T, b, s: (S[0], T, b, s), ValueError, r"preds_S must be \(N, C, H, W\)"),
    (lambda S, T, b, s: (S.long(), T, b, s), TypeError, "preds_S must be float"),
    (lambda S, T, b, s: (S.tolist(), T, b, s), TypeError, "preds_S must be a torch.Tensor"),
    (lambda S, T, b, s: (S[:0], T[:0], b[:0], s[:0]), ValueError, "empty batch"),
    (lambda S, T, b, s: (S, T, b[:1], s), ValueError,
     "gt_bboxes has 1 images but preds_S has batch size 2"),
    (lambda S, T, b, s: (S, T, b + b[:1], s + s[:1]), ValueError,
     "gt_bboxes has 3 images but preds_S has batch size 2"),
    (lambda S, T, b, s: (S, T, b, s[:1]), ValueError, "img_shapes"),
    (lambda S, T, b, s: (S, T, b, s * 2), ValueError, "img_shapes has 4"),
    (lambda S, T, b, s: (S, T, b[0], s), TypeError, "gt_bboxes must be a list"),
    (lambda S, T, b, s: (S, T, [x[:, :3] for x in b], s), ValueError, "gt_bboxes"),
    (lambda S, T, b, s: (S, T, [torch.full((1, 4), float("inf"))] * 2, s), ValueError,
     "gt_bboxes"),
    (lambda S, T, b, s: (S, T, b, [(64, 96, 3, 1)] * 2), ValueError, "img_shapes"),
    (lambda S, T, b, s: (S, T, b, [(-64, 96)] * 2), ValueError, "img_shapes"),
    (lambda S, T, b, s: (S, T, b, 64), TypeError, "img_shapes"),
])
def test_bad_inputs(mutate, exc, match, one_level):
    m, S, T, boxes, shapes = one_level
    with pytest.raises(exc, match=match):
        m(*mutate(S, T, boxes, shapes))


def test_one_image_shape_for_the_whole_batch(one_level):
    """img_shapes may be one (h, w) for every image, e.g. images.tensors.shape[-2:]."""
    m, S, T, boxes, shapes = one_level
    want = m(S, T, boxes, shapes)
    h, w = shapes[0]
    for one in (torch.Size([h, w]), (h, w), [h, w], torch.tensor([h, w])):
        assert torch.equal(m(S, T, boxes, one), want), one


def test_boxes_that_require_grad_are_detached(one_level):
    """Boxes straight out of a box head (requires_grad) give no autograd warning."""
    m, S, T, boxes, shapes = one_level
    boxes = [b.clone().requires_grad_() for b in boxes]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = m(S.requires_grad_(), T, boxes, shapes)
        loss.backward()
    assert all(b.grad is None for b in boxes)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="backend"):
        FGDLoss(4, 4, backend="cuda")
    with pytest.raises(ValueError, match="teacher_channels"):
        FGDLoss(4, 1)
    with pytest.raises(ValueError, match="temp"):
        FGDLoss(4, 4, temp=0.0)
    with pytest.raises(TypeError, match="check_finite"):
        FGDLoss(4, 4, check_finite="yes")


@pytest.mark.parametrize("Cs,Ct,error,match", [
    ([4, 8], 8, ValueError, "student_channels has 2 widths for 3 levels"),
    (4, (8, 8, 8, 8), ValueError, "teacher_channels has 4 widths for 3 levels"),
    ([4, 8.0, 8], 8, ValueError, r"student_channels\[1\] must be an int"),
    (4, [8, 1, 8], ValueError, "teacher_channels must be an int >= 2"),
])
def test_bad_widths_per_level(Cs, Ct, error, match):
    with pytest.raises(error, match=match):
        MultiLevelFGDLoss(3, Cs, Ct)
    with pytest.raises(ValueError, match="num_levels"):
        MultiLevelFGDLoss(0, 4, 4)
    with pytest.raises(ValueError, match="detector"):
        FGDLoss.for_detector("yolo", 4, 4)


def test_multi_level_bad_containers():
    ms, S, T, boxes, shapes = build(1, 4, 4, [(4, 6), (2, 3)])
    with pytest.raises(TypeError, match="feats_S"):
        ms(S[0], T, boxes, shapes)
    with pytest.raises(ValueError, match="feats_T has 1 levels"):
        ms(S, T[:1], boxes, shapes)
    with pytest.raises(ValueError, match=r"gt_bboxes has 2 images but preds_S\[0\] has batch"):
        ms(S, T, boxes * 2, shapes * 2)
