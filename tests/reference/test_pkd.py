"""The PyTorch reference of PKD (standardised maps, 1 - Pearson r) by hand, against an
explicit loop implementation, and by float64 gradcheck."""
import math

import pytest
import torch

from fgdkern.reference.pkd import EPS, pkd_reference


def test_reference_by_hand():
    """One channel of M = 2 values: S = (0, 2), T = (1, -1).

    mean_s = 1, std_s = sqrt(((-1)^2 + 1^2) / (M - 1)) = sqrt(2) -> norm S = (-1, 1) / (sqrt 2 + eps);
    mean_t = 0, std_t = sqrt(2) -> norm T = (1, -1) / (sqrt 2 + eps).
    Loss = mean((norm S - norm T)^2) / 2 = ((-2)^2 + 2^2) / (sqrt 2 + eps)^2 / 2 / 2.
    """
    S = torch.tensor([[[[0.0, 2.0]]]], dtype=torch.float64, requires_grad=True)
    T = torch.tensor([[[[1.0, -1.0]]]], dtype=torch.float64)
    want = 8 / (math.sqrt(2) + EPS) ** 2 / 4
    terms = pkd_reference([S], [T])
    assert terms.pkd_loss.item() == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx((2 - 1) / 2 * (1 - (-1)), rel=1e-5)   # (M - 1) / M * (1 - r), r = -1


def test_equals_one_minus_pearson_r():
    """Each channel contributes (M - 1) / M * (1 - r) / C (up to eps): PKD's reading."""
    g = torch.Generator().manual_seed(1)
    S = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    T = 0.5 * S + torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    M = 3 * 4 * 5
    r = [torch.corrcoef(torch.stack([S[:, c].flatten(), T[:, c].flatten()]))[0, 1]
         for c in range(2)]
    want = sum((M - 1) / M * (1 - float(x)) for x in r) / len(r)
    assert float(pkd_reference([S], [T]).pkd_loss) == pytest.approx(want, rel=1e-5)


def loop_pkd(S, T) -> float:
    total = 0.0
    for s, t in zip(S, T):
        s, t = s.detach().double(), t.detach().double()
        N, C, H, W = s.shape
        level = 0.0
        for c in range(C):
            xs = [float(v) for v in s[:, c].flatten()]
            xt = [float(v) for v in t[:, c].flatten()]
            M = len(xs)
            ms, mt = sum(xs) / M, sum(xt) / M
            ss = math.sqrt(sum((x - ms) ** 2 for x in xs) / (M - 1)) + EPS
            st = math.sqrt(sum((x - mt) ** 2 for x in xt) / (M - 1)) + EPS
            level += sum(((a - ms) / ss - (b - mt) / st) ** 2 for a, b in zip(xs, xt))
        total += level / (N * C * H * W) / 2
    return total


def random_pyramid(N, C, sizes, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, c, h, w, generator=g, dtype=dtype) for c, (h, w) in zip(C, sizes)]
    T = [torch.randn(N, c, h, w, generator=g, dtype=dtype) * 3 + 1 for c, (h, w) in zip(C, sizes)]
    return S, T


@pytest.mark.parametrize("N,C,sizes", [(1, [2], [(2, 3)]), (2, [3, 5], [(3, 3), (1, 2)]),
                                       (3, [4, 2, 1], [(4, 2), (2, 1), (1, 1)])])
def test_reference_matches_loop_implementation(N, C, sizes):
    S, T = random_pyramid(N, C, sizes, seed=N)
    assert float(pkd_reference(S, T).pkd_loss) == pytest.approx(loop_pkd(S, T), rel=1e-10)


def test_reference_float32_accumulation_for_half_inputs():
    S, T = random_pyramid(2, [3], [(3, 4)], seed=3, dtype=torch.bfloat16)
    terms = pkd_reference(S, T)
    assert terms.pkd_loss.dtype == torch.float32
    assert float(terms.pkd_loss) == pytest.approx(loop_pkd(S, T), rel=1e-5)


def test_reference_gradcheck_and_gradient_into_the_student_only():
    S, T = random_pyramid(2, [3, 2], [(2, 3), (1, 2)], seed=7)
    S = [s.requires_grad_() for s in S]
    assert torch.autograd.gradcheck(lambda *S_: pkd_reference(list(S_), T).pkd_loss, tuple(S))
    T = [t.requires_grad_() for t in T]
    loss = pkd_reference(S, T).pkd_loss
    assert all(g is None for g in torch.autograd.grad(loss, T, allow_unused=True))
