"""The Triton passes on features with exact zeros (tests.helpers.KINDS), beyond
tests/ops/test_fgd_passes_zeros.py: one program per level (every block merged in one
program) and one program per block (merges across programs), all-zero blocks and
all-zero images in both; sign(0) = 0 in dS with nothing else in it."""
import pytest
import torch

from fgdkern.rows import FGD_CHAN_COEF, FGD_PIX_COEF
from tests.helpers import make_inputs
from tests.triton.common import DEVICE, check_both_passes, needs_kernels

pytestmark = needs_kernels


@pytest.mark.parametrize("programs", [1, 10_000])
@pytest.mark.parametrize("kind", ["zero_pixels", "zero_image"])
def test_zeros_in_every_block_split(programs, kind):
    check_both_passes(make_inputs(3, 5, [(6, 7), (1, 3)], device=DEVICE, seed=8, kind=kind),
                      [0.6, 0.3], programs=programs)


def test_sign_of_zero_is_zero():
    """dS = sign(S) (a_sign + b_sign) alone (every other coefficient 0)."""
    from fgdkern.triton import fgd_grad

    S = torch.tensor([0.0, -0.0, 3.0, -3.0]).reshape(1, 4, 1, 1).to(DEVICE)
    pix = torch.zeros(1, len(FGD_PIX_COEF), 1, device=DEVICE)
    pix[0, FGD_PIX_COEF.a_sign] = 0.25
    chan = torch.zeros(1, len(FGD_CHAN_COEF), 4, device=DEVICE)
    chan[0, FGD_CHAN_COEF.b_sign] = 1.0
    dS = fgd_grad([S], [torch.zeros_like(S)], [pix], [chan], [torch.zeros(1, 2, device=DEVICE)])[0]
    assert dS.flatten().tolist() == [0.0, 0.0, 1.25, -1.25]
