"""Edge cases of the Triton FGD kernels beyond the shared pass tests.

How work is split (runs of pixel blocks per program, merged in-kernel and in
the combine kernel), levels that share one launch through element offsets,
softmax logits far from zero, a D with a large mean, mixed layouts and dtypes
across levels, and the launcher's argument checks. Each case is compared
with the PyTorch contract, fgdkern.reference.fgd_passes.
"""
import os

import pytest
import torch

from fgdkern.ops.fgd import triton_available
from fgdkern.reference import fgd_passes as contract
from tests.conftest import HAS_CUDA, backend_device
from tests.ops.test_fgd_passes import TOL, assert_close_list, make_coefs, make_inputs

pytestmark = pytest.mark.skipif(
    not (triton_available() and (HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1")),
    reason="needs triton on CUDA or TRITON_INTERPRET=1")

DEVICE = backend_device("triton")
F32 = TOL[torch.float32]


def kernels():
    from fgdkern.triton import fgd
    return fgd


def check_both_passes(args, temp=0.5, programs=None, stats_tol=F32, grad_tol=F32):
    K = kernels()
    assert_close_list(K.fgd_stats(*args, temp, programs=programs), contract.fgd_stats(*args, temp),
                      **stats_tol)
    S, T = args[0], args[1]
    coefs = make_coefs(S)
    assert_close_list(K.fgd_grad(S, T, *coefs, programs=programs), contract.fgd_grad(S, T, *coefs),
                      **grad_tol)


# several blocks per image (143 px), C not a multiple of any BLOCK_C, a 1x1 level
@pytest.mark.parametrize("programs", [1, 5, 10_000])  # one run per image .. one block per run
def test_runs_of_blocks(programs):
    check_both_passes(make_inputs(2, 70, [(13, 11), (5, 7), (1, 1)], device=DEVICE),
                      programs=programs)


def test_eight_levels_one_image():
    sizes = [(9, 8), (7, 5), (4, 6), (3, 3), (2, 5), (1, 3), (2, 1), (1, 1)]
    check_both_passes(make_inputs(1, 3, sizes, device=DEVICE))


@pytest.mark.parametrize("programs", [1, 10_000])
def test_softmax_logits_far_from_zero(programs):
    """Block maxima differ by tens: the online softmaxes must rescale, not overflow.

    Logits of ~100 carry rounding errors of ~1e-5 whatever the summation order, so
    the softmax-weighted outputs agree to that, not to float32 epsilon.
    """
    S, T, fg, bg, w_s, w_t = make_inputs(2, 33, [(11, 12), (3, 4)], device=DEVICE)
    w_s = [w * 40 for w in w_s]
    w_t = [w * 40 for w in w_t]
    check_both_passes((S, T, fg, bg, w_s, w_t), temp=0.02, programs=programs,
                      stats_tol=dict(rtol=2e-4, atol=1e-5))


@pytest.mark.parametrize("programs", [1, 10_000])
def test_second_moment_of_shifted_d(programs):
    """D with a mean 1e3 times its spread: the centred moment must not cancel."""
    S, T, *rest = make_inputs(2, 7, [(10, 13)], device=DEVICE)
    S = [t + 100.0 + 0.1 * s for s, t in zip(S, T)]
    got = kernels().fgd_stats(S, T, *rest, 0.5, programs=programs)
    want = contract.fgd_stats(S, T, *rest, 0.5)
    torch.testing.assert_close(got[1][:, 5].cpu(), want[1][:, 5].cpu(), rtol=1e-4, atol=0)


def test_layouts_differ_across_levels():
    """channels_last, a strided view and an expanded (stride 0) teacher in one launch."""
    (s0, s1, s2), (t0, t1, t2), *rest = make_inputs(2, 6, [(5, 4), (3, 3), (2, 3)], device=DEVICE)
    s0, t0 = (x.contiguous(memory_format=torch.channels_last) for x in (s0, t0))
    s1 = torch.randn(2, 12, 3, 3, device=DEVICE)[:, 1::2]
    t2 = t2[:1].expand(2, -1, -1, -1)
    check_both_passes(([s0, s1, s2], [t0, t1, t2], *rest))


def test_all_channels_last_float32():
    check_both_passes(make_inputs(2, 37, [(6, 5), (3, 2)], device=DEVICE, layout="channels_last"))


def test_levels_below_level_zero_in_memory():
    """Element offsets from level 0 are negative when a level lies before it."""
    N, C, sizes = 2, 5, [(4, 6), (3, 2)]
    S, T, *rest = make_inputs(N, C, sizes, device=DEVICE)
    n0, n1 = S[0].numel(), S[1].numel()
    buf = torch.empty(2 * (n0 + n1), device=DEVICE)  # [S1 | T1 | S0 | T0]
    views = [buf[2 * n1:2 * n1 + n0], buf[2 * n1 + n0:], buf[:n1], buf[n1:2 * n1]]
    S = [views[0].view_as(S[0]).copy_(S[0]), views[2].view_as(S[1]).copy_(S[1])]
    T = [views[1].view_as(T[0]).copy_(T[0]), views[3].view_as(T[1]).copy_(T[1])]
    check_both_passes((S, T, *rest))


def test_levels_of_different_dtypes():
    """One launch per dtype; outputs in level order."""
    a = make_inputs(2, 9, [(4, 5)], device=DEVICE, dtype=torch.float16)
    b = make_inputs(2, 9, [(3, 3)], device=DEVICE)
    args = tuple(x + y for x, y in zip(a, b))
    check_both_passes(args, grad_tol=dict(rtol=2e-3, atol=1e-4))


def test_repeatable_bit_for_bit():
    K = kernels()
    args = make_inputs(2, 40, [(9, 9), (2, 3)], device=DEVICE)
    coefs = make_coefs(args[0])
    def both(programs):
        return (K.fgd_stats(*args, 0.5, programs=programs)
                + K.fgd_grad(*args[:2], *coefs, programs=programs))

    for programs in (1, 5):
        assert all(torch.equal(x, y) for x, y in zip(both(programs), both(programs)))


def _bad(args, k, value):
    return tuple(value if i == k else a for i, a in enumerate(args))


@pytest.mark.parametrize("case,error,name", [
    ("T dtype", TypeError, r"T\[0\]"),
    ("float64", TypeError, r"S\[0\]"),
    ("fg shape", ValueError, r"fg\[0\]"),
    ("w_s dtype", TypeError, r"w_s\[0\]"),
    ("no levels", ValueError, "S and T"),
    ("T shape", ValueError, r"T\[0\]"),
])
def test_argument_checks(case, error, name):
    args = make_inputs(1, 4, [(3, 3)], device=DEVICE)
    S, T, fg, bg, w_s, w_t = args
    bad = {
        "T dtype": _bad(args, 1, [T[0].half()]),
        "float64": _bad(_bad(args, 0, [S[0].double()]), 1, [T[0].double()]),
        "fg shape": _bad(args, 2, [fg[0][:, :2]]),
        "w_s dtype": _bad(args, 4, [w_s[0].half()]),
        "no levels": ([], [], [], [], [], []),
        "T shape": _bad(args, 1, [T[0][..., :2]]),
    }[case]
    with pytest.raises(error, match=name):
        kernels().fgd_stats(*bad, 0.5)


def test_grad_argument_checks():
    S, T, *_ = make_inputs(1, 4, [(3, 3)], device=DEVICE)
    pix, chan, K = make_coefs(S)
    with pytest.raises(ValueError, match=r"chan_coef\[0\]"):
        kernels().fgd_grad(S, T, pix, [chan[0][:, :8]], K)
    with pytest.raises(TypeError, match=r"K\[0\]"):
        kernels().fgd_grad(S, T, pix, chan, [K[0].double()])


def test_layout_chosen_for_views():
    """The LAYOUT constexpr holds for every view of a launch (it decides the addressing)."""
    K = kernels()
    x = torch.empty(2, 8, 5, 6, device=DEVICE)
    cl = x.contiguous(memory_format=torch.channels_last)
    sliced = torch.empty(2, 16, 5, 6, device=DEVICE)[:, ::2]
    cropped = torch.empty(2, 8, 5, 9, device=DEVICE)[..., :6]
    assert K._layout([x, x[:, :3]]) == K.PIX_DENSE.value
    assert K._layout([cl, torch.empty(2, 8, 1, 1, device=DEVICE)]) == K.CHANNELS_DENSE.value
    assert K._layout([x, sliced]) == K.PIX_DENSE.value  # channel stride alone does not matter
    assert K._layout([x, cropped]) == K.GENERAL.value
    assert K._layout([x, cl]) == K.GENERAL.value
