"""Edge cases of the C++ FGD passes beyond the shared pass tests.

Results independent of the thread count (bit for bit), a RetinaNet-like case
with many pixel blocks per image, softmax logits far from zero and a D with a
large mean (the block merges), mixed layouts and non-flattenable views (the
strided sweep), levels of different dtypes, and the kernels' own input checks
are compared with the PyTorch contract, fgdkern.reference.fgd_passes; the
float16 / bfloat16 reads and writes with torch's own conversions, bit for bit.
"""
import pytest
import torch

from fgdkern.reference import fgd_passes as contract
from tests.ops.test_fgd_passes import make_coefs, make_inputs

pytestmark = pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("fgdkern::fgd_stats_cpp", "CPU"),
    reason="C++ kernels not built")

FLOAT_MIN = torch.finfo(torch.float32).tiny  # below it, the kernels flush denormals to zero


def stats(*args):
    return torch.ops.fgdkern.fgd_stats_cpp(*args)


def grad(*args):
    return torch.ops.fgdkern.fgd_grad_cpp(*args)


def errors(got, args, fn):
    """Largest error of got and of the contract in float32, both against float64."""
    want = fn(*[[x.double() for x in a] if isinstance(a, list) else a for a in args])
    ref = fn(*args)
    return [((g.double() - w).abs().max().item(), (r.double() - w).abs().max().item(),
             w.abs().max().item()) for g, r, w in zip(got, ref, want)]


def check_both(S, T, fg, bg, w_s, w_t, temp=0.5):
    """The kernels are at most 2x less accurate than the contract computed in float32."""
    coefs = make_coefs(S)
    for got, args, fn in [(stats(S, T, fg, bg, w_s, w_t, temp), (S, T, fg, bg, w_s, w_t, temp),
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
            runs.append((stats(*args, 0.5), grad(args[0], args[1], *coefs)))
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


def valid_args():
    return make_inputs(2, 6, [(3, 4), (2, 2)])


@pytest.mark.parametrize("edit,message", [
    (lambda a: a[1].pop(), "one tensor per level"),
    (lambda a: a[1].__setitem__(0, a[1][0][:, :5]), r"T\[0\] must have the shape of S\[0\]"),
    (lambda a: a[1].__setitem__(1, a[1][1].half()), r"T\[1\] must have the dtype of S\[1\]"),
    (lambda a: a[0].__setitem__(0, a[0][0].double()), "float32, float16 or bfloat16"),
    (lambda a: a[0].__setitem__(0, a[0][0][0]), r"must be \(N, C, H, W\)"),
    (lambda a: a[2].__setitem__(0, a[2][0][:, :2]), r"fg\[0\] must be a float32 CPU tensor"),
    (lambda a: a[5].__setitem__(1, a[5][1].double()), r"w_t\[1\] must be a float32 CPU tensor"),
])
def test_stats_rejects_bad_inputs(edit, message):
    args = valid_args()
    edit(args)
    with pytest.raises(RuntimeError, match=message):
        stats(*args, 0.5)


@pytest.mark.parametrize("temp", [0.0, -1.0, float("nan")])
def test_stats_rejects_bad_temp(temp):
    with pytest.raises(RuntimeError, match="temp must be positive"):
        stats(*valid_args(), temp)


@pytest.mark.parametrize("which,bad,message", [
    (0, lambda x: x[:, :4], r"pix_coef\[0\] must be a float32 CPU tensor of shape \[2, 5, 12\]"),
    (1, lambda x: x.half(), r"chan_coef\[0\] must be a float32"),
    (2, lambda x: x[:1], r"K\[0\] must be a float32 CPU tensor of shape \[2, 2\]"),
])
def test_grad_rejects_bad_coefficients(which, bad, message):
    S, T, *_ = valid_args()
    coefs = [list(c) for c in make_coefs(S)]
    coefs[which][0] = bad(coefs[which][0])
    with pytest.raises(RuntimeError, match=message):
        grad(S, T, *coefs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_reads_are_exact(dtype):
    """Every 16-bit pattern (subnormals, inf, nan included) is read as its float value.

    bfloat16 subnormals are float denormals, which the kernels flush to zero.
    """
    bits = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)
    S = bits.view(dtype).reshape(1, 1, 256, 256)
    one = torch.ones(1)
    pix = stats([S], [torch.zeros_like(S)], [torch.zeros(1, 256, 256)], [torch.zeros(1, 256, 256)],
                [one], [one], 0.5)[0]
    value = S.float().flatten()
    value[value.abs() < FLOAT_MIN] = 0
    torch.testing.assert_close(pix[0, 0], value.abs(), rtol=0, atol=0, equal_nan=True)  # gs_s
    torch.testing.assert_close(pix[0, 2], value, rtol=0, atol=0, equal_nan=True)        # z_s


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_writes_round_like_torch(dtype):
    """dS = k_const when S = T = 0 and g_ctx_s = w_s = 0: the float -> dtype rounding alone."""
    g = torch.Generator().manual_seed(8)
    grid = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(dtype).float()
    halfway = (grid[:-1] + grid[1:]) / 2  # ties round to even
    wild = torch.randn(4096, generator=g) * torch.logspace(-40, 38, 4096)
    special = torch.tensor([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e-8, 6e-8, 3e-8, float("inf"),
                            -float("inf"), float("nan"), 3.4e38, 1e-39])
    values = torch.cat([grid, halfway, wild, special])
    C = values.numel()
    S = torch.zeros(1, C, 1, 1, dtype=dtype)
    chan = torch.zeros(1, 9, C)
    chan[0, 2] = values  # k_const
    dS = grad([S], [S], [torch.zeros(1, 5, 1)], [chan], [torch.zeros(1, 2)])[0]
    want = values.to(dtype)
    want[values.abs() < FLOAT_MIN] = 0  # float denormals are flushed before rounding
    assert torch.equal(dS.flatten().view(torch.int16)[~values.isnan()],
                       want.view(torch.int16)[~values.isnan()])
    assert dS.flatten()[values.isnan()].isnan().all()
