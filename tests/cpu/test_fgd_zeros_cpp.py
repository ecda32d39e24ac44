"""The C++ passes on features with exact zeros and subnormals (tests.helpers.KINDS),
beyond tests/ops/test_fgd_passes_zeros.py: many pixel blocks per image (the block
merges see all-zero blocks), any thread count, and the flushing of subnormals made
explicit: a subnormal S is read as 0, so its sign is 0 in dS."""
import pytest
import torch

from fgdkern.reference import fgd_passes as contract
from fgdkern.rows import FGD_CHAN_COEF, FGD_PIX_COEF
from tests.cpu.cpp_ops import FLOAT_MIN, grad, needs_cpp, stats
from tests.harness import assert_matches_contract
from tests.helpers import flush_denormals, make_coefs, make_inputs

pytestmark = needs_cpp


@pytest.mark.parametrize("kind", ["relu", "zero_pixels", "zero_image", "denormal"])
def test_many_blocks_any_thread_count(kind):
    # C = 24: blocks of 1024 pixels, so the 40 x 60 level has 3 blocks per image
    args = make_inputs(3, 24, [(40, 60), (3, 5)], seed=6, kind=kind)
    S, T = args[0], args[1]
    flushed = [[flush_denormals(x) for x in a] for a in (S, T)]
    coefs = make_coefs(S)
    temps = [0.5, 1.3]
    assert_matches_contract(stats(*args, temps), contract.fgd_stats, *flushed, *args[2:], temps)
    want = grad(S, T, *coefs)
    assert_matches_contract(want, contract.fgd_grad, *flushed, *coefs)
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            assert all(torch.equal(a, b) for a, b in zip(grad(S, T, *coefs), want))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("value", [0.0, -0.0, FLOAT_MIN / 2, -FLOAT_MIN / 4, 1e-45])
def test_sign_of_zero_and_subnormals_is_zero(value):
    """dS = sign(S) (a_sign + b_sign) alone (every other coefficient 0): 0 for S = +-0 and
    for subnormal S, +-(a_sign + b_sign) for the smallest normal floats."""
    S = torch.tensor([value, FLOAT_MIN, -FLOAT_MIN]).reshape(1, 3, 1, 1)
    pix = torch.zeros(1, len(FGD_PIX_COEF), 1)
    pix[0, FGD_PIX_COEF.a_sign] = 0.25
    chan = torch.zeros(1, len(FGD_CHAN_COEF), 3)
    chan[0, FGD_CHAN_COEF.b_sign] = torch.tensor([1.0, 2.0, 4.0])
    dS = grad([S], [torch.zeros_like(S)], [pix], [chan], [torch.zeros(1, 2)])[0]
    assert dS.flatten().tolist() == [0.0, 2.25, -4.25]
