"""The benchmark's eager-loop FGD (bench/baselines.py) against the package reference.

Two independent implementations of docs/fgd.md: equal loss, equal gradients of the
student features and of every parameter, bit-equal masks.
"""
import functools

import pytest
import torch

fgdkern = pytest.importorskip("fgdkern")
if not hasattr(fgdkern, "MultiLevelFGDLoss"):
    pytest.skip("fgdkern.MultiLevelFGDLoss does not exist yet", allow_module_level=True)

from bench.baselines import EagerLoopMultiLevelFGD, paint_masks  # noqa: E402
from bench.channel_baselines import EagerCWD, EagerMGD, EagerPKD  # noqa: E402
from tests.harness import (assert_exact, assert_exact_list, elements, float64_copy,  # noqa: E402
                           to_float64)
from tests.helpers import random_boxes, random_features, randomize  # noqa: E402

SIZES = [(12, 18), (6, 9), (3, 5)]
IMG = (96, 140)


# Every hyper-parameter differs between levels: the baseline must keep each level's own.
LEVEL_HP = [dict(temp=0.7, alpha_fgd=1e-3, beta_fgd=5e-4, gamma_fgd=2e-3, lambda_fgd=5e-6),
            dict(temp=0.9, alpha_fgd=4e-4, beta_fgd=2e-3, gamma_fgd=7e-4, lambda_fgd=3e-5),
            dict(temp=0.4, alpha_fgd=3e-3, beta_fgd=1e-4, gamma_fgd=5e-3, lambda_fgd=1e-6)]


def _pair(Cs, Ct, dtype):
    ms = randomize(fgdkern.MultiLevelFGDLoss(len(SIZES), Cs, Ct, backend="reference")).to(dtype)
    for m, hp in zip(ms.levels, LEVEL_HP):
        for name, value in hp.items():
            setattr(m, name, value)
    return ms, EagerLoopMultiLevelFGD.like(ms)


def test_baseline_takes_every_level_s_hyper_parameters():
    _, eager = _pair(6, 8, torch.float32)
    for level, hp in zip(eager.levels, LEVEL_HP):
        assert {name: getattr(level, name) for name in hp} == hp


def _loss_and_grads(loss_fn, S, T, boxes) -> dict:
    """{"loss", "S<k>", parameter name: gradient}."""
    S = [s.detach().requires_grad_() for s in S]
    names, params = zip(*loss_fn.named_parameters())
    loss = loss_fn(S, T, boxes, [IMG] * len(boxes))
    grads = torch.autograd.grad(loss, S + list(params))
    keys = ["loss", *(f"S{k}" for k in range(len(S))), *names]
    return dict(zip(keys, [loss.detach(), *grads]))


def _scale(name: str, values: dict) -> float:
    """The magnitude a value is compared at. A conv_mask bias shifts every logit of a
    softmax equally: its gradient is zero up to round-off, measured against its weight's."""
    if name.endswith("conv_mask_s.bias") or name.endswith("conv_mask_t.bias"):
        name = name.replace(".bias", ".weight")
    return float(values[name].abs().max())


@pytest.mark.parametrize("Cs,Ct", [(8, 8), (6, 8)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eager_loop_matches_reference(Cs, Ct, dtype):
    ms, eager = _pair(Cs, Ct, dtype)
    assert [n for n, _ in eager.named_parameters()] == [n for n, _ in ms.named_parameters()]
    S, T = random_features(3, Cs, Ct, SIZES, dtype=dtype, seed=1)
    boxes = random_boxes(3, IMG, max_boxes=5, seed=2)
    want, got = _loss_and_grads(ms, S, T, boxes), _loss_and_grads(eager, S, T, boxes)
    truth = functools.cache(lambda: _loss_and_grads(float64_copy(ms), to_float64(S),
                                                    to_float64(T), boxes))
    for name in want:
        assert_exact(name, got[name], want[name], lambda name=name: truth()[name],
                     elements(S, T), scale=_scale(name, want))


def test_loop_painted_masks_equal_the_rasterizer():
    boxes = random_boxes(4, IMG, max_boxes=8, seed=3)
    want = fgdkern.rasterize_boxes(boxes, [IMG] * 4, SIZES)
    for (H, W), (fg, bg) in zip(SIZES, want):
        got_fg, got_bg = paint_masks(boxes, [IMG] * 4, 4, H, W, torch.device("cpu"))
        assert torch.equal(got_fg, fg) and torch.equal(got_bg, bg)


# ------------------------------------------------- CWD, PKD, MGD (bench/channel_baselines.py)
def _values(loss_fn, S, rest) -> list:
    S = [s.detach().requires_grad_() for s in S]
    value = loss_fn(S, *rest)
    return [value.detach(), *torch.autograd.grad(value, S + list(loss_fn.parameters()))]


def _assert_same_as_reference(baseline, loss_fn, S, rest):
    """Loss and every gradient of the eager baseline as exact as the reference's
    (tests/harness.py, assert_exact_list); parameters on their common scale."""
    want, got = _values(loss_fn, S, rest), _values(baseline, S, rest)
    truth = functools.cache(lambda: _values(float64_copy(loss_fn), to_float64(S),
                                            to_float64(rest)))
    k, n = 1 + len(S), elements(S, rest)
    assert_exact_list(got[:k], want[:k], lambda: truth()[:k], n)
    assert_exact_list(got[k:], want[k:], lambda: truth()[k:], n,
                      scale=max((float(w.abs().max()) for w in want[k:]), default=0.0))


def _maps(widths, sizes, seed, N=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, c, h, w, generator=g) * 2 for c, (h, w) in zip(widths, sizes)]


def test_eager_cwd_is_the_reference():
    loss = fgdkern.CWDLoss(tau=2.0, loss_weight=3.0, backend="reference")
    S, T = _maps([4, 6, 3], SIZES, 1), _maps([4, 6, 3], SIZES, 2)
    _assert_same_as_reference(EagerCWD.like(loss), loss, S, [T])


@pytest.mark.parametrize("resize_stu", [True, False])
def test_eager_pkd_is_the_reference(resize_stu):
    loss = fgdkern.PKDLoss(loss_weight=6.0, resize_stu=resize_stu, backend="reference")
    S, T = _maps([4, 6, 3], [(6, 9), (6, 9), (3, 5)], 1), _maps([4, 6, 3], SIZES, 2)
    _assert_same_as_reference(EagerPKD.like(loss), loss, S, [T])


@pytest.mark.parametrize("Cs,Ct", [(6, 6), ([4, 6, 3], [8, 6, 5])])
def test_eager_mgd_is_the_reference(Cs, Ct):
    torch.manual_seed(0)
    loss = randomize(fgdkern.MGDLoss(Cs, Ct, alpha_mgd=0.1, backend="reference"))
    widths = lambda c: c if isinstance(c, list) else [c] * len(SIZES)  # noqa: E731
    S, T = _maps(widths(Cs), SIZES, 1), _maps(widths(Ct), SIZES, 2)
    masks = [(torch.rand(2, 1, h, w) > 0.65).float() for h, w in SIZES]
    _assert_same_as_reference(EagerMGD.like(loss), loss, S, [T, masks])
