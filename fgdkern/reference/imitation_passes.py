"""The two imitation passes, in plain PyTorch: the contract every kernel meets.

FKD (docs/fkd.md) and PFI (docs/pfi.md) imitate the teacher's feature maps
under per-pixel and per-channel weights, and their masks and attention terms
need only per-pixel and per-channel sums of the maps. So both losses share
one statistics pass, which reads a pair of maps X, Y once and reduces them
over channels per pixel and over pixels per channel, and one gradient pass,
which turns the gradients of those sums into dX in one elementwise sweep.
Every other step is O(N*(C+HW)) torch work with ordinary autograd.

Shapes below are for one level; every function takes lists over levels.
N images, C channels, HW = H * W pixels; math in float32 (float64 stays
float64, for gradcheck).

imitation_stats(X, Y, w) -> [pix_0..pix_{L-1}, chan_0..chan_{L-1}]
    X, Y: (N, C, H, W), one float dtype per level, any strides, same shape
    (pass X itself as Y when no difference is wanted: sq_d is then 0);
    w: (N, C) float32 channel weights of the difference.
    pix  (N, 3, HW) float32, rows (fgdkern.rows.IMIT_PIX):
        0 abs_x = sum_c |X|      1 sum_x = sum_c X
        2 sq_d  = sum_c w[c] (X - Y)^2
    chan (N, 2, C) float32, rows (fgdkern.rows.IMIT_CHAN):
        0 abs_x = sum_ij |X|     1 sum_x = sum_ij X

imitation_grad(X, Y, pix_coef, chan_coef) -> [dX_0..dX_{L-1}]
    pix_coef (N, 3, HW) float32, rows (IMIT_PIX_COEF): 0 a, 1 b, 2 s
    chan_coef (N, 3, C) float32, rows (IMIT_CHAN_COEF): 0 w, 1 b, 2 s
        dX[c,ij] = a[ij] * w[c] * (X - Y) + b[ij] + b[c]
                 + sign(X) * (s[ij] + s[c])
    dX: shape, dtype and memory format of X. sign(0) = 0.
    (The gradient of a sum is the sum's gradient broadcast: b rows for the
    signed sums, s rows for the absolute sums, a * w for sq_d up to its
    factor 2, which the caller folds into a.)

PFI's small math (docs/pfi.md, eqs. (7)-(9)), over every level at once: pix holds
the pixel tables of the features' pairs then of the probabilities' (2L), widths
C * K per level (feature channels times classes), dlevels the (L,) gradient of
the level losses (any strides):
pfi_levels(pix, widths) -> (L,): sum_{n,ij} (sq_d_F * sq_d_P / (C K))^2 / (N HW)
pfi_coef(pix, dlevels, widths) -> [pix_coef_l] for the features' dX, rows
    a = 4 dlevels[l] / (N HW) * v * sq_d_P / (C K), v = sq_d_F * sq_d_P / (C K)
    (twice d level / d sq_d_F: the factor 2 of d sq_d / dX), b = s = 0; the
    channel coefficients are w = 1, b = s = 0 (UNIT_CHAN_COEF).

Sums over channels and over pixels are reduced in a fixed order: results are
deterministic. No kernel may allocate an (N, C, H, W) buffer other than dX.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.rows import IMIT_CHAN, IMIT_CHAN_COEF, IMIT_PIX, IMIT_PIX_COEF


# Channel coefficients of a dX (or dY) that only an a-term reaches: the weights w = 1 (PFI's
# features, FKD's f(S)).
UNIT_CHAN_COEF = dict(w=1.0, b=0.0, s=0.0)


def _flat(F: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, HW) float32 (float64 stays float64, for gradcheck)."""
    return F.to(torch.promote_types(F.dtype, torch.float32)).reshape(F.shape[0], F.shape[1], -1)


def _stack(rows: dict, names) -> Tensor:
    return torch.stack([rows[r] for r in names], 1)


def imitation_stats_level(X: Tensor, Y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    x, y = _flat(X), _flat(Y)
    sq = (x - y).square() * w.to(x.dtype)[..., None]
    pix = dict(abs_x=x.abs().sum(1), sum_x=x.sum(1), sq_d=sq.sum(1))
    chan = dict(abs_x=x.abs().sum(2), sum_x=x.sum(2))
    return _stack(pix, IMIT_PIX), _stack(chan, IMIT_CHAN)


def imitation_grad_level(X: Tensor, Y: Tensor, pix_coef: Tensor, chan_coef: Tensor) -> Tensor:
    x, y = _flat(X), _flat(Y)
    p = {r: v[:, None, :].to(x.dtype) for r, v in zip(IMIT_PIX_COEF, pix_coef.unbind(1))}
    c = {r: v[..., None].to(x.dtype) for r, v in zip(IMIT_CHAN_COEF, chan_coef.unbind(1))}
    dX = p["a"] * c["w"] * (x - y) + p["b"] + c["b"] + torch.sign(x) * (p["s"] + c["s"])
    dX = dX.reshape(X.shape).to(X.dtype)
    if X.is_contiguous(memory_format=torch.channels_last) and not X.is_contiguous():
        dX = dX.contiguous(memory_format=torch.channels_last)
    return dX


def coefficients(g_pix: Tensor, g_chan: Tensor, w: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients g_pix, g_chan of one level's tables -> the coefficient tables of dX and
    of dY (pix_x, chan_x, pix_y, chan_y); w: the (N, C) channel weights of sq_d."""
    gp = dict(zip(IMIT_PIX, g_pix.unbind(1)))
    gc = dict(zip(IMIT_CHAN, g_chan.unbind(1)))
    a = 2 * gp["sq_d"]                                   # d sum_c w (X - Y)^2 = 2 w (X - Y)
    zero_p, zero_c = torch.zeros_like(a), torch.zeros_like(w)
    pix_x = dict(a=a, b=gp["sum_x"], s=gp["abs_x"])
    chan_x = dict(w=w, b=gc["sum_x"], s=gc["abs_x"])
    pix_y = dict(a=a, b=zero_p, s=zero_p)               # dY: the a-term with X, Y swapped
    chan_y = dict(w=w, b=zero_c, s=zero_c)
    return (_stack(pix_x, IMIT_PIX_COEF), _stack(chan_x, IMIT_CHAN_COEF),
            _stack(pix_y, IMIT_PIX_COEF), _stack(chan_y, IMIT_CHAN_COEF))


def imitation_stats(X: list[Tensor], Y: list[Tensor], w: list[Tensor]) -> list[Tensor]:
    out = [imitation_stats_level(*args) for args in zip(X, Y, w)]
    return [p for p, _ in out] + [c for _, c in out]


def imitation_grad(X: list[Tensor], Y: list[Tensor], pix_coef: list[Tensor],
                   chan_coef: list[Tensor]) -> list[Tensor]:
    return [imitation_grad_level(*args) for args in zip(X, Y, pix_coef, chan_coef)]


# ---------------------------------------------------------------- PFI's small math


def pfi_levels(pix: list[Tensor], widths: list[int]) -> Tensor:
    L = len(widths)
    levels = []
    for f, p, ck in zip(pix[:L], pix[L:], widths):
        v = f[:, IMIT_PIX.sq_d] * p[:, IMIT_PIX.sq_d] / ck
        levels.append(v.square().sum() / (f.shape[0] * f.shape[2]))
    return torch.stack(levels)


def pfi_coef(pix: list[Tensor], dlevels: Tensor, widths: list[int]) -> list[Tensor]:
    L = len(widths)
    coef = []
    for f, p, ck, g in zip(pix[:L], pix[L:], widths, dlevels.unbind(0)):
        sq_p = p[:, IMIT_PIX.sq_d]
        v = f[:, IMIT_PIX.sq_d] * sq_p / ck
        a = 4 * g.to(f.dtype) / (f.shape[0] * f.shape[2]) * v * sq_p / ck
        rows = dict(a=a, b=torch.zeros_like(a), s=torch.zeros_like(a))
        coef.append(_stack(rows, IMIT_PIX_COEF))
    return coef
