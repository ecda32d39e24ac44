"""The fused passes of every backend against their PyTorch contract.

fgdkern.reference.fgd_passes fixes what fgd_stats and fgd_grad compute; here
each kernel is compared with it output by output (harness.assert_matches_contract: as
exact as the float32 contract against float64), over shapes
that stress tiling (odd C, 1x1 and non-square maps, several levels of
different sizes), dtypes and memory formats.
"""
import pytest
import torch

from fgdkern.ops import fgd as fused
from fgdkern.reference import fgd_passes as contract
from tests.harness import (FUSED_BACKENDS, LAYOUTS, LOW_PRECISION, assert_matches_contract,
                           backend_device)
from tests.helpers import make_coefs, make_inputs

BACKENDS = FUSED_BACKENDS
# (N, C, [(H, W), ...])
SHAPES = [
    (1, 1, [(1, 1)]),
    (2, 5, [(3, 7)]),
    (2, 37, [(9, 6), (5, 3), (1, 2)]),
    (3, 16, [(12, 10), (6, 5)]),
    (1, 130, [(4, 33)]),
]
device_of = backend_device


def temps(args, t=0.5):
    """One temperature per level of make_inputs' levels."""
    return [t] * len(args[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,C,sizes", SHAPES)
def test_stats_match_contract(backend, N, C, sizes):
    args = make_inputs(N, C, sizes, device=device_of(backend))
    got = fused.kernels(backend).stats(*args, temps(args))
    assert_matches_contract(got, contract.fgd_stats, *args, temps(args))


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_per_level_temperatures(backend):
    """Each level's statistics use that level's temperature (the x_fg / x_bg rows)."""
    args = make_inputs(2, 9, [(6, 7), (3, 4), (2, 2)], device=device_of(backend))
    got = fused.kernels(backend).stats(*args, [0.2, 0.5, 3.0])
    assert_matches_contract(got, contract.fgd_stats, *args, [0.2, 0.5, 3.0])
    assert not torch.allclose(got[3].cpu(), contract.fgd_stats(*args, [0.5] * 3)[3].cpu())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,C,sizes", SHAPES)
def test_grad_matches_contract(backend, N, C, sizes):
    S, T, *_ = make_inputs(N, C, sizes, device=device_of(backend))
    coefs = make_coefs(S)
    got = fused.kernels(backend).grad(S, T, *coefs)
    assert_matches_contract(got, contract.fgd_grad, S, T, *coefs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_and_layouts(backend, dtype, layout):
    """Low-precision inputs are read as they are and accumulated in float32."""
    args = make_inputs(2, 19, [(5, 6), (3, 2)], dtype=dtype, device=device_of(backend),
                       layout=layout)
    assert_matches_contract(fused.kernels(backend).stats(*args, temps(args, 0.7)),
                            contract.fgd_stats, *args, temps(args, 0.7))
    S, T = args[0], args[1]
    coefs = make_coefs(S)
    got = fused.kernels(backend).grad(S, T, *coefs)
    assert_matches_contract(got, contract.fgd_grad, S, T, *coefs)   # dS in the dtype of S
    for d, s in zip(got[:2], S):  # dS keeps the memory format of a dense S
        if s.is_contiguous() or s.is_contiguous(memory_format=torch.channels_last):
            assert d.stride() == s.stride()


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    args = make_inputs(2, 33, [(7, 9), (4, 5)], device=device_of(backend))
    first = fused.kernels(backend).stats(*args, temps(args))
    coefs = make_coefs(args[0])
    g_first = fused.kernels(backend).grad(args[0], args[1], *coefs)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(first, fused.kernels(backend).stats(*args, temps(args))))
        g = fused.kernels(backend).grad(args[0], args[1], *coefs)
        assert all(torch.equal(a, b) for a, b in zip(g_first, g))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    args = make_inputs(2, 6, [(3, 4), (2, 2)], device=device_of(backend))
    stats_op = getattr(torch.ops.fgdkern, f"fgd_stats_{backend}").default
    grad_op = getattr(torch.ops.fgdkern, f"fgd_grad_{backend}").default
    torch.library.opcheck(stats_op, (*args, temps(args)), test_utils=("test_schema", "test_faketensor"))
    coefs = make_coefs(args[0])
    torch.library.opcheck(grad_op, (args[0], args[1], *coefs),
                          test_utils=("test_schema", "test_faketensor"))
