"""Precision of the fused FGD paths where float32 is at its limit, against float64.

Small maps (one to a dozen pixels, many channels) make the conv_mask weight
gradients a short sum of nearly cancelling products; features of magnitude
1e-3 or 1e3 push the attention softmaxes and the second moments to the ends
of float32's range. For the loss, dS and every parameter gradient of every
backend, the error against a float64 evaluation of the reference (the same
module and inputs in float64) must stay within twice the float32 reference's
own error, plus the noise floor of the harness's rule (docs/kernels.md, "How
exactness is tested"; its sum length widened by the attention softmaxes'
conditioning, as in the fuzz), here with every output on its own scale: the harness
scales the parameter gradients together, which is right for a gradient that
cancels to zero but would let a conv_mask gradient much smaller than the others
drift.
"""
import copy
import functools

import pytest
import torch

from tests.harness import ALL_FUSED, backend_device, conditioned_sum_length, noise_floor
from tests.losses.test_fgd import build, loss_and_grads

# (N, C, level sizes, feature magnitude, seed): small maps first.
SMALL = [
    (1, 96, [(3, 4)], 1.0, 3),
    (1, 96, [(3, 4)], 1.0, 0),
    (1, 32, [(1, 1)], 1.0, 0),
    (2, 48, [(2, 2)], 1.0, 1),
    (3, 64, [(3, 4), (1, 2)], 1.0, 2),
    (2, 8, [(2, 3), (1, 1)], 1.0, 3),
]
MAGNITUDES = [
    (2, 32, [(8, 12), (4, 6)], 1e-3, 0),
    (2, 32, [(8, 12), (4, 6)], 1e3, 0),
    (1, 96, [(3, 4)], 1e3, 3),
]
# Features of mean 1e3 and spread 1: the spatial attention softmax(mean_c |F| / temp)
# then turns on differences of 1e-3 between values near 1e3, so it needs the
# per-pixel sums over channels to about 1 ulp: compensated in C++ (sweeps.h), a
# pairwise tree in Triton (tiles.py, sum_channels).
OFFSET = [(2, 64, [(16, 24)], 1e3, 1)]
# Sharper GcBlock softmaxes than the harness's parameters: the conv_mask weights
# are scaled up so that the context pooling weighs the pixels unevenly.
MASK_SCALE = 3.0


@functools.lru_cache(maxsize=None)
def _case(N, C, sizes, scale, seed, offset=0.0):
    ms, S, T, boxes, shapes = build(N, C, C, list(sizes), seed=seed)
    with torch.no_grad():
        for m in ms.levels:
            m.conv_mask_s.weight.mul_(MASK_SCALE)
            m.conv_mask_t.weight.mul_(MASK_SCALE)
    S = [s * scale + offset for s in S]
    T = [t * scale + offset for t in T]
    ms64 = copy.deepcopy(ms).double()
    _, loss64, g64 = loss_and_grads(ms64, [s.double() for s in S], [t.double() for t in T],
                                    boxes, shapes, "reference")
    want = dict(g64, loss=loss64)
    ref = _errors(ms, S, T, boxes, shapes, "reference", want)
    return ms, S, T, boxes, shapes, want, ref


def _errors(ms, S, T, boxes, shapes, backend, want):
    """Largest absolute error vs float64 of the loss and of every gradient."""
    dev = backend_device(backend)
    ms = copy.deepcopy(ms).to(dev)
    _, loss, g = loss_and_grads(ms, [s.to(dev) for s in S], [t.to(dev) for t in T], boxes, shapes,
                                backend)
    got = dict(g, loss=loss)
    return {k: float((got[k].detach().double().cpu() - v).abs().max()) for k, v in want.items()
            if v is not None}


def _check(backend, N, C, sizes, scale, seed, offset=0.0):
    ms, S, T, boxes, shapes, want, ref = _case(N, C, tuple(sizes), scale, seed, offset)
    got = _errors(ms, S, T, boxes, shapes, backend, want)
    # the harness's sum length, widened where features of mean 1e3 condition the softmaxes
    n = conditioned_sum_length(S, T, [m.temp for m in ms.levels])
    bad = []
    for name, err in got.items():
        floor = noise_floor(float(want[name].abs().max()), n)
        if err > 2 * ref[name] + floor:
            bad.append(f"{name}: {err:.3g} vs float64, the float32 reference's {ref[name]:.3g}, "
                       f"floor {floor:.3g}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("backend", ALL_FUSED)
@pytest.mark.parametrize("N,C,sizes,scale,seed", SMALL)
def test_small_maps_as_precise_as_the_reference(backend, N, C, sizes, scale, seed):
    _check(backend, N, C, sizes, scale, seed)


@pytest.mark.parametrize("backend", ALL_FUSED)
@pytest.mark.parametrize("N,C,sizes,scale,seed", MAGNITUDES)
def test_feature_magnitudes_as_precise_as_the_reference(backend, N, C, sizes, scale, seed):
    _check(backend, N, C, sizes, scale, seed)


@pytest.mark.parametrize("backend", ALL_FUSED)
@pytest.mark.parametrize("N,C,sizes,offset,seed", OFFSET)
def test_large_mean_features_as_precise_as_the_reference(backend, N, C, sizes, offset, seed):
    _check(backend, N, C, sizes, 1.0, seed, offset)
