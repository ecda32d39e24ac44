"""The C++ gradient pass alone: its input checks, and float16 / bfloat16
writes rounded like torch's own conversions, bit for bit."""
import pytest
import torch

from fgdkern.rows import FGD_CHAN_COEF
from tests.cpu.cpp_ops import FLOAT_MIN, grad, make_coefs, needs_cpp, valid_args

pytestmark = needs_cpp


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
    chan = torch.zeros(1, len(FGD_CHAN_COEF), C)
    chan[0, 2] = values  # k_const
    dS = grad([S], [S], [torch.zeros(1, 5, 1)], [chan], [torch.zeros(1, 2)])[0]
    want = values.to(dtype)
    want[values.abs() < FLOAT_MIN] = 0  # float denormals are flushed before rounding
    assert torch.equal(dS.flatten().view(torch.int16)[~values.isnan()],
                       want.view(torch.int16)[~values.isnan()])
    assert dS.flatten()[values.isnan()].isnan().all()
