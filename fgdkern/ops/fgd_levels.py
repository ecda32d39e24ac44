"""FGD's small math of every level at once: the terms from the statistics, and
the coefficient tables of the gradient pass from the statistics' gradients.

What the fused passes leave is O(N*(C+HW)) per level (docs/kernels.md,
"FGD's two passes"): softmaxes, L1 terms, the GcBlock MLPs. Level by level
that is several hundred small torch ops per training step, whose per-op cost
on a CPU (and launches on a GPU) outweighs their arithmetic. Here the
per-channel math is one op over all levels: rows stacked to (L, N, C) (the
levels of one loss share C), the GcBlock MLPs as batched matrix products. The
per-pixel math (softmaxes over each level's HW) stays per level: padding the
levels to the largest one would move several times the bytes it saves in
calls. Notation: fgdkern/reference/fgd_passes.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fgdkern import _checks, _device
from fgdkern.reference.fgd import GcBlockParams
from fgdkern.rows import FGD_CHAN, FGD_CHAN_COEF, FGD_PIX, FGD_PIX_COEF


def values(rows: list, like: Tensor) -> Tensor:
    """Host numbers (a list, or a list of equal-length lists) as a float32 tensor on like's
    device, without a host sync."""
    if _checks.is_compiling():  # a constant of the graph
        return torch.tensor(rows, dtype=torch.float32, device=like.device)
    return _device.device_values(rows, torch.float32, like.device)


def column(per_level: list[float], like: Tensor) -> Tensor:
    """One number per level as an (L, 1, 1) float32 column on like's device."""
    return values(per_level, like).view(-1, 1, 1)


def level_column(per_level: list[float], like: Tensor):
    """column(per_level), or the float itself when all levels share it."""
    same = all(v == per_level[0] for v in per_level)
    return float(per_level[0]) if same else column(per_level, like)


def same_eps(gcs: list[GcBlockParams]) -> bool:
    return all(g.norm_eps == gcs[0].norm_eps for g in gcs)


def same_channels(chan: list[Tensor]) -> bool:
    """Whether the levels share C, so that their per-channel rows stack; the functions
    below take levels that do not one at a time."""
    return all(c.shape[-1] == chan[0].shape[-1] for c in chan)


def each_level(*per_level: list) -> list[tuple[list, ...]]:
    """The arguments of one level at a time: per level, a one-item list of each."""
    return [tuple([x] for x in level) for level in zip(*per_level)]


def channel_add_levels(gcs: list[GcBlockParams], ctx: Tensor) -> Tensor:
    """channel_add_conv of every level on its (N, C) context; ctx (L, N, C) -> (L, N, C).

    On a 1x1 map its convolutions are matrix products (fgdkern.reference.fgd.gc_transform),
    here batched over levels; LayerNorm normalises each level's rows, then its own affine.
    """
    if not same_eps(gcs):  # one level at a time
        return torch.cat([channel_add_levels([g], c) for g, c in zip(gcs, ctx.split(1))])
    W1 = torch.stack([g.add1_weight.flatten(1) for g in gcs])           # (L, C/2, C)
    b1 = torch.stack([g.add1_bias for g in gcs]).unsqueeze(1)           # (L, 1, C/2)
    h = torch.baddbmm(b1, ctx, W1.transpose(1, 2))
    gamma = torch.stack([g.norm_weight.flatten() for g in gcs]).unsqueeze(1)
    beta = torch.stack([g.norm_bias.flatten() for g in gcs]).unsqueeze(1)
    h = F.layer_norm(h, (h.shape[-1],), eps=gcs[0].norm_eps) * gamma + beta
    W2 = torch.stack([g.add2_weight.flatten(1) for g in gcs])           # (L, C, C/2)
    b2 = torch.stack([g.add2_bias for g in gcs]).unsqueeze(1)
    return torch.baddbmm(b2, h.relu(), W2.transpose(1, 2))


def spatial_mask_terms(pix: list[Tensor], temps: list[float]) -> Tensor:
    """(L,) sum |A_S_s - A_S_t| of every level: per level, as its softmax runs over its HW."""
    out = []
    for p, temp in zip(pix, temps):
        HW = p.shape[-1]
        A_S_s = HW * torch.softmax(p[:, FGD_PIX.gs_s] / temp, -1)
        A_S_t = HW * torch.softmax(p[:, FGD_PIX.gs_t].detach() / temp, -1)
        out.append((A_S_s - A_S_t).abs().sum())
    return torch.stack(out)


def terms_table(pix: list[Tensor], chan: list[Tensor], gc_s: list[GcBlockParams],
                gc_t: list[GcBlockParams], temps: list[float]) -> Tensor:
    """(L, 4) unweighted terms fg, bg, mask, rela of every level from its statistics
    (docs/fgd.md, "Loss terms")."""
    if not same_channels(chan):
        return torch.cat([terms_table(*level) for level in each_level(pix, chan, gc_s, gc_t,
                                                                      temps)])
    N, C = chan[0].shape[0], chan[0].shape[2]
    temp = level_column(temps, chan[0])
    hw = column([p.shape[-1] for p in pix], chan[0])
    c = dict(zip(FGD_CHAN, torch.stack(chan).unbind(2)))                 # each (L, N, C)
    A_C_s = C * torch.softmax(c["gc_s"] / temp, -1)
    A_C_t = C * torch.softmax(c["gc_t"].detach() / temp, -1)
    fg = (A_C_t * c["x_fg"]).sum((1, 2))
    bg = (A_C_t * c["x_bg"]).sum((1, 2))
    mask = (A_C_s - A_C_t).abs().sum((1, 2)) + spatial_mask_terms(pix, temps)
    shift = channel_add_levels(gc_s, c["ctx_s"]) - channel_add_levels(gc_t, c["ctx_t"])
    rela = c["m2_d"].sum((1, 2)) + hw.view(-1) * (c["sum_d"] / hw + shift).square().sum((1, 2))
    return torch.stack([fg, bg, mask, rela], 1) / N


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
    "The row tables"). The per-pixel tables are made level by level (their softmaxes run
    over each level's HW); the per-channel ones for all levels at once."""
    if not same_channels(chan):
        per_level = [grad_coefficients(*level) for level in each_level(
            fg, bg, w_s, w_t, pix, chan, g_pix, g_chan, temps)]
        return tuple([t for tables in per_level for t in tables[k]] for k in range(3))
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
