"""The two fused FGD passes, in plain PyTorch: the contract every kernel meets.

Why two passes suffice (docs/kernels.md, "FGD's two passes"). Every FGD term is a function of small
per-image statistics of S and T:

* fg_loss = sum_c A_C^T[c] * x_fg[c] with x_fg[c] = sum_ij fg A_S^T D^2
  (A_S^T depends on T only, so it is a per-pixel weight inside the pass);
* rela_loss = sum_c m2_d[c] + HW * (mean_d[c] + d[c])^2, d = R_s - R_t
  channel shift, written with the centred second moment m2_d so that no
  cancellation can occur when the GcBlocks learn to remove the mean of D;
* mask_loss uses gs (per pixel) and gc (per channel) only;
* the GcBlock context ctx = sum_ij softmax(z) F needs z = w . F per pixel.

So the forward is ONE pass over S and T (``fgd_stats``: per pixel it reduces
over channels, per channel over pixels, with online softmaxes over pixels),
everything else is O(N*(C+HW)) small math (fgdkern/reference/fgd_small_math.py), and the
backward is ONE pass (``fgd_grad``) that turns the gradients of those
statistics into dS (and the conv_mask weight gradients). S and T are read
twice in total and dS written once: the minimum for this loss.

Shapes below are for one level; every function takes lists over levels.
N images, C channels, HW = H * W pixels, D = S - T computed in float32.

fgd_stats(S, T, fg, bg, w_s, w_t, temps) -> [pix_0..pix_{L-1}, chan_0..chan_{L-1}]
    S, T: (N, C, H, W), any float dtype and strides (S and T same dtype);
    fg, bg: (N, H, W) float32; w_s, w_t: (C,) float32 (conv_mask weights; the
    biases do not matter: a softmax is shift invariant); temps: one float per
    level (each level's own temperature).
    pix  (N, 4, HW) float32, rows:
        0 gs_s = mean_c |S|          1 gs_t = mean_c |T|
        2 z_s  = sum_c w_s[c] S      3 z_t  = sum_c w_t[c] T
    chan (N, 8, C) float32, rows:
        0 gc_s  = mean_ij |S|        1 gc_t  = mean_ij |T|
        2 ctx_s = sum_ij softmax_ij(z_s) S
        3 ctx_t = sum_ij softmax_ij(z_t) T
        4 sum_d = sum_ij D           5 m2_d  = sum_ij (D - sum_d / HW)^2
        6 x_fg  = sum_ij fg A D^2    7 x_bg  = sum_ij bg A D^2
        with A = HW * softmax_ij(gs_t / temp)   (the teacher's A_S)

fgd_grad(S, T, pix_coef, chan_coef, K) -> [dS_0.., dw_s_0.., dw_t_0..]
    pix_coef (N, 5, HW) float32, rows: 0 a_sign, 1 fgA, 2 bgA, 3 p_s, 4 p_t
    chan_coef (N, 11, C) float32, rows: 0 b_sign, 1 k_d, 2 k_const, 3 k_fg,
        4 k_bg, 5 g_ctx_s, 6 g_ctx_t, 7 w_s, 8 w_t, 9 ctx_s, 10 ctx_t
    K (N, 2) float32: K_s, K_t
    With (per image n, channel c, pixel ij):
        gp_s[ij] = sum_c g_ctx_s[c] S[c,ij]      dz_s = p_s * (gp_s - K_s)
        gp_t[ij] = sum_c g_ctx_t[c] T[c,ij]      dz_t = p_t * (gp_t - K_t)
        dS[c,ij] = sign(S) * (a_sign[ij] + b_sign[c])
                 + D * (k_d[c] + k_fg[c] * fgA[ij] + k_bg[c] * bgA[ij])
                 + k_const[c] + p_s[ij] * g_ctx_s[c] + w_s[c] * dz_s[ij]
        dw_s[c] = sum_{n,ij} dz_s * (S[c,ij] - ctx_s[c])
        dw_t[c] = sum_{n,ij} dz_t * (T[c,ij] - ctx_t[c])
    dS: shape, dtype and memory format of S; dw_s, dw_t: (C,) float32.
    The contexts in dw change nothing in exact arithmetic (K = sum_ij p gp, so
    sum_ij dz = 0), but K comes from the forward statistics and gp from this
    pass: in float32 sum_ij dz keeps a residue of the size of K's rounding, and
    centring S and T on their contexts keeps that residue out of dw.
    sign(0) = 0. Reductions in a fixed order: results are deterministic.

No kernel may allocate an (N, C, H, W) buffer other than dS.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.rows import FGD_CHAN, FGD_CHAN_COEF, FGD_PIX, FGD_PIX_COEF


def _flat(F: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, HW) float32 (float64 stays float64, for gradcheck)."""
    return F.to(torch.promote_types(F.dtype, torch.float32)).reshape(F.shape[0], F.shape[1], -1)


def fgd_stats_level(S, T, fg, bg, w_s, w_t, temp: float):
    s, t = _flat(S), _flat(T)
    N, C, HW = s.shape
    d = s - t
    gs_t = t.abs().mean(1)
    A = HW * torch.softmax(gs_t / temp, -1)
    z_s = torch.einsum("c,ncp->np", w_s.to(s.dtype), s)
    z_t = torch.einsum("c,ncp->np", w_t.to(s.dtype), t)
    pix = dict(gs_s=s.abs().mean(1), gs_t=gs_t, z_s=z_s, z_t=z_t)
    sum_d = d.sum(2)
    chan = dict(
        gc_s=s.abs().mean(2),
        gc_t=t.abs().mean(2),
        ctx_s=torch.einsum("ncp,np->nc", s, torch.softmax(z_s, -1)),
        ctx_t=torch.einsum("ncp,np->nc", t, torch.softmax(z_t, -1)),
        sum_d=sum_d,
        m2_d=(d - sum_d[..., None] / HW).square().sum(2),
        x_fg=torch.einsum("ncp,np->nc", d.square(), fg.reshape(N, HW).to(s.dtype) * A),
        x_bg=torch.einsum("ncp,np->nc", d.square(), bg.reshape(N, HW).to(s.dtype) * A),
    )
    return (torch.stack([pix[r] for r in FGD_PIX], 1),
            torch.stack([chan[r] for r in FGD_CHAN], 1))


def fgd_grad_level(S, T, pix_coef, chan_coef, K):
    s, t = _flat(S), _flat(T)
    p = {r: x[:, None, :] for r, x in zip(FGD_PIX_COEF, pix_coef.unbind(1))}
    c = {r: x[..., None] for r, x in zip(FGD_CHAN_COEF, chan_coef.unbind(1))}
    dz_s = p["p_s"] * ((c["g_ctx_s"] * s).sum(1, keepdim=True) - K[:, 0, None, None])
    dz_t = p["p_t"] * ((c["g_ctx_t"] * t).sum(1, keepdim=True) - K[:, 1, None, None])
    dS = (torch.sign(s) * (p["a_sign"] + c["b_sign"])
          + (s - t) * (c["k_d"] + c["k_fg"] * p["fgA"] + c["k_bg"] * p["bgA"])
          + c["k_const"] + p["p_s"] * c["g_ctx_s"] + c["w_s"] * dz_s)
    dS = dS.reshape(S.shape).to(S.dtype)
    if S.is_contiguous(memory_format=torch.channels_last) and not S.is_contiguous():
        dS = dS.contiguous(memory_format=torch.channels_last)
    dw_s = (dz_s * (s - c["ctx_s"])).sum((0, 2))
    dw_t = (dz_t * (t - c["ctx_t"])).sum((0, 2))
    return dS, dw_s, dw_t


def fgd_stats(S: list[Tensor], T: list[Tensor], fg: list[Tensor], bg: list[Tensor],
              w_s: list[Tensor], w_t: list[Tensor], temps: list[float]) -> list[Tensor]:
    out = [fgd_stats_level(*args) for args in zip(S, T, fg, bg, w_s, w_t, temps)]
    return [p for p, _ in out] + [c for _, c in out]


def fgd_grad(S: list[Tensor], T: list[Tensor], pix_coef: list[Tensor],
             chan_coef: list[Tensor], K: list[Tensor]) -> list[Tensor]:
    out = [fgd_grad_level(*args) for args in zip(S, T, pix_coef, chan_coef, K)]
    return [o[0] for o in out] + [o[1] for o in out] + [o[2] for o in out]
