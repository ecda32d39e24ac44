"""The PyTorch reference of the score-weighted L2 loss (docs/score-l2.md) by hand, against an
explicit loop, and by float64 gradcheck."""
import itertools

import pytest
import torch

from fgdkern.reference.score_l2 import EPS, score_l2_reference


def hand_case():
    """One image, C = 2, a 1 x 2 map; S - T = (1, 0) in channel 0 and (2, -2) in channel 1.

    Per pixel sum_c (S - T)^2: 1 + 4 = 5 and 0 + 4 = 4; the scores w = (0.5, 0.25):
    sum w (S - T)^2 = 2.5 + 1 = 3.5 over C sum w = 2 * 0.75 = 1.5: the loss is 7 / 3.
    """
    S = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]], dtype=torch.float64)
    T = torch.tensor([[[[0.0, 2.0]], [[1.0, 2.0]]]], dtype=torch.float64)
    w = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    return S, T, w


def test_reference_by_hand():
    S, T, w = hand_case()
    S.requires_grad_()
    loss = score_l2_reference([S], [T], [w])
    assert loss.tolist() == pytest.approx([3.5 / (1.5 + EPS)], rel=1e-12)
    (dS,) = torch.autograd.grad(loss.sum(), [S])
    # d/dS = 2 w (S - T) / (C sum w): (2 * 0.5 * 1, 0) / 1.5 in channel 0, (2 * 0.5 * 2,
    # 2 * 0.25 * -2) / 1.5 in channel 1
    want = torch.tensor([[[[1.0, 0.0]], [[2.0, -1.0]]]], dtype=torch.float64) / 1.5
    torch.testing.assert_close(dS, want, rtol=1e-9, atol=0)


def loop_score_l2(S, T, w) -> float:
    """One level, one scalar at a time."""
    N, C, H, W = S.shape
    num = den = 0.0
    for n, i, j in itertools.product(range(N), range(H), range(W)):
        weight = float(w[n, i, j])
        den += weight * C
        num += sum(weight * float(S[n, c, i, j] - T[n, c, i, j]) ** 2 for c in range(C))
    return num / (den + EPS)


def random_levels(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 3, 4, 5), (2, 5, 2, 3)]
    S = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    T = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    w = [torch.rand(s[0], *s[2:], generator=g, dtype=dtype) for s in shapes]
    return S, T, w


def test_reference_matches_a_loop():
    S, T, w = random_levels()
    got = score_l2_reference(S, T, w).tolist()
    assert got == pytest.approx([loop_score_l2(*level) for level in zip(S, T, w)], rel=1e-12)


def test_gradcheck():
    S, T, w = random_levels()
    S = [s.requires_grad_() for s in S]
    assert torch.autograd.gradcheck(lambda *s: score_l2_reference(list(s), T, w), S)


def test_low_precision_is_accumulated_in_float32():
    S, T, w = random_levels(dtype=torch.float32)
    half = score_l2_reference([s.half() for s in S], [t.half() for t in T], w)
    assert half.dtype == torch.float32
    exact = score_l2_reference([s.half().float() for s in S], [t.half().float() for t in T], w)
    torch.testing.assert_close(half, exact, rtol=1e-6, atol=0)


def test_no_confident_cell_gives_zero():
    S, T, w = random_levels()
    assert score_l2_reference(S, T, [torch.zeros_like(x) for x in w]).tolist() == [0.0, 0.0]
