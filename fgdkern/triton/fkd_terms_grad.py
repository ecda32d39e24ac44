"""The backward of FKD's small math on the GPU (the code variant), every level in one launch
(contract: fgdkern.reference.fkd_small_math.terms_grad; docs/fkd.md, "How it is computed").

Reads the terms' gradient G (L, 3) and the terms themselves (the norms' derivative
is 1 / (2 norm)), the tables and the mimic parameters of every level; writes the
imitation gradient pass's tables: pix_coef of f(S) (a = 2 d L / d sq_d = 2 g_feat M),
pix_coef of S (b: the gradient of sum_c S, through the spatial mimic), chan_coef
of S (w = 1, b: the gradient of sum_ij S, through the channel mimic), and the
mimic parameters' gradients. As in fkd_terms.py, a program per level walks its
images in order; the parameter gradients are sums over the images, added image
after image, so they too are deterministic.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import IMIT_CHAN_COEF, IMIT_PIX_COEF
from fgdkern.triton.fgd_terms_grad import added
from fgdkern.triton.fkd_terms import (
    ABS_X, BLOCK, BLOCK_J, NUM_WARPS, SUM_X, B_CH, B_SP, W_CH, W_SP,
    COL_CHANC_S, COL_CS, COL_CT, COL_GMIMIC, COL_MIMIC, COL_PIXC_F, COL_PIXC_S, COL_SCRATCH,
    NCOL, channel_diff, check_levels, image_tables, level_sizes, level_table, mask_at, param,
    spatial_diff)
from fgdkern.triton.levels import (
    device_values, host_copy_if_interpreted, on_device, positive_levels, row_indices)
from fgdkern.triton.merges import softmax_stats

A, B, S, COEF_ROWS = row_indices(IMIT_PIX_COEF, "a", "b", "s")
CW, CB, CS, CHAN_COEF_ROWS = row_indices(IMIT_CHAN_COEF, "w", "b", "s")
# Weight tiles half as wide as the forward's: the backward holds three at once (the
# weights, their gradient's update, what it adds to), which no compile spills with
# (tests/triton/test_offline_compile.py, Triton 3.6 to 3.9).
BLOCK_I = 64


@triton.jit
def norm_grad(G, terms, l, k):
    """The gradient of the squared norm behind term k: G / (2 norm), 0 where the norm is 0."""
    norm = tl.load(terms + l * 3 + k)
    return tl.where(norm > 0, tl.load(G + l * 3 + k) / (2 * norm), 0.0)


@triton.jit
def spatial_coefficients(base, lv, t_sum, s_sum, p, pn, H, W, Ct, Cs, g_sp):
    """At pixels p: g_pred = -2 g_sp d of the spatial mimic's output, and the gradient of
    sum_c S, the transposed conv (1 / Cs) sum_k w[k] g_pred[p - k] (g_pred recomputed at
    each neighbour)."""
    w = param(base, lv, COL_MIMIC, W_SP)
    y, x = p // W, p % W
    g_sum = tl.zeros(p.shape, tl.float32)
    for k in range(9):  # not unrolled: each tap unrolls spatial_diff's nine
        yy, xx = y - (k // 3 - 1), x - (k % 3 - 1)
        inside = pn & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        g_sum += tl.load(w + k) * (-2 * g_sp) * spatial_diff(base, lv, t_sum, s_sum, yy, xx,
                                                             inside, H, W, Ct, Cs)
    g_pred = -2 * g_sp * spatial_diff(base, lv, t_sum, s_sum, y, x, pn, H, W, Ct, Cs)
    return g_pred, g_sum / Cs


@triton.jit
def spatial_weight_grad(s_sum, g_pred, p, pn, H, W, Cs):
    """sum over pixels p of g_pred * mean_c S at the pixel of each 3x3 tap, as 16 lanes."""
    y, x = p // W, p % W
    taps = tl.arange(0, 16)
    g_w = tl.zeros([16], tl.float32)
    for k in tl.static_range(9):
        yy, xx = y + (k // 3 - 1), x + (k % 3 - 1)
        inside = pn & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        m = tl.load(s_sum + yy * W + xx, mask=inside, other=0.0) / Cs
        g_w += tl.where(taps == k, tl.sum(g_pred * m, 0), 0.0)
    return g_w


@triton.jit
def pixel_coefficients(base, lv, n, HW, W, H, Ct, Cs, scale_t, scale_s, g_feat, g_sp,
                       BLOCK: tl.constexpr):
    """Image n's pix_coef of f(S) and of S; returns its share of the spatial mimic's weight
    (16 lanes) and bias gradients."""
    pt, ps, _, _ = image_tables(base, lv, n, HW)
    pcf = base + tl.load(lv + COL_PIXC_F) + n * COEF_ROWS * HW
    pcs = base + tl.load(lv + COL_PIXC_S) + n * COEF_ROWS * HW
    mt, zt = softmax_stats(pt + ABS_X * HW, HW, scale_t, BLOCK)
    ms, zs = softmax_stats(ps + ABS_X * HW, HW, scale_s, BLOCK)
    g_w = tl.zeros([16], tl.float32)
    g_b = tl.zeros([], tl.float32)
    for p0 in range(0, HW, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        pn = p < HW
        M = mask_at(pt, ps, p, pn, HW, scale_t, scale_s, mt, zt, ms, zs)
        zero = tl.zeros([BLOCK], tl.float32)
        tl.store(pcf + A * HW + p, (2 * g_feat * M).to(tl.float32), mask=pn)
        tl.store(pcf + B * HW + p, zero, mask=pn)
        tl.store(pcf + S * HW + p, zero, mask=pn)
        g_pred, g_sum = spatial_coefficients(base, lv, pt + SUM_X * HW, ps + SUM_X * HW, p, pn,
                                             H, W, Ct, Cs, g_sp)
        tl.store(pcs + A * HW + p, zero, mask=pn)
        tl.store(pcs + B * HW + p, g_sum, mask=pn)
        tl.store(pcs + S * HW + p, zero, mask=pn)
        g_w += spatial_weight_grad(ps + SUM_X * HW, g_pred, p, pn, H, W, Cs)
        g_b += tl.sum(g_pred, 0)
    return g_w, g_b


@triton.jit
def channel_coefficients(base, lv, n, HW, g_ch, BLOCK_J: tl.constexpr, BLOCK_I: tl.constexpr):
    """Image n's chan_coef of S; adds its share of the channel mimic's gradients. g_pred =
    -2 g_ch d of the mimic's output goes to the scratch row first: every column of the
    transposed product needs all of it."""
    Ct, Cs = tl.load(lv + COL_CT), tl.load(lv + COL_CS)
    _, _, t_mean, s_mean = image_tables(base, lv, n, HW)
    scratch = base + tl.load(lv + COL_SCRATCH) + n * Ct
    for j0 in range(0, Ct, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        g_pred = -2 * g_ch * channel_diff(base, lv, t_mean, s_mean, j, j < Ct, Cs, HW, BLOCK_I)
        tl.store(scratch + j, g_pred, mask=j < Ct)
        added(param(base, lv, COL_GMIMIC, B_CH) + j, g_pred, j < Ct, n)
    tl.debug_barrier()  # the scratch row, seen by every thread
    chanc = base + tl.load(lv + COL_CHANC_S) + n * CHAN_COEF_ROWS * Cs
    for i0 in range(0, Cs, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        mean_i = tl.load(s_mean + i, mask=i < Cs, other=0.0) / HW
        g_mean = tl.zeros([BLOCK_I], tl.float32)
        for j0 in range(0, Ct, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            g_pred = tl.load(scratch + j, mask=j < Ct, other=0.0)
            at = j[:, None] * Cs + i[None, :]
            tile = (j < Ct)[:, None] & (i < Cs)[None, :]
            g_mean += tl.sum(tl.load(param(base, lv, COL_MIMIC, W_CH) + at, mask=tile,
                                     other=0.0) * g_pred[:, None], 0)
            added(param(base, lv, COL_GMIMIC, W_CH) + at, g_pred[:, None] * mean_i[None, :],
                  tile, n)
        tl.store(chanc + CW * Cs + i, tl.full([BLOCK_I], 1.0, tl.float32), mask=i < Cs)
        tl.store(chanc + CB * Cs + i, g_mean / HW, mask=i < Cs)
        tl.store(chanc + CS * Cs + i, tl.zeros([BLOCK_I], tl.float32), mask=i < Cs)


@triton.jit
def fkd_terms_grad_kernel(table, base, temps, G, terms, BLOCK: tl.constexpr,
                          BLOCK_J: tl.constexpr, BLOCK_I: tl.constexpr):
    """Reads one level's row of G and of the terms, its tables and parameters; writes its
    coefficient tables and its parameters' gradients."""
    l = tl.program_id(0)
    lv = table + l * NCOL
    N, Ct, Cs, HW, W, H = level_sizes(lv)
    temp = tl.load(temps + l)
    scale_t, scale_s = 1.0 / (Ct * temp), 1.0 / (Cs * temp)
    g_feat, g_ch, g_sp = norm_grad(G, terms, l, 0), norm_grad(G, terms, l, 1), norm_grad(
        G, terms, l, 2)
    g_w = tl.zeros([16], tl.float32)
    g_b = tl.zeros([], tl.float32)
    for n in range(N):
        g_w_n, g_b_n = pixel_coefficients(base, lv, n, HW, W, H, Ct, Cs, scale_t, scale_s,
                                          g_feat, g_sp, BLOCK)
        g_w += g_w_n
        g_b += g_b_n
        channel_coefficients(base, lv, n, HW, g_ch, BLOCK_J, BLOCK_I)
        tl.debug_barrier()  # this image's additions are seen by every thread of the next
    taps = tl.arange(0, 16)
    tl.store(param(base, lv, COL_GMIMIC, W_SP) + taps, g_w, mask=taps < 9)
    tl.store(param(base, lv, COL_GMIMIC, B_SP), g_b)


@host_copy_if_interpreted
def fkd_terms_grad(G: Tensor, pix_t: list[Tensor], pix_s: list[Tensor], chan_t: list[Tensor],
                   chan_s: list[Tensor], mimic: list[Tensor], widths: list[int],
                   temps: list[float], table: Tensor) -> list[Tensor]:
    """The contract's terms_grad outputs [pix_coef of f(S) * L, pix_coef of S * L, chan_coef
    of S * L, g_mimic * 4L] (table: what fkd_terms returned)."""
    check_levels(pix_t, pix_s, chan_t, chan_s, mimic, widths)
    L, N = len(pix_t), pix_t[0].shape[0]
    temps = positive_levels("temps", temps, L)
    for name, x in (("G", G), ("table", table)):
        if x.shape != (L, 3) or x.dtype != torch.float32 or x.device != pix_t[0].device:
            raise ValueError(f"{name} must be ({L}, 3) float32 on {pix_t[0].device}, got "
                             f"{x.dtype} {tuple(x.shape)} on {x.device}")
    pixc_f = [torch.empty_like(p) for p in pix_t]
    pixc_s = [torch.empty_like(p) for p in pix_s]
    chanc_s = [c.new_empty((N, CHAN_COEF_ROWS.value, c.shape[2])) for c in chan_s]
    g_mimic = [torch.empty_like(m) for m in mimic]
    scratch = [c.new_empty((N, c.shape[2])) for c in chan_t]
    grad = [[pixc_f[l], pixc_s[l], chanc_s[l], *g_mimic[4 * l:4 * l + 4], scratch[l]]
            for l in range(L)]
    with on_device(G.device):
        fkd_terms_grad_kernel[(L,)](
            level_table(pix_t, pix_s, chan_t, chan_s, mimic, widths, grad), pix_t[0],
            device_values(temps, torch.float32, G.device), G.contiguous(), table.contiguous(),
            BLOCK=BLOCK, BLOCK_J=BLOCK_J, BLOCK_I=BLOCK_I, num_warps=NUM_WARPS)
    return [*pixc_f, *pixc_s, *chanc_s, *g_mimic]
