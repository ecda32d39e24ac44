"""FGD's small math of every level at once: the terms from the statistics, and
the coefficient tables of the gradient pass from the statistics' gradients.

What the fused passes leave is O(N*(C+HW)) per level (docs/kernels.md,
"FGD's two passes"): softmaxes, L1 terms, the GcBlock MLPs. Level by level
that is several hundred small torch ops per training step, whose per-op cost
on a CPU (and launches on a GPU) outweighs their arithmetic. Here the
per-channel math is one op over all levels: rows stacked to (L, N, C) (the
levels of one loss share C), the GcBlock MLPs as batched matrix products
(fgdkern.ops.gc_mlp). The per-pixel math (softmaxes over each level's HW)
stays per level: padding the levels to the largest one would move several
times the bytes it saves in calls. The terms' backward is written out by hand
(docs/kernels.md, "The terms' backward"), so that the autograd graph of a
whole FGD loss is one node (fgdkern.ops.fgd), and no softmax or product is
done twice. On CPU the same contracts run as compiled ops
(csrc/cpu/fgd_terms.cpp), on a GPU as Triton kernels (fgdkern/triton/fgd_terms.py,
fgd_terms_grad.py); this module is their contract and the pure-PyTorch path's.
Notation: fgdkern/reference/fgd_passes.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern import _checks, _device
from fgdkern.ops import gc_mlp
from fgdkern.rows import FGD_CHAN, FGD_CHAN_COEF, FGD_PIX, FGD_PIX_COEF


def values(rows: list, like: Tensor) -> Tensor:
    """Host numbers (a list, or a list of equal-length lists) as a tensor of like's dtype
    and device, without a host sync: float32 on every fused path, float64 where the tests
    evaluate the same math as their truth."""
    if _checks.is_compiling():  # a constant of the graph
        return torch.tensor(rows, dtype=like.dtype, device=like.device)
    return _device.device_values(rows, like.dtype, like.device)


def column(per_level: list[float], like: Tensor) -> Tensor:
    """One number per level as an (L, 1, 1) column of like's dtype and device."""
    return values(per_level, like).view(-1, 1, 1)


def level_column(per_level: list[float], like: Tensor):
    """column(per_level), or the float itself when all levels share it."""
    same = all(v == per_level[0] for v in per_level)
    return float(per_level[0]) if same else column(per_level, like)


def terms(pix: list[Tensor], chan: list[Tensor], mlp_s: list[Tensor], mlp_t: list[Tensor],
          eps_s: list[float], eps_t: list[float], temps: list[float]) -> list[Tensor]:
    """[table, *saved]: the (L, 4) unweighted terms fg, bg, mask, rela of levels that share
    C (docs/fgd.md, "Loss terms"), and what terms_grad needs. mlp_s / mlp_t: the GcBlock
    MLP parameters of every level (gc_mlp.flat); eps_s / eps_t: their LayerNorm eps.
    The same contract as the op fgdkern::fgd_terms_cpp, whose saved part is y_S alone."""
    N, C = chan[0].shape[0], chan[0].shape[2]
    temp = level_column(temps, chan[0])
    hw = column([p.shape[-1] for p in pix], chan[0])
    c = dict(zip(FGD_CHAN, torch.stack(chan).unbind(2)))                 # each (L, N, C)
    y_s = torch.softmax(c["gc_s"] / temp, -1)
    A_C_t = C * torch.softmax(c["gc_t"] / temp, -1)
    diff_c = C * y_s - A_C_t                                               # A_C_s - A_C_t
    fg = (A_C_t * c["x_fg"]).sum((1, 2))
    bg = (A_C_t * c["x_bg"]).sum((1, 2))
    y_S, diff_S = spatial_attention(pix, temps)
    mask = diff_c.abs().sum((1, 2)) + torch.stack([d.abs().sum() for d in diff_S])
    out_s, saved_s = gc_mlp.forward(mlp_s, column(eps_s, chan[0]), c["ctx_s"])
    out_t, saved_t = gc_mlp.forward(mlp_t, column(eps_t, chan[0]), c["ctx_t"])
    u = c["sum_d"] / hw + (out_s - out_t)                                  # mean_d + shift
    rela = c["m2_d"].sum((1, 2)) + hw.view(-1) * u.square().sum((1, 2))
    table = torch.stack([fg, bg, mask, rela], 1) / N
    return [table, y_s, A_C_t, diff_c, u, *y_S, *diff_S, *saved_s, *saved_t]


def terms_grad(G: Tensor, pix, chan, saved, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t,
               temps) -> list[Tensor]:
    """The backward of terms, written out (docs/kernels.md, "The terms' backward"): from the
    terms' gradient G (L, 4), fgd_grad's tables and the MLP parameters' gradients,
    [pix_coef*L, chan_coef*L, K*L, g_mlp_s*6L, g_mlp_t*6L] (the contract of the op
    fgdkern::fgd_terms_grad_cpp). pix's only row with a gradient is gs_s and chan's gc_t
    has none: the teacher's attention is a constant."""
    L, N, C = len(pix), chan[0].shape[0], chan[0].shape[2]
    y_s, A_C_t, diff_c, u = saved[:4]
    y_S, diff_S = saved[4:4 + L], saved[4 + L:4 + 2 * L]
    n_mlp = len(saved[4 + 2 * L:]) // 2
    saved_s, saved_t = saved[4 + 2 * L:4 + 2 * L + n_mlp], saved[4 + 2 * L + n_mlp:]
    g_fg, g_bg, g_mask, g_rela = (G.float() / N).unsqueeze(-1).unsqueeze(-1).unbind(1)
    g = dict(x_fg=g_fg * A_C_t, x_bg=g_bg * A_C_t, gc_t=torch.zeros_like(y_s),
             gc_s=softmax_grad(y_s, (C * g_mask) * diff_c.sign(), level_column(temps, y_s)),
             m2_d=g_rela.expand_as(u), sum_d=2 * g_rela * u)
    g_shift = g["sum_d"] * column([y.shape[-1] for y in y_S], u)
    g["ctx_s"], g_mlp_s = gc_mlp.backward(saved_s, g_shift, mlp_s)
    g["ctx_t"], g_mlp_t = gc_mlp.backward(saved_t, -g_shift, mlp_t)
    g_chan = torch.stack([g[r] for r in FGD_CHAN], 2).unbind(0)          # (N, 8, C) each
    g_pix = [gs_s_gradient(y, (y.shape[-1] * g_mask[l]) * d.sign(), temps[l])
             for l, (y, d) in enumerate(zip(y_S, diff_S))]
    pix_coef, chan_coef, K = grad_coefficients(fg, bg, w_s, w_t, pix, chan, g_pix, g_chan,
                                               temps)
    return [*pix_coef, *chan_coef, *K, *g_mlp_s, *g_mlp_t]


def spatial_attention(pix: list[Tensor], temps: list[float]) -> tuple[list, list]:
    """Per level: softmax(gs_s / temp) over its HW, and A_S_s - A_S_t, each (N, HW)."""
    y_S, diff_S = [], []
    for p, temp in zip(pix, temps):
        HW = p.shape[-1]
        y_S.append(torch.softmax(p[:, FGD_PIX.gs_s] / temp, -1))
        diff_S.append(HW * y_S[-1] - HW * torch.softmax(p[:, FGD_PIX.gs_t] / temp, -1))
    return y_S, diff_S


def softmax_grad(y: Tensor, g_y: Tensor, temp) -> Tensor:
    """Gradient w.r.t. a of sum(g_y * y), y = softmax(a / temp) along the last axis."""
    return y * (g_y - (g_y * y).sum(-1, keepdim=True)) / temp


def gs_s_gradient(y: Tensor, g_y: Tensor, temp: float) -> Tensor:
    """An (N, 4, HW) gradient of one level's pix: softmax_grad in row gs_s, zeros elsewhere."""
    rows = [torch.zeros_like(y)] * len(FGD_PIX)
    rows[FGD_PIX.gs_s] = softmax_grad(y, g_y, temp)
    return torch.stack(rows, 1)


def pixel_coefficients(C: int, fg: Tensor, bg: Tensor, pix: Tensor, g_pix: Tensor,
                       temp: float) -> Tensor:
    """fgd_grad's per-pixel table (N, 5, HW) of one level of C channels (rows: FGD_PIX_COEF)."""
    N, _, HW = pix.shape
    A = HW * torch.softmax(pix[:, FGD_PIX.gs_t] / temp, -1)             # teacher A_S
    p = torch.softmax(pix[:, FGD_PIX.z_s:FGD_PIX.z_t + 1], -1)           # p_s, p_t
    rows = dict(a_sign=g_pix[:, FGD_PIX.gs_s] / C, fgA=fg.reshape(N, HW) * A,
                bgA=bg.reshape(N, HW) * A, p_s=p[:, 0], p_t=p[:, 1])
    return torch.stack([rows[r] for r in FGD_PIX_COEF], 1)


def grad_coefficients(fg, bg, w_s, w_t, pix, chan, g_pix, g_chan, temps):
    """Gradients of the statistics of every level -> fgd_grad's tables, per level:
    (pix_coef (N, 5, HW), chan_coef (N, 11, C), K (N, 2)) lists (docs/kernels.md,
    "The row tables") of levels that share C. The per-pixel tables are made level by level
    (their softmaxes run over each level's HW); the per-channel ones for all levels at once."""
    N, C = chan[0].shape[0], chan[0].shape[2]
    pix_coef = [pixel_coefficients(C, *level) for level in zip(fg, bg, pix, g_pix, temps)]
    hw = column([p.shape[-1] for p in pix], chan[0])
    g = dict(zip(FGD_CHAN, torch.stack(g_chan).unbind(2)))               # each (L, N, C)
    c = dict(zip(FGD_CHAN, torch.stack(chan).unbind(2)))
    mean_d = c["sum_d"] / hw
    L = len(pix)
    chan_rows = dict(b_sign=g["gc_s"] / hw, k_d=2 * g["m2_d"],
                     k_const=g["sum_d"] - 2 * g["m2_d"] * mean_d, k_fg=2 * g["x_fg"],
                     k_bg=2 * g["x_bg"], g_ctx_s=g["ctx_s"], g_ctx_t=g["ctx_t"],
                     w_s=torch.stack(w_s).unsqueeze(1).expand(L, N, C),
                     w_t=torch.stack(w_t).unsqueeze(1).expand(L, N, C),
                     ctx_s=c["ctx_s"], ctx_t=c["ctx_t"])
    chan_coef = torch.stack([chan_rows[r] for r in FGD_CHAN_COEF], 2)   # (L, N, 11, C)
    K = torch.stack([(g["ctx_s"] * c["ctx_s"]).sum(-1), (g["ctx_t"] * c["ctx_t"]).sum(-1)], -1)
    return pix_coef, list(chan_coef.unbind(0)), list(K.unbind(0))
