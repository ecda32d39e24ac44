"""The CWD and PKD pass contracts (fgdkern/reference/channel_passes.py) in float64: each
row against its definition, and each gradient pass against autograd of the rows it
differentiates, with the coefficients as the ops build them."""
import pytest
import torch

from fgdkern.reference import channel_passes as cp
from fgdkern.rows import CWD_CHAN, CWD_COEF, PKD_CHAN, PKD_COEF
from tests.harness import with_layout

D = torch.float64


def maps(N=2, C=3, H=4, W=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, C, H, W, generator=g, dtype=D) * 2,
            torch.randn(N, C, H, W, generator=g, dtype=D) + 1)


def test_cwd_stats_rows():
    S, T = maps()
    (chan,) = cp.cwd_stats([S], [T], [0.5])
    assert chan.shape == (2, len(CWD_CHAN), 3) and chan.dtype == D
    s, t = S.flatten(2) * 0.5, T.flatten(2) * 0.5
    torch.testing.assert_close(chan[:, CWD_CHAN.lse_s], s.logsumexp(2))
    torch.testing.assert_close(chan[:, CWD_CHAN.lse_t], t.logsumexp(2))
    kl = torch.nn.functional.kl_div(s.log_softmax(2), t.log_softmax(2), log_target=True,
                                    reduction="none").sum(2)
    torch.testing.assert_close(chan[:, CWD_CHAN.kl], kl)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_cwd_grad_is_the_gradient_of_kl(layout):
    S, T = (with_layout(x, layout) for x in maps(seed=1))
    inv_tau, g = 0.7, torch.randn(2, 3, dtype=D)
    S_ = S.detach().requires_grad_()
    (want,) = torch.autograd.grad((cp.cwd_stats([S_], [T], [inv_tau])[0][:, CWD_CHAN.kl] * g)
                                  .sum(), [S_])
    (chan,) = cp.cwd_stats([S], [T], [inv_tau])
    rows = dict(lse_s=chan[:, CWD_CHAN.lse_s], lse_t=chan[:, CWD_CHAN.lse_t], k=g * inv_tau)
    coef = torch.stack([rows[r] for r in CWD_COEF], 1)
    (got,) = cp.cwd_grad([S], [T], [coef], [inv_tau])
    torch.testing.assert_close(got, want)
    assert got.stride() == torch.empty_like(S).stride()


def test_pkd_stats_rows():
    S, T = maps(seed=2)
    (chan,) = cp.pkd_stats([S], [T])
    assert chan.shape == (len(PKD_CHAN), 3)
    u = S - S.mean((0, 2, 3), keepdim=True)
    v = T - T.mean((0, 2, 3), keepdim=True)
    torch.testing.assert_close(chan[PKD_CHAN.mean_s], S.mean((0, 2, 3)))
    torch.testing.assert_close(chan[PKD_CHAN.mean_t], T.mean((0, 2, 3)))
    torch.testing.assert_close(chan[PKD_CHAN.m2_s], (u * u).sum((0, 2, 3)))
    torch.testing.assert_close(chan[PKD_CHAN.m2_t], (v * v).sum((0, 2, 3)))
    torch.testing.assert_close(chan[PKD_CHAN.m_st], (u * v).sum((0, 2, 3)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pkd_grad_is_the_gradient_of_the_moments(layout):
    S, T = (with_layout(x, layout) for x in maps(seed=3))
    g_m2, g_st = torch.randn(3, dtype=D), torch.randn(3, dtype=D)
    S_ = S.detach().requires_grad_()
    chan = cp.pkd_stats([S_], [T])[0]
    (want,) = torch.autograd.grad((chan[PKD_CHAN.m2_s] * g_m2 + chan[PKD_CHAN.m_st] * g_st)
                                  .sum(), [S_])
    rows = dict(a=2 * g_m2, mean_s=chan[PKD_CHAN.mean_s].detach(), b=g_st,
                mean_t=chan[PKD_CHAN.mean_t].detach())
    (got,) = cp.pkd_grad([S], [T], [torch.stack([rows[r] for r in PKD_COEF], 0)])
    torch.testing.assert_close(got, want)
    assert got.stride() == torch.empty_like(S).stride()


def test_float32_tables_for_low_precision_maps():
    S, T = (x.half() for x in maps(seed=4))
    assert cp.cwd_stats([S], [T], [1.0])[0].dtype == torch.float32
    assert cp.pkd_stats([S], [T])[0].dtype == torch.float32
    coef = torch.zeros(len(PKD_COEF), 3)
    assert cp.pkd_grad([S], [T], [coef])[0].dtype == torch.float16


# ---------------------------------------------------------------- the small math
def pyramid(seed=5):
    """Two levels of one batch, different sizes and widths, float64."""
    (S0, T0), (S1, T1) = maps(N=2, C=3, H=4, W=5, seed=seed), maps(N=2, C=4, H=2, W=3, seed=seed)
    return [S0, S1], [T0, T1]


@pytest.mark.parametrize("expanded", [False, True])  # dlevels as autograd gives a sum's
def test_cwd_small_math_is_the_loss_and_its_gradient(expanded):
    from fgdkern.reference.cwd import cwd_reference

    S, T = pyramid()
    inv_tau = [0.5, 0.5]
    S_ = [s.detach().requires_grad_() for s in S]
    levels = cp.cwd_levels(cp.cwd_stats(S_, T, inv_tau), inv_tau)
    torch.testing.assert_close(levels, cwd_reference(S, T, 2.0).level_losses)
    dlevels = torch.full((), 0.7, dtype=D).expand(2) if expanded else torch.tensor([0.7, -1.3], dtype=D)
    want = torch.autograd.grad((levels * dlevels).sum(), S_)
    chan = cp.cwd_stats(S, T, inv_tau)
    got = cp.cwd_grad(S, T, cp.cwd_coef(chan, dlevels, inv_tau), inv_tau)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("expanded", [False, True])
def test_pkd_small_math_is_the_loss_and_its_gradient(expanded):
    from fgdkern.reference.pkd import pkd_reference

    S, T = pyramid(seed=6)
    pixels = [s.shape[0] * s.shape[2] * s.shape[3] for s in S]
    S_ = [s.detach().requires_grad_() for s in S]
    levels = cp.pkd_levels(cp.pkd_stats(S_, T), pixels)
    torch.testing.assert_close(levels, pkd_reference(S, T).level_losses)
    dlevels = torch.full((), 0.7, dtype=D).expand(2) if expanded else torch.tensor([0.7, -1.3], dtype=D)
    want = torch.autograd.grad((levels * dlevels).sum(), S_)
    chan = cp.pkd_stats(S, T)
    got = cp.pkd_grad(S, T, cp.pkd_coef(chan, dlevels, pixels))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
