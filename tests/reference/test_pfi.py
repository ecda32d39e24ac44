"""The PyTorch reference of PFI (paper eqs. (7)-(9)) by hand, against an explicit loop
implementation, and by float64 gradcheck."""
import numpy as np
import pytest
import torch

from fgdkern.reference.pfi import pfi_reference


def hand_case():
    """Two levels. Level 0: one image, C = K = 2, a 1 x 2 map. Level 1: 1 x 1, C = K = 1.

    Level 0, pixel 0: F_s - F_t = (1, 2) -> F_dif = (1 + 4) / 2 = 2.5 (eq. 8);
                      P_s - P_t = (0.4, 0) -> P_dif = 0.16 / 2 = 0.08 (eq. 7).
             pixel 1: F_s - F_t = (0, -2) -> F_dif = 2; P_s - P_t = (0.4, -0.2) -> P_dif = 0.1.
             (P_dif F_dif)^2 = 0.04 at both pixels -> 0.08 / (H W = 2) = 0.04 (eq. 9).
    Level 1: F_dif = 2^2 = 4, P_dif = 1^2 = 1 -> 16 / 1 = 16.
    Loss_PFI = (0.04 + 16) / 2 = 8.02.
    """
    F_s0 = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]], dtype=torch.float64)
    F_t0 = torch.tensor([[[[0.0, 2.0]], [[1.0, 2.0]]]], dtype=torch.float64)
    P_s0 = torch.tensor([[[[0.5, 0.9]], [[0.2, 0.3]]]], dtype=torch.float64)
    P_t0 = torch.tensor([[[[0.1, 0.5]], [[0.2, 0.5]]]], dtype=torch.float64)
    F_s1 = torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)
    F_t1 = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    P_s1 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    P_t1 = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    return [F_s0, F_s1], [F_t0, F_t1], [P_s0, P_s1], [P_t0, P_t1]


def test_reference_by_hand():
    S, T, PS, PT = hand_case()
    S = [s.requires_grad_() for s in S]
    terms = pfi_reference(S, T, PS, PT)
    assert terms.level_losses.tolist() == pytest.approx([0.04, 16.0], rel=1e-12)
    assert terms.pfi_loss.item() == pytest.approx(8.02, rel=1e-12)
    dS0, dS1 = torch.autograd.grad(terms.pfi_loss, S)
    # d/dF_s of level 0 = 1/(HW) * 2 (P_dif F_dif) P_dif * 2 (F_s - F_t) / C, then 1/L = 1/2:
    # pixel 0: 0.5 * 2 * 0.2 * 0.08 * (1, 2) / 2 = (0.008, 0.016);
    # pixel 1: 0.5 * 2 * 0.2 * 0.1 * (0, -2) / 2 = (0, -0.02).
    want0 = torch.tensor([[[[0.008, 0.0]], [[0.016, -0.02]]]], dtype=torch.float64)
    torch.testing.assert_close(dS0, want0, rtol=1e-12, atol=1e-15)
    # level 1: 2 * (1 * 4) * 1 * 2 * 2 / 1, then 1/2: 16
    assert float(dS1) == pytest.approx(16.0, rel=1e-12)


def test_reference_averages_images():
    """A second image with no difference halves each level's loss."""
    S, T, PS, PT = hand_case()
    S2, T2, PS2, PT2 = ([torch.cat([x, y], 0) for x, y in zip(a, b)]
                        for a, b in ((S, T), (T, T), (PS, PT), (PT, PT)))
    terms = pfi_reference(S2, T2, PS2, PT2)
    assert terms.level_losses.tolist() == pytest.approx([0.02, 8.0], rel=1e-12)


def loop_pfi(S, T, PS, PT) -> float:
    """Eqs. (7)-(9) one scalar at a time, images averaged per level, levels averaged."""
    levels = []
    for F_s, F_t, P_s, P_t in zip(S, T, PS, PT):
        F_s, F_t, P_s, P_t = (x.detach().double().numpy() for x in (F_s, F_t, P_s, P_t))
        N, C, H, W = F_s.shape
        K = P_s.shape[1]
        total = 0.0
        for n in range(N):
            for i in range(H):
                for j in range(W):
                    p_dif = sum((P_s[n, k, i, j] - P_t[n, k, i, j]) ** 2 for k in range(K)) / K
                    f_dif = sum((F_s[n, q, i, j] - F_t[n, q, i, j]) ** 2 for q in range(C)) / C
                    total += (p_dif * f_dif) ** 2
        levels.append(total / (H * W) / N)
    return float(np.mean(levels))


def random_pyramid(N, C, K, sizes, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, C, h, w, generator=g, dtype=dtype) for h, w in sizes]
    T = [torch.randn(N, C, h, w, generator=g, dtype=dtype) for h, w in sizes]
    PS = [torch.rand(N, K, h, w, generator=g, dtype=dtype) for h, w in sizes]
    PT = [torch.rand(N, K, h, w, generator=g, dtype=dtype) for h, w in sizes]
    return S, T, PS, PT


@pytest.mark.parametrize("N,C,K,sizes", [(1, 2, 1, [(2, 3)]), (2, 3, 4, [(3, 3), (1, 2)]),
                                         (3, 4, 2, [(4, 2), (2, 1), (1, 1)])])
def test_reference_matches_loop_implementation(N, C, K, sizes):
    S, T, PS, PT = random_pyramid(N, C, K, sizes, seed=N + C)
    got = float(pfi_reference(S, T, PS, PT).pfi_loss)
    assert got == pytest.approx(loop_pfi(S, T, PS, PT), rel=1e-10)


def test_reference_float32_accumulation_for_half_inputs():
    S, T, PS, PT = random_pyramid(2, 3, 2, [(3, 4)], seed=3, dtype=torch.float16)
    terms = pfi_reference(S, T, PS, PT)
    assert terms.pfi_loss.dtype == torch.float32
    assert float(terms.pfi_loss) == pytest.approx(loop_pfi(S, T, PS, PT), rel=1e-5)


def test_reference_gradcheck_and_gradient_into_the_student_only():
    S, T, PS, PT = random_pyramid(2, 3, 2, [(2, 3), (1, 2)], seed=7)
    S = [s.requires_grad_() for s in S]

    def f(*S_):
        return pfi_reference(list(S_), T, PS, PT).pfi_loss

    assert torch.autograd.gradcheck(f, tuple(S))
    others = [x.requires_grad_() for x in T + PS + PT]
    loss = pfi_reference(S, T, PS, PT).pfi_loss
    assert all(g is None for g in torch.autograd.grad(loss, others, allow_unused=True))
