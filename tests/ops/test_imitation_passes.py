"""PFI's small math in the imitation contract (fgdkern/reference/imitation_passes.py) in
float64: pfi_levels is eq. (9) of the reference, and the gradient pass with pfi_coef's
coefficients is autograd's gradient of it."""
import pytest
import torch

from fgdkern.reference import imitation_passes as ip
from fgdkern.reference.pfi import pfi_reference

D = torch.float64


def level(N, C, K, H, W, g):
    return [torch.randn(N, c, H, W, generator=g, dtype=D) for c in (C, C, K, K)]


@pytest.mark.parametrize("expanded", [False, True])  # dlevels as autograd gives a mean's
def test_pfi_small_math_is_the_loss_and_its_gradient(expanded):
    g = torch.Generator().manual_seed(0)
    F_s, F_t, P_s, P_t = zip(level(2, 5, 3, 4, 6, g), level(2, 5, 3, 2, 3, g))
    P_s, P_t = [p.softmax(1) for p in P_s], [p.softmax(1) for p in P_t]
    widths = [15, 15]
    ones = [torch.ones(2, x.shape[1], dtype=D) for x in (*F_s, *P_s)]
    F_ = [f.detach().requires_grad_() for f in F_s]
    pix = ip.imitation_stats([*F_, *P_s], [*F_t, *P_t], ones)[:4]
    levels = ip.pfi_levels(pix, widths)
    torch.testing.assert_close(levels, pfi_reference(list(F_s), list(F_t), P_s, P_t).level_losses)
    dlevels = (torch.full((), 0.5, dtype=D).expand(2) if expanded
               else torch.tensor([0.5, -2.0], dtype=D))
    want = torch.autograd.grad((levels * dlevels).sum(), F_)
    chan_coef = [torch.tensor([1.0, 0.0, 0.0], dtype=D)[None, :, None].expand(2, 3, 5)] * 2
    got = ip.imitation_grad(list(F_s), list(F_t), ip.pfi_coef([p.detach() for p in pix],
                                                              dlevels, widths), chan_coef)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert list(ip.UNIT_CHAN_COEF.values()) == [1.0, 0.0, 0.0]
