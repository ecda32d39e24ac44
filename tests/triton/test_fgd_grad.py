"""The FGD gradient kernels (fgdkern/triton/fgd_grad.py) beyond the shared pass tests:
the launcher's argument checks, and dS in the layout of S."""
import pytest

from fgdkern.reference import fgd_passes as contract
from tests.harness import assert_matches_contract
from tests.helpers import make_inputs
from tests.triton.common import DEVICE, make_coefs, needs_kernels

pytestmark = needs_kernels


def test_grad_argument_checks():
    from fgdkern.triton import fgd_grad

    S, T, *_ = make_inputs(1, 4, [(3, 3)], device=DEVICE)
    pix, chan, K = make_coefs(S)
    with pytest.raises(ValueError, match=r"chan_coef\[0\]"):
        fgd_grad(S, T, pix, [chan[0][:, :8]], K)
    with pytest.raises(TypeError, match=r"K\[0\]"):
        fgd_grad(S, T, pix, chan, [K[0].double()])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ds_has_the_layout_of_s(layout):
    from fgdkern.triton import fgd_grad

    S, T, *_ = make_inputs(2, 6, [(5, 4), (2, 3)], device=DEVICE, layout=layout)
    coefs = make_coefs(S)
    got = fgd_grad(S, T, *coefs)
    assert_matches_contract(got, contract.fgd_grad, S, T, *coefs)
    assert all(d.stride() == s.stride() for d, s in zip(got, S))
