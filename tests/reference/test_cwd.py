"""The PyTorch reference of CWD (paper eqs. (3)-(4)) by hand, against an explicit loop
implementation, and by float64 gradcheck."""
import math

import pytest
import torch

from fgdkern.reference.cwd import cwd_reference


def test_reference_by_hand():
    """One image, two channels of two pixels, tau = 2.

    Channel 0: S = (0, 0), T = (2 ln 3, 0): T / tau = (ln 3, 0) -> p_t = (3/4, 1/4)
    (eq. 3), p_s = (1/2, 1/2); KL = 3/4 ln(3/2) + 1/4 ln(1/2) (eq. 4).
    Channel 1: S = T: KL = 0. Level: tau^2 * KL / (N C) = 4 * KL / 2.
    """
    S = torch.zeros(1, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    T = torch.tensor([[[[2 * math.log(3), 0.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    terms = cwd_reference([S], [T], tau=2.0)
    assert terms.cwd_loss.item() == pytest.approx(2 * kl, rel=1e-12)
    # d/dS = tau^2 / (N C) * (p_s - p_t) / tau = 2 / 2 * (p_s - p_t)
    (dS,) = torch.autograd.grad(terms.cwd_loss, [S])
    want = torch.tensor([[[[0.5 - 0.75, 0.5 - 0.25]], [[0.0, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(dS, want, rtol=1e-12, atol=1e-15)


def test_levels_are_summed_and_images_averaged():
    """A second level adds its value; a second image equal to its teacher halves a level."""
    g = torch.Generator().manual_seed(0)
    S, T = (torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    one = cwd_reference([S], [T], 1.0).cwd_loss
    both = cwd_reference([S, S], [T, T], 1.0)
    assert both.cwd_loss.item() == pytest.approx(2 * one.item(), rel=1e-12)
    two = cwd_reference([torch.cat([S, T])], [torch.cat([T, T])], 1.0).cwd_loss
    assert two.item() == pytest.approx(one.item() / 2, rel=1e-12)


def loop_cwd(S, T, tau) -> float:
    """Eqs. (3)-(4) one scalar at a time, summed over levels."""
    total = 0.0
    for s, t in zip(S, T):
        s, t = s.detach().double(), t.detach().double()
        N, C, H, W = s.shape
        level = 0.0
        for n in range(N):
            for c in range(C):
                xs = [float(s[n, c, i, j]) / tau for i in range(H) for j in range(W)]
                xt = [float(t[n, c, i, j]) / tau for i in range(H) for j in range(W)]
                zs = sum(math.exp(x) for x in xs)
                zt = sum(math.exp(x) for x in xt)
                for a, b in zip(xs, xt):
                    pt, ps = math.exp(b) / zt, math.exp(a) / zs
                    level += pt * math.log(pt / ps)
        total += tau ** 2 * level / (N * C)
    return total


def random_pyramid(N, C, sizes, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, c, h, w, generator=g, dtype=dtype) for c, (h, w) in zip(C, sizes)]
    T = [torch.randn(N, c, h, w, generator=g, dtype=dtype) * 2 for c, (h, w) in zip(C, sizes)]
    return S, T


@pytest.mark.parametrize("N,C,sizes,tau", [(1, [2], [(2, 3)], 1.0),
                                           (2, [3, 5], [(3, 3), (1, 2)], 0.5),
                                           (3, [4, 2, 1], [(4, 2), (2, 1), (1, 1)], 4.0)])
def test_reference_matches_loop_implementation(N, C, sizes, tau):
    S, T = random_pyramid(N, C, sizes, seed=N)
    got = float(cwd_reference(S, T, tau).cwd_loss)
    assert got == pytest.approx(loop_cwd(S, T, tau), rel=1e-10, abs=1e-14)


def test_reference_float32_accumulation_for_half_inputs():
    S, T = random_pyramid(2, [3], [(3, 4)], seed=3, dtype=torch.float16)
    terms = cwd_reference(S, T, 1.0)
    assert terms.cwd_loss.dtype == torch.float32
    assert float(terms.cwd_loss) == pytest.approx(loop_cwd(S, T, 1.0), rel=1e-5)


def test_reference_gradcheck_and_gradient_into_the_student_only():
    S, T = random_pyramid(2, [3, 2], [(2, 3), (1, 2)], seed=7)
    S = [s.requires_grad_() for s in S]
    assert torch.autograd.gradcheck(lambda *S_: cwd_reference(list(S_), T, 0.7).cwd_loss,
                                    tuple(S))
    T = [t.requires_grad_() for t in T]
    loss = cwd_reference(S, T, 1.0).cwd_loss
    assert all(g is None for g in torch.autograd.grad(loss, T, allow_unused=True))
