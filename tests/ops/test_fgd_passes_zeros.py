"""The fused passes of every backend against their PyTorch contract on features with
exact zeros and subnormal values (tests.helpers.KINDS).

Random normal features are never exactly 0, so only these inputs pin sign(0) = 0 in
the gradient pass (the contract's torch.sign) and |0| = 0, softmaxes of all-equal
logits and all-zero rows in the statistics pass. The coefficient tables are random and
of order 1, so a kernel that takes sign(0) as +1 or -1 is off by order 1 at every zero.

Subnormal floats: the C++ kernels flush them to zero (csrc/cpu/vec.h,
FlushDenormals), so there the contract is evaluated on the flushed features. Triton
leaves it to the platform (the interpreter reads float32 subnormals as they are but
flushes bfloat16 ones), so there either reading is accepted, for all values alike.
"""
import pytest
import torch

from fgdkern.ops import fgd as fused
from fgdkern.reference import fgd_passes as contract
from tests.harness import FUSED_BACKENDS, assert_matches_a_reading, backend_device
from tests.helpers import KINDS, flush_denormals, make_coefs, make_inputs

# N = 3: with "zero_image" one image is all zero in S only, one in T only, one in both.
N, C, SIZES = 3, 7, [(5, 6), (2, 3)]


def readings(backend, kind, S, T):
    """The (S, T) the contract is evaluated on for this backend: more than one where the
    reading of subnormals is the hardware's choice."""
    flushed = ([flush_denormals(s) for s in S], [flush_denormals(t) for t in T])
    if kind != "denormal" or backend == "cpp":
        return [flushed]
    return [(S, T), flushed] if backend == "triton" else [(S, T)]


def check_passes(backend, kind, args, temps):
    stats, grad = fused.kernels(backend).stats, fused.kernels(backend).grad
    S, T = args[0], args[1]
    assert_matches_a_reading(stats(*args, temps), contract.fgd_stats,
                             readings(backend, kind, S, T), *args[2:], temps)
    coefs = make_coefs(S)
    assert_matches_a_reading(grad(S, T, *coefs), contract.fgd_grad,
                             readings(backend, kind, S, T), *coefs)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("kind", KINDS[1:])
def test_passes_with_zeros_match_contract(backend, kind):
    args = make_inputs(N, C, SIZES, device=backend_device(backend), seed=3, kind=kind)
    assert any((s == 0).any() for s in args[0]) or kind == "denormal"
    check_passes(backend, kind, args, [0.5, 1.5])


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype,layout,kind", [
    (torch.float16, "channels_last", "relu"),
    (torch.float16, "strided", "denormal"),       # float16 subnormals are float32 normals
    (torch.bfloat16, "strided", "zero_pixels"),
    (torch.bfloat16, "channels_last", "denormal"),  # bfloat16 subnormals are float32 ones
    (torch.float32, "strided", "zero_channels"),
    (torch.float32, "channels_last", "zero_image"),
])
def test_zeros_in_every_dtype_and_layout(backend, dtype, layout, kind):
    args = make_inputs(2, 9, [(4, 5), (3, 1)], dtype=dtype, device=backend_device(backend),
                       layout=layout, seed=4, kind=kind)
    check_passes(backend, kind, args, [0.7, 0.7])


def test_kinds_hold_what_they_say():
    """The inputs above: exact zeros where the kind puts them, subnormals of the dtype."""
    S, T, *_ = make_inputs(3, 6, [(4, 5)], kind="zero_image")
    assert [bool((S[0][n] == 0).all()) for n in range(3)] == [True, False, True]
    assert [bool((T[0][n] == 0).all()) for n in range(3)] == [False, True, True]
    S, T, *_ = make_inputs(2, 6, [(4, 5)], kind="zero_pixels")
    for F in (S[0], T[0]):
        zero_pixel = (F == 0).all(1)
        assert zero_pixel.any() and not zero_pixel.all() and (F != 0).any(1).any()
    S, _, *_ = make_inputs(2, 6, [(4, 5)], kind="zero_channels")
    assert (S[0] == 0).all(3).all(2).any() and not (S[0] == 0).all()
    S, _, *_ = make_inputs(2, 6, [(4, 5)], kind="relu")
    assert 0.3 < float((S[0] == 0).float().mean()) < 0.7 and (S[0] >= 0).all()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        S, *_ = make_inputs(2, 6, [(4, 5)], dtype=dtype, kind="denormal")
        sub = (S[0] != 0) & (S[0].float().abs() < torch.finfo(dtype).tiny)
        assert 0.1 < float(sub.float().mean()) < 0.5 and (S[0][sub] < 0).any()
