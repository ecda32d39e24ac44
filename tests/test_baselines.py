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
from tests.harness import assert_exact, elements, float64_copy, to_float64  # noqa: E402
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
