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

dS: shape and dtype of S, its memory format where S is dense (torch.empty_like).
Reductions run in a fixed order: results are deterministic. No kernel may
allocate an (N, C, H, W) buffer other than dS.
"""
from __future__ import annotations

import torch
from torch import Tensor

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
