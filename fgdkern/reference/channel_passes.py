"""The CWD and PKD passes, in plain PyTorch: the contract every kernel meets.

CWD (docs/cwd.md) and PKD (docs/pkd.md) reduce the maps per channel: CWD over
the pixels of each image (a softmax per (n, c)), PKD over the images and pixels
(a mean and centred moments per c). Each loss is a function of those small
tables, so the forward reads S and T once and the backward writes dS in one
elementwise sweep. Everything else is O(N*C) torch work.

Shapes below are for one level; every function takes lists over levels.
N images, C channels, HW = H * W pixels; math in float32 (float64 stays
float64, for gradcheck). S and T of a level have one shape and one dtype, any
strides.

cwd_stats(S, T, inv_tau) -> [chan_0..chan_{L-1}]
    inv_tau: one float per level (1 / tau).
    chan (N, 3, C) float32, rows (fgdkern.rows.CWD_CHAN):
        0 lse_s = log sum_ij exp(S * inv_tau)
        1 lse_t = log sum_ij exp(T * inv_tau)
        2 kl    = sum_ij p_t * (T - S) * inv_tau - lse_t + lse_s
                  with p_t = exp(T * inv_tau - lse_t): KL(p_t || p_s) of that (n, c)

cwd_grad(S, T, coef, inv_tau) -> [dS_0..dS_{L-1}]
    coef (N, 3, C) float32, rows (CWD_COEF): 0 lse_s, 1 lse_t, 2 k
        dS[n, c, ij] = k * (exp(S * inv_tau - lse_s) - exp(T * inv_tau - lse_t))
    (d kl / dS = inv_tau * (p_s - p_t): the caller folds inv_tau into k.)

pkd_stats(S, T) -> [chan_0..chan_{L-1}]
    chan (5, C) float32, rows (PKD_CHAN), per channel over (n, i, j):
        0 mean_s   1 mean_t
        2 m2_s = sum (S - mean_s)^2     3 m2_t = sum (T - mean_t)^2
        4 m_st = sum (S - mean_s) * (T - mean_t)

pkd_grad(S, T, coef) -> [dS_0..dS_{L-1}]
    coef (4, C) float32, rows (PKD_COEF): 0 a, 1 mean_s, 2 b, 3 mean_t
        dS[n, c, ij] = a * (S - mean_s) + b * (T - mean_t)
    (d m2_s / dS = 2 (S - mean_s), d m_st / dS = T - mean_t: the caller folds the 2.)

The small math between the passes, O(N*C) per level (dlevels: the (L,) gradient of the
per-level losses, any strides):
cwd_levels(chan, inv_tau) -> (L,): tau^2 * sum_{n,c} kl / (N * C) per level
cwd_coef(chan, dlevels, inv_tau) -> [coef_l]: lse_s, lse_t of chan and
    k = dlevels[l] * tau / (N * C)   (d level / d kl times d kl / dS's inv_tau)
pkd_levels(chan, pixels) -> (L,): per level, with M = pixels[l] = N*H*W and
    sigma = sqrt(m2 / (M - 1)) + EPS per channel,
    sum_c f / (2 M C),  f = m2_s / sigma_s^2 + m2_t / sigma_t^2 - 2 m_st / (sigma_s sigma_t)
pkd_coef(chan, dlevels, pixels) -> [coef_l]:
    a = 2 dlevels[l] / (2 M C) * df/dm2_s, b = dlevels[l] / (2 M C) * df/dm_st, the means
    of chan (the derivatives written out in pkd_coef_level).

dS: shape and dtype of S, its memory format where S is dense (torch.empty_like).
Reductions run in a fixed order: results are deterministic. No kernel may
allocate an (N, C, H, W) buffer other than dS.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.reference.pkd import EPS
from fgdkern.rows import CWD_CHAN, CWD_COEF, PKD_CHAN, PKD_COEF


def _acc(F: Tensor) -> Tensor:
    """F in float32 (float64 stays float64, for gradcheck)."""
    return F.to(torch.promote_types(F.dtype, torch.float32))


def _per_image(F: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, HW) in the accumulation dtype."""
    return _acc(F).reshape(F.shape[0], F.shape[1], -1)


def _per_channel(F: Tensor) -> Tensor:
    """(N, C, H, W) -> (C, N*HW) in the accumulation dtype."""
    return _acc(F).transpose(0, 1).reshape(F.shape[1], -1)


def _like(S: Tensor, values: Tensor) -> Tensor:
    """values (any layout, S's shape) as a tensor of S's dtype and memory format."""
    out = torch.empty_like(S)
    out.copy_(values.reshape(S.shape))
    return out


def cwd_stats_level(S: Tensor, T: Tensor, inv_tau: float) -> Tensor:
    s, t = _per_image(S) * inv_tau, _per_image(T) * inv_tau
    lse_s, lse_t = s.logsumexp(2), t.logsumexp(2)
    p_t = (t - lse_t[..., None]).exp()
    rows = dict(lse_s=lse_s, lse_t=lse_t, kl=(p_t * (t - s)).sum(2) - lse_t + lse_s)
    return torch.stack([rows[r] for r in CWD_CHAN], 1)


def cwd_grad_level(S: Tensor, T: Tensor, coef: Tensor, inv_tau: float) -> Tensor:
    s, t = _per_image(S) * inv_tau, _per_image(T) * inv_tau
    c = {r: v[..., None].to(s.dtype) for r, v in zip(CWD_COEF, coef.unbind(1))}
    return _like(S, c["k"] * ((s - c["lse_s"]).exp() - (t - c["lse_t"]).exp()))


def pkd_stats_level(S: Tensor, T: Tensor) -> Tensor:
    s, t = _per_channel(S), _per_channel(T)
    mean_s, mean_t = s.mean(1), t.mean(1)
    u, v = s - mean_s[:, None], t - mean_t[:, None]
    rows = dict(mean_s=mean_s, mean_t=mean_t, m2_s=u.square().sum(1), m2_t=v.square().sum(1),
                m_st=(u * v).sum(1))
    return torch.stack([rows[r] for r in PKD_CHAN], 0)


def pkd_grad_level(S: Tensor, T: Tensor, coef: Tensor) -> Tensor:
    s, t = _acc(S), _acc(T)
    c = {r: v[None, :, None, None].to(s.dtype) for r, v in zip(PKD_COEF, coef.unbind(0))}
    return _like(S, c["a"] * (s - c["mean_s"]) + c["b"] * (t - c["mean_t"]))


def cwd_stats(S: list[Tensor], T: list[Tensor], inv_tau: list[float]) -> list[Tensor]:
    return [cwd_stats_level(*args) for args in zip(S, T, inv_tau)]


def cwd_grad(S: list[Tensor], T: list[Tensor], coef: list[Tensor],
             inv_tau: list[float]) -> list[Tensor]:
    return [cwd_grad_level(*args) for args in zip(S, T, coef, inv_tau)]


def pkd_stats(S: list[Tensor], T: list[Tensor]) -> list[Tensor]:
    return [pkd_stats_level(*args) for args in zip(S, T)]


def pkd_grad(S: list[Tensor], T: list[Tensor], coef: list[Tensor]) -> list[Tensor]:
    return [pkd_grad_level(*args) for args in zip(S, T, coef)]


# ---------------------------------------------------------------- the small math
def cwd_levels(chan: list[Tensor], inv_tau: list[float]) -> Tensor:
    return torch.stack([ch[:, CWD_CHAN.kl].sum() / (it * it * ch.shape[0] * ch.shape[2])
                        for ch, it in zip(chan, inv_tau)])


def cwd_coef(chan: list[Tensor], dlevels: Tensor, inv_tau: list[float]) -> list[Tensor]:
    coef = []
    for ch, g, it in zip(chan, dlevels.unbind(0), inv_tau):
        rows = dict(lse_s=ch[:, CWD_CHAN.lse_s], lse_t=ch[:, CWD_CHAN.lse_t],
                    k=(g.to(ch.dtype) / (it * ch.shape[0] * ch.shape[2])).expand_as(ch[:, 0]))
        coef.append(torch.stack([rows[r] for r in CWD_COEF], 1))
    return coef


def _sigmas(ch: Tensor, M: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """r = sqrt(m2 / (M - 1)) and sigma = r + EPS of S and of T, per channel."""
    r_s = (ch[PKD_CHAN.m2_s] / (M - 1)).sqrt()
    r_t = (ch[PKD_CHAN.m2_t] / (M - 1)).sqrt()
    return r_s, r_s + EPS, r_t, r_t + EPS


def pkd_levels(chan: list[Tensor], pixels: list[int]) -> Tensor:
    levels = []
    for ch, M in zip(chan, pixels):
        _, sig_s, _, sig_t = _sigmas(ch, M)
        f = (ch[PKD_CHAN.m2_s] / sig_s ** 2 + ch[PKD_CHAN.m2_t] / sig_t ** 2
             - 2 * ch[PKD_CHAN.m_st] / (sig_s * sig_t))
        levels.append(f.sum() / (2 * M * ch.shape[1]))
    return torch.stack(levels)


def pkd_coef_level(ch: Tensor, g: Tensor, M: int) -> Tensor:
    """One level's coef: f's derivatives in m2_s (through sigma_s too) and m_st, times
    g / (2 M C); sigma's derivative in m2 is 1 / (2 (M - 1) r), infinite where r is 0,
    as autograd's."""
    r_s, sig_s, _, sig_t = _sigmas(ch, M)
    m2_s, m_st = ch[PKD_CHAN.m2_s], ch[PKD_CHAN.m_st]
    df_dsig_s = 2 * (m_st / (sig_s * sig_t) - m2_s / sig_s ** 2) / sig_s
    df_dm2_s = 1 / sig_s ** 2 + df_dsig_s * 0.5 / ((M - 1) * r_s)
    df_dm_st = -2 / (sig_s * sig_t)
    scale = g.to(ch.dtype) / (2 * M * ch.shape[1])
    rows = dict(a=2 * scale * df_dm2_s, mean_s=ch[PKD_CHAN.mean_s], b=scale * df_dm_st,
                mean_t=ch[PKD_CHAN.mean_t])
    return torch.stack([rows[r] for r in PKD_COEF], 0)


def pkd_coef(chan: list[Tensor], dlevels: Tensor, pixels: list[int]) -> list[Tensor]:
    return [pkd_coef_level(ch, g, M) for ch, g, M in zip(chan, dlevels.unbind(0), pixels)]
