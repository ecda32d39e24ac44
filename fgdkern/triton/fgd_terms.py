"""FGD's small math on the GPU: the terms of every level in one launch
(contract: fgdkern.reference.fgd_small_math.terms; docs/fgd.md, "Loss terms").

Reads the statistic tables pix (N, 4, HW) and chan (N, 8, C) of every level
(fgd_stats' outputs) and the GcBlock MLP parameters of both sides; writes the
(L, 4) table of unweighted terms fg, bg, mask, rela. A program per level walks
its images in order (so the sums are the same bit for bit from run to run):
softmaxes over the image's pixels and channels (online, merges.py's rule), the
two GcBlock MLPs (docs/fgd.md, "Parameters and initialisation") and the terms'
sums. Its backward, the coefficient tables of fgd_grad, is fgd_terms_grad.py.

Every float32 tensor is addressed by its element offset from one base (level
0's pix), so the levels' tables and each level's parameters may live anywhere.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import FGD_CHAN, FGD_PIX, GC_MLP
from fgdkern.triton.levels import (
    device_values, host_copy_if_interpreted, offset, on_device, row_indices)
from fgdkern.triton.merges import softmax_at, softmax_stats

GS_S, GS_T, Z_S, Z_T, PIX_ROWS = row_indices(FGD_PIX, "gs_s", "gs_t", "z_s", "z_t")
GC_S, GC_T, CTX_S, CTX_T, SUM_D, M2_D, X_FG, X_BG, CHAN_ROWS = row_indices(
    FGD_CHAN, "gc_s", "gc_t", "ctx_s", "ctx_t", "sum_d", "m2_d", "x_fg", "x_bg")
# Columns of the level table: sizes, then element offsets from the base of the forward's
# inputs (pix, chan, the 6 MLP parameters of each side), then of what only the backward
# reads (masks, conv_mask weights) and writes (pix_coef, chan_coef, K, the 6 parameter
# gradients of each side); the forward's table leaves those zero.
(COL_N, COL_C, COL_HW, COL_PIX, COL_CHAN, COL_MLP_S, COL_MLP_T, COL_FG, COL_BG, COL_WS,
 COL_WT, COL_PIXC, COL_CHANC, COL_K, COL_GMLP_S, COL_GMLP_T) = (
    tl.constexpr(k) for k in (0, 1, 2, 3, 4, 5, 11, 17, 18, 19, 20, 21, 22, 23, 24, 30))
NCOL = tl.constexpr(36)
W1, B1, GAMMA, BETA, W2, B2 = (tl.constexpr(k) for k in range(6))  # within a side's columns
BLOCK = 128  # pixels or channels per step of a sweep
PARAM_ROWS = 4  # rows of a weight matrix per tile
# A program per level does all of a level's small math: 8 warps, so that its sweeps are
# wide, and weight tiles of PARAM_ROWS x 128 values, which no compile spills with
# (tests/triton/test_offline_compile.py, Triton 3.6 to 3.9).
NUM_WARPS = 8


@triton.jit
def side_param(base, lv, col, which):
    """The address of one MLP parameter (W1 .. B2) of the side whose columns start at col."""
    return base + tl.load(lv + col + which)


@triton.jit
def mlp_hidden(base, lv, col, x, C, eps, BLOCK_H: tl.constexpr, BLOCK_I: tl.constexpr):
    """The hidden layer of one side's MLP on its context x (C values): y = LayerNorm(W1 x +
    b1) (before gamma and beta: hn), 1 / sqrt(var + eps) and r = relu(gamma hn + beta),
    each [BLOCK_H] over the C // 2 hidden units (zero beyond)."""
    H = C // 2
    o = tl.arange(0, BLOCK_H)
    on = o < H
    W = side_param(base, lv, col, W1)
    h = tl.zeros([BLOCK_H], tl.float32)
    for i0 in range(0, C, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        w = tl.load(W + o[:, None] * C + i[None, :], mask=on[:, None] & (i < C)[None, :],
                    other=0.0)
        h += tl.sum(w * tl.load(x + i, mask=i < C, other=0.0)[None, :], 1)
    h += tl.load(side_param(base, lv, col, B1) + o, mask=on, other=0.0)
    mean = tl.sum(h, 0) / H
    d = tl.where(on, h - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / H + eps)
    hn = d * rstd
    gamma = tl.load(side_param(base, lv, col, GAMMA) + o, mask=on, other=0.0)
    beta = tl.load(side_param(base, lv, col, BETA) + o, mask=on, other=0.0)
    return hn, rstd, tl.where(on, tl.maximum(hn * gamma + beta, 0.0), 0.0)


@triton.jit
def mlp_out(base, lv, col, r, c, cn, C, BLOCK_H: tl.constexpr):
    """Channels c of one side's MLP output, W2 r + b2 (cn: which c are channels)."""
    H = C // 2
    o = tl.arange(0, BLOCK_H)
    w = tl.load(side_param(base, lv, col, W2) + c[:, None] * H + o[None, :],
                mask=cn[:, None] & (o < H)[None, :], other=0.0)
    return tl.sum(w * r[None, :], 1) + tl.load(side_param(base, lv, col, B2) + c, mask=cn,
                                                other=0.0)


@triton.jit
def fgd_terms_kernel(table, base, params, out, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """Reads one level's pix, chan and MLP parameters; writes its row of out (L, 4)."""
    lv = table + tl.program_id(0) * NCOL
    N, C, HW = tl.load(lv + COL_N), tl.load(lv + COL_C), tl.load(lv + COL_HW)
    inv_temp = 1.0 / tl.load(params + tl.program_id(0) * 3)
    eps_s = tl.load(params + tl.program_id(0) * 3 + 1)
    eps_t = tl.load(params + tl.program_id(0) * 3 + 2)
    fg = tl.zeros([], tl.float64)
    bg = tl.zeros([], tl.float64)
    mask = tl.zeros([], tl.float64)
    rela = tl.zeros([], tl.float64)
    for n in range(N):
        pix = base + tl.load(lv + COL_PIX) + n * PIX_ROWS * HW
        chan = base + tl.load(lv + COL_CHAN) + n * CHAN_ROWS * C
        # spatial attention: |A_S of S - A_S of T| over the pixels (Eq. 2, 8)
        ms, zs = softmax_stats(pix + GS_S * HW, HW, inv_temp, BLOCK)
        mt, zt = softmax_stats(pix + GS_T * HW, HW, inv_temp, BLOCK)
        for p0 in range(0, HW, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            d = (softmax_at(pix + GS_S * HW, p, p < HW, inv_temp, ms, zs)
                 - softmax_at(pix + GS_T * HW, p, p < HW, inv_temp, mt, zt))
            mask += tl.sum(tl.abs(d), 0) * HW
        # channel attention, the teacher's weighting fg and bg, and the global term
        ms, zs = softmax_stats(chan + GC_S * C, C, inv_temp, BLOCK)
        mt, zt = softmax_stats(chan + GC_T * C, C, inv_temp, BLOCK)
        _, _, r_s = mlp_hidden(base, lv, COL_MLP_S, chan + CTX_S * C, C, eps_s, BLOCK_H, BLOCK_I)
        _, _, r_t = mlp_hidden(base, lv, COL_MLP_T, chan + CTX_T * C, C, eps_t, BLOCK_H, BLOCK_I)
        for c0 in range(0, C, BLOCK_O):
            c = c0 + tl.arange(0, BLOCK_O)
            cn = c < C
            A_C_t = C * softmax_at(chan + GC_T * C, c, cn, inv_temp, mt, zt)
            A_C_s = C * softmax_at(chan + GC_S * C, c, cn, inv_temp, ms, zs)
            fg += tl.sum(A_C_t * tl.load(chan + X_FG * C + c, mask=cn, other=0.0), 0)
            bg += tl.sum(A_C_t * tl.load(chan + X_BG * C + c, mask=cn, other=0.0), 0)
            mask += tl.sum(tl.abs(A_C_s - A_C_t), 0)
            u = (tl.load(chan + SUM_D * C + c, mask=cn, other=0.0) / HW
                 + mlp_out(base, lv, COL_MLP_S, r_s, c, cn, C, BLOCK_H)
                 - mlp_out(base, lv, COL_MLP_T, r_t, c, cn, C, BLOCK_H))
            rela += tl.sum(tl.load(chan + M2_D * C + c, mask=cn, other=0.0) + HW * u * u, 0)
    row = out + tl.program_id(0) * 4
    tl.store(row, (fg / N).to(tl.float32))
    tl.store(row + 1, (bg / N).to(tl.float32))
    tl.store(row + 2, (mask / N).to(tl.float32))
    tl.store(row + 3, (rela / N).to(tl.float32))


# ------------------------------------------------------------------ launches
def blocks(C: int) -> dict:
    """The launch constexprs for C channels: every hidden unit in one tile, the matrices'
    rows in tiles of about PARAM_ROWS x 128 values."""
    block_h = triton.next_power_of_2(max(C // 2, 1))
    rows = max(1, min(triton.next_power_of_2(C), PARAM_ROWS * 128 // block_h))
    return dict(BLOCK=BLOCK, BLOCK_H=block_h, BLOCK_I=rows, BLOCK_O=rows, num_warps=NUM_WARPS)


def check_levels(pix: list[Tensor], chan: list[Tensor], mlp_s: list[Tensor],
                 mlp_t: list[Tensor]) -> None:
    """pix, chan: fgd_stats' tables of levels of one C on one device, float32 and
    contiguous; mlp_s / mlp_t: 6 float32 contiguous MLP parameters per level."""
    L = len(pix)
    if L == 0 or len(chan) != L:
        raise ValueError(f"pix and chan must hold one table per level, got {L} and {len(chan)}")
    N, C = chan[0].shape[0], chan[0].shape[-1]
    for k, (p, ch) in enumerate(zip(pix, chan)):
        for name, x, rows in ((f"pix[{k}]", p, len(FGD_PIX)), (f"chan[{k}]", ch, len(FGD_CHAN))):
            if (x.dtype != torch.float32 or x.dim() != 3 or x.shape[:2] != (N, rows)
                    or not x.is_contiguous() or x.device != pix[0].device):
                raise ValueError(f"{name} must be a contiguous float32 ({N}, {rows}, .) table on "
                                 f"{pix[0].device}, got {x.dtype} {tuple(x.shape)} on {x.device}")
        if ch.shape[2] != C:
            raise ValueError(f"chan[{k}] has {ch.shape[2]} channels, chan[0] {C}")
    H = C // 2
    shapes = ((H, C, 1, 1), (H,), (H, 1, 1), (H, 1, 1), (C, H, 1, 1), (C,))
    for side, params in (("mlp_s", mlp_s), ("mlp_t", mlp_t)):
        if len(params) != len(GC_MLP) * L:
            raise ValueError(f"{side} must hold {len(GC_MLP)} parameters per level, "
                             f"got {len(params)}")
        for k, (p, shape) in enumerate(zip(params, shapes * L)):
            if (p.dtype != torch.float32 or p.numel() != torch.Size(shape).numel()
                    or not p.is_contiguous() or p.device != pix[0].device):
                name = GC_MLP.names[k % len(GC_MLP)]
                raise ValueError(f"{side}[{k}] ({name} of level {k // len(GC_MLP)}) "
                                 f"must be contiguous float32 of shape {shape} on "
                                 f"{pix[0].device}, got {p.dtype} {tuple(p.shape)}")


def level_table(pix, chan, mlp_s, mlp_t, grad=None) -> Tensor:
    """The int64 level table; grad: per level the backward's fg, bg, w_s, w_t, pix_coef,
    chan_coef, K and 12 parameter gradients, or None."""
    base, rows = pix[0], []
    for l, (p, ch) in enumerate(zip(pix, chan)):
        ins = [p, ch, *mlp_s[6 * l:6 * l + 6], *mlp_t[6 * l:6 * l + 6], *(grad[l] if grad else [])]
        row = [ch.shape[0], ch.shape[2], p.shape[2], *(offset(x, base) for x in ins)]
        rows.append(row + [0] * (NCOL.value - len(row)))
    return device_values(rows, torch.int64, base.device)


def level_params(temps, eps_s, eps_t, like: Tensor) -> Tensor:
    """temp, eps_s, eps_t per level, float32 on like's device."""
    return device_values([[float(v) for v in row] for row in zip(temps, eps_s, eps_t)],
                         torch.float32, like.device)


@host_copy_if_interpreted
def fgd_terms(pix: list[Tensor], chan: list[Tensor], mlp_s: list[Tensor], mlp_t: list[Tensor],
              eps_s: list[float], eps_t: list[float], temps: list[float]) -> list[Tensor]:
    """[table]: the (L, 4) float32 terms of levels that share C (the contract's table;
    nothing is saved: the backward recomputes what it needs)."""
    check_levels(pix, chan, mlp_s, mlp_t)
    table = level_table(pix, chan, mlp_s, mlp_t)
    out = chan[0].new_empty((len(pix), 4))
    with on_device(out.device):
        fgd_terms_kernel[(len(pix),)](table, pix[0], level_params(temps, eps_s, eps_t, out),
                                      out, **blocks(chan[0].shape[2]))
    return [out]
