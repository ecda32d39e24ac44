"""The backward of FGD's small math on the GPU, every level in one launch (contract:
fgdkern.reference.fgd_small_math.terms_grad; docs/kernels.md, "The terms' backward").

Reads the terms' gradient G (L, 4), the statistic tables pix and chan, the
masks, the conv_mask weights and the MLP parameters of every level; writes
fgd_grad's coefficient tables pix_coef (N, 5, HW), chan_coef (N, 11, C) and K
(N, 2), and the gradients of both sides' MLP parameters. As in fgd_terms.py, a
program per level walks its images in order, recomputing the forward's
softmaxes and MLP layers; the parameter gradients are sums over the images,
added image after image into the outputs, so they too are deterministic.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import FGD_CHAN_COEF, FGD_PIX_COEF
from fgdkern.triton.fgd_terms import (
    B1, B2, BETA, GAMMA, W1, W2, blocks, check_levels, level_params, level_table, mlp_hidden,
    mlp_out, side_param,
    CHAN_ROWS, CTX_S, CTX_T, GC_S, GC_T, GS_S, GS_T, PIX_ROWS, SUM_D, Z_S, Z_T,
    COL_BG, COL_C, COL_CHAN, COL_CHANC, COL_FG, COL_GMLP_S, COL_GMLP_T, COL_HW, COL_K,
    COL_MLP_S, COL_MLP_T, COL_N, COL_PIX, COL_PIXC, COL_WS, COL_WT, NCOL)
from fgdkern.triton.levels import (
    float32_levels, host_copy_if_interpreted, on_device, row_indices)
from fgdkern.triton.merges import softmax_at, softmax_stats
from fgdkern.triton.tiles import sign

A_SIGN, FGA, BGA, P_S, P_T, PIX_COEF_ROWS = row_indices(
    FGD_PIX_COEF, "a_sign", "fgA", "bgA", "p_s", "p_t")
B_SIGN, K_D, K_CONST, K_FG, K_BG, G_CTX_S, G_CTX_T, CW_S, CW_T, CC_S, CC_T, CHAN_COEF_ROWS = \
    row_indices(FGD_CHAN_COEF, "b_sign", "k_d", "k_const", "k_fg", "k_bg", "g_ctx_s",
                "g_ctx_t", "w_s", "w_t", "ctx_s", "ctx_t")


@triton.jit
def added(ptr, value, mask, n):
    """Stores value at ptr, added to what is there unless n is the first image (0)."""
    later = (n + tl.zeros(mask.shape, tl.int32)) > 0  # a tensor also where n is a Python int
    tl.store(ptr, value + tl.load(ptr, mask=mask & later, other=0.0), mask=mask)


@triton.jit
def attention_dot(a_s, a_t, n, inv_temp, g_mask, BLOCK: tl.constexpr):
    """Over the n values of an attention map (pixels or channels) of the student at a_s and
    the teacher at a_t: the softmaxes' stats, and sum of g_y * y with y the student's
    softmax and g_y = n g_mask sign(n y - A), the mask term's gradient in y (A: the
    teacher's attention, n softmax)."""
    ms, zs = softmax_stats(a_s, n, inv_temp, BLOCK)
    mt, zt = softmax_stats(a_t, n, inv_temp, BLOCK)
    dot = tl.zeros([], tl.float64)
    for i0 in range(0, n, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        y = softmax_at(a_s, i, i < n, inv_temp, ms, zs)
        dot += tl.sum(n * g_mask * sign(n * y - n * softmax_at(a_t, i, i < n, inv_temp, mt, zt))
                      * y, 0)
    return ms, zs, mt, zt, dot


@triton.jit
def fgd_pixel_coef_kernel(table, base, params, G, BLOCK: tl.constexpr):
    """Reads one image's pix and masks of one level (program (level, image)); writes its
    pix_coef: a_sign, the gradient of the mask loss's spatial part in gs_s (a softmax's
    backward) over C, fgA, bgA, p_s, p_t."""
    l, n = tl.program_id(0), tl.program_id(1)
    lv = table + l * NCOL
    N, C, HW = tl.load(lv + COL_N), tl.load(lv + COL_C), tl.load(lv + COL_HW)
    inv_temp = 1.0 / tl.load(params + l * 3)
    g_mask = tl.load(G + l * 4 + 2) / N
    pix = base + tl.load(lv + COL_PIX) + n * PIX_ROWS * HW
    pixc = base + tl.load(lv + COL_PIXC) + n * PIX_COEF_ROWS * HW
    fg = base + tl.load(lv + COL_FG) + n * HW
    bg = base + tl.load(lv + COL_BG) + n * HW
    ms, zs, mt, zt, dot = attention_dot(pix + GS_S * HW, pix + GS_T * HW, HW, inv_temp, g_mask,
                                        BLOCK)
    mps, zps = softmax_stats(pix + Z_S * HW, HW, 1.0, BLOCK)
    mpt, zpt = softmax_stats(pix + Z_T * HW, HW, 1.0, BLOCK)
    for p0 in range(0, HW, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        pn = p < HW
        y = softmax_at(pix + GS_S * HW, p, pn, inv_temp, ms, zs)
        A = HW * softmax_at(pix + GS_T * HW, p, pn, inv_temp, mt, zt)
        g_y = HW * g_mask * sign(HW * y - A)
        tl.store(pixc + A_SIGN * HW + p, y * (g_y - dot) * (inv_temp / C), mask=pn)
        tl.store(pixc + FGA * HW + p, tl.load(fg + p, mask=pn, other=0.0) * A, mask=pn)
        tl.store(pixc + BGA * HW + p, tl.load(bg + p, mask=pn, other=0.0) * A, mask=pn)
        tl.store(pixc + P_S * HW + p, softmax_at(pix + Z_S * HW, p, pn, 1.0, mps, zps), mask=pn)
        tl.store(pixc + P_T * HW + p, softmax_at(pix + Z_T * HW, p, pn, 1.0, mpt, zpt), mask=pn)


@triton.jit
def channel_coefficients(base, lv, chan, chanc, C, HW, g_fg, g_bg, g_mask, g_rela, inv_temp,
                         r_s, r_t, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_O: tl.constexpr):
    """One image's chan_coef rows but g_ctx_s, g_ctx_t; the row g_ctx_s holds meanwhile
    the gradient of the student's MLP output, 2 g_rela HW u (w2_backward reads it)."""
    ms, zs, mt, zt, dot = attention_dot(chan + GC_S * C, chan + GC_T * C, C, inv_temp, g_mask,
                                        BLOCK)
    w_s, w_t = base + tl.load(lv + COL_WS), base + tl.load(lv + COL_WT)
    for c0 in range(0, C, BLOCK_O):
        c = c0 + tl.arange(0, BLOCK_O)
        cn = c < C
        y = softmax_at(chan + GC_S * C, c, cn, inv_temp, ms, zs)
        A = C * softmax_at(chan + GC_T * C, c, cn, inv_temp, mt, zt)
        mean_d = tl.load(chan + SUM_D * C + c, mask=cn, other=0.0) / HW
        u = (mean_d + mlp_out(base, lv, COL_MLP_S, r_s, c, cn, C, BLOCK_H)
             - mlp_out(base, lv, COL_MLP_T, r_t, c, cn, C, BLOCK_H))
        g_y = C * g_mask * sign(C * y - A)
        tl.store(chanc + B_SIGN * C + c, y * (g_y - dot) * (inv_temp / HW), mask=cn)
        tl.store(chanc + K_D * C + c, tl.where(cn, 2 * g_rela, 0.0), mask=cn)
        tl.store(chanc + K_CONST * C + c, 2 * g_rela * (u - mean_d), mask=cn)
        tl.store(chanc + K_FG * C + c, 2 * g_fg * A, mask=cn)
        tl.store(chanc + K_BG * C + c, 2 * g_bg * A, mask=cn)
        tl.store(chanc + CW_S * C + c, tl.load(w_s + c, mask=cn, other=0.0), mask=cn)
        tl.store(chanc + CW_T * C + c, tl.load(w_t + c, mask=cn, other=0.0), mask=cn)
        tl.store(chanc + CC_S * C + c, tl.load(chan + CTX_S * C + c, mask=cn, other=0.0), mask=cn)
        tl.store(chanc + CC_T * C + c, tl.load(chan + CTX_T * C + c, mask=cn, other=0.0), mask=cn)
        tl.store(chanc + G_CTX_S * C + c, 2 * g_rela * HW * u, mask=cn)


@triton.jit
def w2_backward(base, lv, col, gcol, g_out_row, r, sgn, n, C, BLOCK_H: tl.constexpr,
                BLOCK_O: tl.constexpr):
    """One side's output layer backward from its output's gradient, sgn times the values
    at g_out_row: adds the image's share of W2 and b2's gradients; returns the gradient
    in r."""
    H = C // 2
    o = tl.arange(0, BLOCK_H)
    g_r = tl.zeros([BLOCK_H], tl.float32)
    for c0 in range(0, C, BLOCK_O):
        c = c0 + tl.arange(0, BLOCK_O)
        cn = c < C
        g_out = sgn * tl.load(g_out_row + c, mask=cn, other=0.0)
        at = c[:, None] * H + o[None, :]
        tile = cn[:, None] & (o < H)[None, :]
        g_r += tl.sum(tl.load(side_param(base, lv, col, W2) + at, mask=tile, other=0.0)
                      * g_out[:, None], 0)
        added(side_param(base, lv, gcol, W2) + at, g_out[:, None] * r[None, :], tile, n)
        added(side_param(base, lv, gcol, B2) + c, g_out, cn, n)
    return g_r


@triton.jit
def mlp_backward(base, lv, col, gcol, x, g_ctx, n, C, eps, g_r, BLOCK_H: tl.constexpr,
                 BLOCK_I: tl.constexpr):
    """One side's MLP backward on its context x from the gradient g_r in r = relu(gamma hn
    + beta) (the hidden layer recomputed, rather than kept live since the forward): writes
    the context's gradient at g_ctx, adds the image's share of W1, b1, gamma and beta's
    gradients; returns K = sum over the channels of g_ctx * x."""
    H = C // 2
    hn, rstd, r = mlp_hidden(base, lv, col, x, C, eps, BLOCK_H, BLOCK_I)
    o = tl.arange(0, BLOCK_H)
    on = o < H
    g_y = tl.where(r > 0, g_r, 0.0)
    g_hn = g_y * tl.load(side_param(base, lv, col, GAMMA) + o, mask=on, other=0.0)
    g_h = (g_hn - tl.sum(g_hn, 0) / H - hn * (tl.sum(g_hn * hn, 0) / H)) * rstd
    g_h = tl.where(on, g_h, 0.0)
    added(side_param(base, lv, gcol, GAMMA) + o, g_y * hn, on, n)
    added(side_param(base, lv, gcol, BETA) + o, g_y, on, n)
    added(side_param(base, lv, gcol, B1) + o, g_h, on, n)
    K = tl.zeros([], tl.float32)
    for i0 in range(0, C, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        at = o[:, None] * C + i[None, :]
        tile = on[:, None] & (i < C)[None, :]
        g_x = tl.sum(tl.load(side_param(base, lv, col, W1) + at, mask=tile, other=0.0)
                     * g_h[:, None], 0)
        x_i = tl.load(x + i, mask=i < C, other=0.0)
        tl.store(g_ctx + i, g_x, mask=i < C)
        K += tl.sum(g_x * x_i, 0)
        added(side_param(base, lv, gcol, W1) + at, g_h[:, None] * x_i[None, :], tile, n)
    return K


@triton.jit
def fgd_terms_grad_kernel(table, base, params, G, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr,
                          BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """Reads one level's row of G, chan and parameters; writes its chan_coef and K and its
    parameters' gradients."""
    l = tl.program_id(0)
    lv = table + l * NCOL
    N, C, HW = tl.load(lv + COL_N), tl.load(lv + COL_C), tl.load(lv + COL_HW)
    inv_temp = 1.0 / tl.load(params + l * 3)
    eps_s, eps_t = tl.load(params + l * 3 + 1), tl.load(params + l * 3 + 2)
    g_fg, g_bg = tl.load(G + l * 4) / N, tl.load(G + l * 4 + 1) / N
    g_mask, g_rela = tl.load(G + l * 4 + 2) / N, tl.load(G + l * 4 + 3) / N
    for n in range(N):
        chan = base + tl.load(lv + COL_CHAN) + n * CHAN_ROWS * C
        chanc = base + tl.load(lv + COL_CHANC) + n * CHAN_COEF_ROWS * C
        K = base + tl.load(lv + COL_K) + n * 2
        _, _, r_s = mlp_hidden(base, lv, COL_MLP_S, chan + CTX_S * C, C, eps_s, BLOCK_H, BLOCK_I)
        _, _, r_t = mlp_hidden(base, lv, COL_MLP_T, chan + CTX_T * C, C, eps_t, BLOCK_H, BLOCK_I)
        channel_coefficients(base, lv, chan, chanc, C, HW, g_fg, g_bg, g_mask, g_rela, inv_temp,
                             r_s, r_t, BLOCK, BLOCK_H, BLOCK_O)
        tl.debug_barrier()  # the outputs' gradient in row g_ctx_s, seen by every thread
        g_r_s = w2_backward(base, lv, COL_MLP_S, COL_GMLP_S, chanc + G_CTX_S * C, r_s, 1.0, n,
                            C, BLOCK_H, BLOCK_O)
        g_r_t = w2_backward(base, lv, COL_MLP_T, COL_GMLP_T, chanc + G_CTX_S * C, r_t, -1.0, n,
                            C, BLOCK_H, BLOCK_O)
        tl.debug_barrier()  # read before mlp_backward writes the row's own values
        tl.store(K, mlp_backward(base, lv, COL_MLP_S, COL_GMLP_S, chan + CTX_S * C,
                                 chanc + G_CTX_S * C, n, C, eps_s, g_r_s, BLOCK_H, BLOCK_I))
        tl.store(K + 1, mlp_backward(base, lv, COL_MLP_T, COL_GMLP_T, chan + CTX_T * C,
                                     chanc + G_CTX_T * C, n, C, eps_t, g_r_t, BLOCK_H, BLOCK_I))
        tl.debug_barrier()  # this image's additions are seen by every thread of the next


@host_copy_if_interpreted
def fgd_terms_grad(G: Tensor, pix, chan, saved, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t,
                   temps) -> list[Tensor]:
    """The contract's terms_grad outputs [pix_coef*L, chan_coef*L, K*L, g_mlp_s*6L,
    g_mlp_t*6L] (saved: nothing, fgd_terms saves nothing)."""
    check_levels(pix, chan, mlp_s, mlp_t)
    L, N, C = len(pix), chan[0].shape[0], chan[0].shape[2]
    if G.shape != (L, 4) or G.dtype != torch.float32 or G.device != pix[0].device:
        raise ValueError(f"G must be ({L}, 4) float32 on {pix[0].device}, got {G.dtype} "
                         f"{tuple(G.shape)} on {G.device}")
    hw = [(N, p.shape[2]) for p in pix]  # the masks as (N, HW), the weights (C,)
    fg, bg = [float32_levels(name, [x.flatten(1) if x.dim() > 1 else x for x in xs], hw,
                             G.device, "pix") for name, xs in (("fg", fg), ("bg", bg))]
    w_s, w_t = [float32_levels(name, xs, [(C,)] * L, G.device, "pix")
                for name, xs in (("w_s", w_s), ("w_t", w_t))]
    pix_coef = [p.new_empty((N, PIX_COEF_ROWS, p.shape[2])) for p in pix]
    chan_coef = [c.new_empty((N, CHAN_COEF_ROWS, C)) for c in chan]
    K = [c.new_empty((N, 2)) for c in chan]
    g_s, g_t = [torch.empty_like(p) for p in mlp_s], [torch.empty_like(p) for p in mlp_t]
    grad = [[fg[l], bg[l], w_s[l], w_t[l], pix_coef[l], chan_coef[l], K[l],
             *g_s[6 * l:6 * l + 6], *g_t[6 * l:6 * l + 6]] for l in range(L)]
    table = level_table(pix, chan, mlp_s, mlp_t, grad)
    params, G = level_params(temps, eps_s, eps_t, G), G.contiguous()
    with on_device(G.device):
        fgd_pixel_coef_kernel[(L, N)](table, pix[0], params, G, BLOCK=blocks(C)["BLOCK"])
        fgd_terms_grad_kernel[(L,)](table, pix[0], params, G, **blocks(C))
    return [*pix_coef, *chan_coef, *K, *g_s, *g_t]
