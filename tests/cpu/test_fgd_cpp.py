"""Edge cases of both C++ FGD passes beyond the shared pass tests.

Results independent of the thread count (bit for bit), a RetinaNet-like case
with many pixel blocks per image, softmax logits far from zero and a D with a
large mean (the block merges), mixed layouts and non-flattenable views (the
strided sweep) and levels of different dtypes are compared with the PyTorch
contract, fgdkern.reference.fgd_passes. Checks of one pass alone are in
test_fgd_stats_cpp.py and test_fgd_grad_cpp.py.
"""
import pytest
import torch

from fgdkern.reference import fgd_passes as contract
from tests.cpu.cpp_ops import grad, make_coefs, needs_cpp, stats
from tests.helpers import make_inputs

pytestmark = needs_cpp


def errors(got, args, fn):
    """Largest error of got and of the contract in float32, both against float64."""
    want = fn(*[[x.double() for x in a] if isinstance(a, list) and torch.is_tensor(a[0]) else a
                for a in args])
    ref = fn(*args)
    return [((g.double() - w).abs().max().item(), (r.double() - w).abs().max().item(),
             w.abs().max().item()) for g, r, w in zip(got, ref, want)]


def check_both(S, T, fg, bg, w_s, w_t, temp=0.5):
    """The kernels are at most 2x less accurate than the contract computed in float32."""
    coefs = make_coefs(S)
    temps = [temp] * len(S)
    for got, args, fn in [(stats(S, T, fg, bg, w_s, w_t, temps), (S, T, fg, bg, w_s, w_t, temps),
                           contract.fgd_stats),
                          (grad(S, T, *coefs), (S, T, *coefs), contract.fgd_grad)]:
        for i, (err, err_torch, scale) in enumerate(errors(got, args, fn)):
            assert err <= 2 * err_torch + 1e-6 * scale, (fn.__name__, i, err, err_torch, scale)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_thread_count_does_not_change_a_bit(layout):
    # (an extension built without -fopenmp runs at::parallel_for on one thread)
    # C = 24: blocks of 1024 pixels, so the 64 x 50 level has 4 blocks per image
    args = make_inputs(3, 24, [(64, 50), (13, 7), (1, 1)], layout=layout)
    coefs = make_coefs(args[0])
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append((stats(*args, [0.5, 0.25, 2.0]), grad(args[0], args[1], *coefs)))
    finally:
        torch.set_num_threads(threads)
    for s, g in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0][0], s))
        assert all(torch.equal(a, b) for a, b in zip(runs[0][1], g))


def test_retinanet_like_levels():
    check_both(*make_inputs(2, 256, [(40, 56), (20, 28), (10, 14), (5, 7), (3, 4)], seed=3))


def test_far_logits_and_large_mean_difference():
    S, T, fg, bg, w_s, w_t = make_inputs(2, 40, [(30, 41), (4, 3)], seed=4)
    T = [t - 50.0 for t in T]                 # mean of D about 50: m2_d must not cancel
    w_s = [30.0 * w for w in w_s]             # z_s spans hundreds: block maxima differ
    w_t = [w - 2.0 for w in w_t]              # z_t far below zero
    check_both(S, T, fg, bg, w_s, w_t, temp=0.05)


def test_mixed_layouts_and_views():
    S, T, fg, bg, w_s, w_t = make_inputs(2, 21, [(9, 20), (6, 5), (5, 8), (5, 8)], seed=5)
    S[0] = S[0].contiguous(memory_format=torch.channels_last)  # T[0] stays NCHW
    S[1], T[1] = torch.randn(2, 21, 6, 9)[..., 1:6], torch.randn(2, 21, 7, 7)[:, :, 1:, 2:]  # crops
    S[2] = torch.randn(2, 8, 5, 21).permute(0, 3, 2, 1)  # channels innermost, odd pixel strides
    T[2] = torch.randn(2, 5, 9, 21)[:, :, 1:].permute(0, 3, 1, 2)
    S[3], T[3] = torch.randn(2, 21, 5, 16)[..., ::2], torch.randn(2, 21, 10, 8)[:, :, ::2]
    check_both(S, T, fg, bg, w_s, w_t)
    dS = grad(S, T, *make_coefs(S))[:4]
    assert dS[0].stride() == S[0].stride()


def test_levels_of_different_dtypes_and_channels():
    S0, T0, fg0, bg0, ws0, wt0 = make_inputs(2, 33, [(11, 12)], dtype=torch.bfloat16, seed=6)
    S1, T1, fg1, bg1, ws1, wt1 = make_inputs(2, 8, [(7, 5)], dtype=torch.float16, seed=7)
    check_both(S0 + S1, T0 + T1, fg0 + fg1, bg0 + bg1, ws0 + ws1, wt0 + wt1)
