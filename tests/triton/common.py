"""What the Triton kernel tests share: when they run, where, and the two-pass check.

Each case is compared with the PyTorch contract, fgdkern.reference.fgd_passes.
"""
import os

import pytest

from fgdkern.ops import dispatch
from fgdkern.reference import fgd_passes as contract
from tests.helpers import make_coefs  # noqa: F401  (the Triton tests import it from here)
from tests.harness import HAS_CUDA, assert_matches_contract, backend_device

needs_kernels = pytest.mark.skipif(
    not (dispatch.HAS_TRITON and (HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1")),
    reason="needs triton (dispatch.MIN_TRITON or newer) on CUDA or TRITON_INTERPRET=1")

DEVICE = backend_device("triton")




def same_temps(args, temp=0.5):
    """One temperature, temp, for every level of args = (S, T, ...)."""
    return [temp] * len(args[0])


def check_both_passes(args, temps=None, programs=None):
    """Both kernels against the contract (harness.assert_matches_contract): fgd_stats on
    args (S, T, fg, bg, w_s, w_t) and temps (default 0.5 per level), fgd_grad on S, T and
    random coefficients."""
    from fgdkern.triton import fgd_grad, fgd_stats

    temps = same_temps(args) if temps is None else temps
    assert_matches_contract(fgd_stats(*args, temps, programs=programs), contract.fgd_stats,
                            *args, temps)
    S, T = args[0], args[1]
    coefs = make_coefs(S)
    assert_matches_contract(fgd_grad(S, T, *coefs, programs=programs), contract.fgd_grad, S, T,
                            *coefs)
