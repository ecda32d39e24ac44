"""The code every backend shares, tested on its own: a fused path compared with the
reference cannot see a mistake in code both run.

* the weighting: alpha_fgd .. lambda_fgd each scale exactly their own term;
* per-level hyper-parameters: a pyramid whose levels differ in temp and in every
  weight equals the sum of separately built single-level losses;
* the align layer: the loss of Cs != Ct features is the loss of the features
  aligned by hand with the align conv's weight and bias (and dS follows by the chain
  rule);
* the masks: the fg / bg each level's pass receives are fgdkern.rasterize_boxes of
  that level's size.
"""
import pytest
import torch

import fgdkern
from fgdkern import FGDLoss, MultiLevelFGDLoss
from fgdkern.ops import fgd as fgd_ops
from tests.harness import (ALL_FUSED, assert_exact, backend_device, elements, float64_copy,
                           float64_run)
from tests.helpers import random_boxes, random_features, randomize

BACKENDS = ["reference"] + ALL_FUSED
# Code after the passes (weighting) or before them (masks) is one for all fused backends.
SHARED = ["reference", "torch", ALL_FUSED[1]]
IMG = (64, 96)  # not square: a mistake between height and width changes the masks
WEIGHTS = ["alpha_fgd", "beta_fgd", "gamma_fgd", "lambda_fgd"]
TERMS = ["fg_loss", "bg_loss", "mask_loss", "rela_loss"]
# Per level: temp, alpha, beta, gamma, lambda, all different between levels.
LEVEL_HP = [dict(temp=0.4, alpha_fgd=2e-3, beta_fgd=7e-4, gamma_fgd=3e-3, lambda_fgd=4e-5),
            dict(temp=0.9, alpha_fgd=5e-4, beta_fgd=3e-3, gamma_fgd=6e-4, lambda_fgd=9e-6),
            dict(temp=2.0, alpha_fgd=1e-2, beta_fgd=2e-4, gamma_fgd=1.5e-2, lambda_fgd=3e-4)]


def features(N, Cs, Ct, sizes, device, seed=0):
    S, T = random_features(N, Cs, Ct, sizes, seed=seed)
    boxes = random_boxes(N, IMG, seed=seed)
    return [s.to(device) for s in S], [t.to(device) for t in T], boxes, [IMG] * N


@pytest.mark.parametrize("backend", SHARED)
def test_each_weight_scales_its_own_term(backend):
    dev = backend_device(backend)
    m = randomize(FGDLoss(6, 6, backend=backend), 1).to(dev)
    S, T, boxes, shapes = features(2, 6, 6, [(6, 8)], dev)
    terms = m.terms(S[0], T[0], boxes, shapes)
    values = [float(getattr(terms, t).detach()) for t in TERMS]
    assert len(set(values)) == 4 and min(values) > 0  # a swap of two terms would show
    for k, name in enumerate(WEIGHTS):
        for w in WEIGHTS:
            setattr(m, w, 0.0)
        setattr(m, name, 0.37)
        torch.testing.assert_close(m(S[0], T[0], boxes, shapes), 0.37 * getattr(terms, TERMS[k]),
                                   rtol=1e-6, atol=0, msg=lambda msg: f"{name}: {msg}")
    for w, value in zip(WEIGHTS, (2.0, 3.0, 5.0, 7.0)):
        setattr(m, w, value)
    want = 2 * terms.fg_loss + 3 * terms.bg_loss + 5 * terms.mask_loss + 7 * terms.rela_loss
    torch.testing.assert_close(m(S[0], T[0], boxes, shapes), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_level_hyper_parameters(backend):
    """Every level keeps its own temp and weights: the pyramid is the sum of single-level
    losses, each built on its own from its hyper-parameters (on the reference), and a
    weight of one level changes that level only."""
    dev = backend_device(backend)
    sizes = [(6, 8), (4, 5), (2, 3)]
    ms = randomize(MultiLevelFGDLoss(3, 5, 6, backend=backend), 2).to(dev)
    for m, hp in zip(ms.levels, LEVEL_HP):
        for k, v in hp.items():
            setattr(m, k, v)
    S, T, boxes, shapes = features(2, 5, 6, sizes, dev, seed=1)
    want = 0.0
    for m, hp, s, t in zip(ms.levels, LEVEL_HP, S, T):
        single = FGDLoss(5, 6, backend="reference", **hp).to(dev)
        single.load_state_dict(m.state_dict())
        want = want + single(s, t, boxes, shapes)
    assert_exact("pyramid", ms(S, T, boxes, shapes), want, float64_run(ms, S, T, boxes, shapes),
                 elements(S, T))
    if backend != "reference":
        return
    # the sum would not match with any level given another level's settings
    for k in range(3):
        for name, value in LEVEL_HP[(k + 1) % 3].items():
            old = getattr(ms.levels[k], name)
            setattr(ms.levels[k], name, value)
            assert not torch.allclose(ms(S, T, boxes, shapes), want, rtol=1e-4, atol=0), (k, name)
            setattr(ms.levels[k], name, old)


@pytest.mark.parametrize("backend", BACKENDS)
def test_align_layer_is_the_align_conv(backend):
    dev = backend_device(backend)
    Cs, Ct = 5, 8
    m = randomize(FGDLoss(Cs, Ct, backend=backend), 3).to(dev)
    same = FGDLoss(Ct, Ct, backend=backend).to(dev)  # no align layer, the other parameters
    same.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("align")})
    S, T, boxes, shapes = features(2, Cs, Ct, [(6, 7)], dev, seed=2)
    S = S[0].requires_grad_()
    weight, bias = m.align.weight.detach()[:, :, 0, 0], m.align.bias.detach()
    aligned = (torch.einsum("oc,nchw->nohw", weight, S.detach()) + bias[:, None, None])
    aligned.requires_grad_()
    loss = m(S, T[0], boxes, shapes)
    want = same(aligned, T[0], boxes, shapes)
    (dS,), (dA,) = torch.autograd.grad(loss, [S]), torch.autograd.grad(want, [aligned])
    S64 = S.detach().double().requires_grad_()
    loss64 = float64_copy(m)(S64, T[0].double(), boxes, shapes)
    n = elements(S, T)
    assert_exact("loss", loss, want, lambda: loss64, n)
    assert_exact("dS", dS, torch.einsum("oc,nohw->nchw", weight, dA),
                 lambda: torch.autograd.grad(loss64, [S64])[0], n)


@pytest.mark.parametrize("backend", SHARED)
def test_each_level_gets_the_masks_of_its_size(backend, monkeypatch):
    """The fg / bg handed to the passes (or to the reference) are rasterize_boxes' at
    each level's own size, for images of different sizes."""
    dev = backend_device(backend)
    sizes = [(8, 12), (5, 7), (2, 3)]
    shapes = [(64, 96), (60, 80), (40, 96)]
    ms = randomize(MultiLevelFGDLoss(3, 4, 4, backend=backend), 4).to(dev)
    S, T = random_features(3, 4, 4, sizes, seed=4)
    S, T = [s.to(dev) for s in S], [t.to(dev) for t in T]
    boxes = random_boxes(3, IMG, max_boxes=8, seed=4, empty_images=())
    seen = []
    if backend == "reference":
        real = fgd_ops.fgd_reference

        def spy(S, T, fg, bg, *rest):
            seen.append((fg, bg))
            return real(S, T, fg, bg, *rest)
        monkeypatch.setattr(fgd_ops, "fgd_reference", spy)
    else:
        real_kernels = fgd_ops.kernels

        def kernels(impl):
            k = real_kernels(impl)

            def stats_spy(S, T, fg, bg, *rest):
                seen.extend(zip(fg, bg))
                return k.stats(S, T, fg, bg, *rest)
            return k._replace(stats=stats_spy)
        monkeypatch.setattr(fgd_ops, "kernels", kernels)
    ms(S, T, boxes, shapes)
    want = fgdkern.rasterize_boxes(boxes, shapes, sizes)
    assert len(seen) == len(sizes)
    for k, ((fg, bg), (want_fg, want_bg)) in enumerate(zip(seen, want)):
        assert fg.shape == (3, *sizes[k])
        assert torch.equal(fg.cpu(), want_fg) and torch.equal(bg.cpu(), want_bg), k
        assert (want_fg > 0).any() and (k == 2 or (want_bg > 0).any())
