"""Triton kernels of the FGD gradient pass (contract: fgdkern.reference.fgd_passes.fgd_grad).

Reads S, T (any strides, float32/16 or bfloat16) and the float32 coefficient
tables pix_coef (N, len(FGD_PIX_COEF), HW), chan_coef (N, len(FGD_CHAN_COEF),
C) and K (N, 2) of every level, rows named in fgdkern.rows (docs/kernels.md,
"The row tables"); writes dS (shape, dtype and strides of S) and dw_s, dw_t (C,)
float32.

One launch of the main kernel over every level, then one of the combine
kernel; S and T are read from DRAM once, dS written once, and no float atomics
are used, so results are the same bit for bit from run to run. The main
kernel is a body on sweeps.sweep_blocks; for each block of its run a program
  1. sums over channels per pixel (fgd_grad_pre: gp_s = sum_c g_ctx_s S,
     gp_t), from which fgd_grad_pixel forms dz_s, dz_t, then
  2. goes over the same chunks again -- the block's tiles are still in L1/L2 --
     writing dS and adding the block's per-channel sums of dw (dz_s (S - ctx_s),
     dz_t (T - ctx_t): centred on the contexts, see fgd_passes) into the run's
     partial rows in the float32 workspace (fgd_grad_element).
The combine kernel adds the runs of each level in a fixed order.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import FGD_CHAN_COEF, FGD_PIX_COEF
from fgdkern.triton.levels import (
    RUNTIME_INTS, run_blocks,
    COL_C, COL_COMB0, COL_N, COL_NSPLIT, COL_PART, COMBINE_BLOCK_C, VIEW_COLS,
    Launch, check_features, extra_columns, find_level, float32_levels, host_copy_if_interpreted,
    level_shape, offset, per_dtype, program_run, row_indices, view)
from fgdkern.triton.merges import stack2
from fgdkern.triton.sweeps import sweep_blocks
from fgdkern.triton.tiles import channel_row, per_pixel, pixel_row, sign, sum_pixels

# Rows of pix_coef and chan_coef (fgdkern.rows) that the kernel reads.
A_SIGN, FGA, BGA, P_S, P_T, PIX_COEF_ROWS = row_indices(
    FGD_PIX_COEF, "a_sign", "fgA", "bgA", "p_s", "p_t")
B_SIGN, K_D, K_CONST, K_FG, K_BG, G_CTX_S, G_CTX_T, W_S, CTX_S, CTX_T, CHAN_COEF_ROWS = \
    row_indices(FGD_CHAN_COEF, "b_sign", "k_d", "k_const", "k_fg", "k_bg", "g_ctx_s", "g_ctx_t",
                "w_s", "ctx_s", "ctx_t")
DW_S = tl.constexpr(0)  # partial rows of a run, in the workspace
DW_T = tl.constexpr(1)
PART_ROWS = tl.constexpr(2)

# Columns of the level table after the common ones: element offsets from the workspace,
# then the view of dS from level 0's dS.
COL_PC, COL_CC, COL_K, COL_DWS, COL_DWT, COL_DS = extra_columns(6)
NCOL = tl.constexpr(COL_DS.value + VIEW_COLS)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def fgd_grad_bwd_kernel(
    table,            # int64 [L, NCOL]: the level table
    S, T, dS,         # level 0's S, T, dS: bases of every level's
    f32,              # float32 workspace (partial dw rows): base of pix_coef, chan_coef, K, dw
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads S, T and the coefficients of a run of blocks; writes dS and its partial dw rows."""
    lv, prog, n, blk_lo, blk_hi = program_run(table, L, BLOCKS_PER_PROG, NCOL, LEVELS, BLOCK_HW)
    run_blocks(fgd_grad_run, lv, prog, n, blk_lo, blk_hi, S, T, dS, f32,
               LAYOUT, ALIGN, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def fgd_grad_run(lv, prog, n, blk_lo, blk_hi, S, T, dS, f32,
                 LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """The main kernel's work on its run of blocks, blk_lo..blk_hi of image n."""
    C, _, _ = level_shape(lv)
    part = f32 + tl.load(lv + COL_PART) + prog * PART_ROWS * C
    cc = f32 + tl.load(lv + COL_CC) + n * CHAN_COEF_ROWS * C
    sweep_blocks(fgd_grad_pre, 2, fgd_grad_pixel, fgd_grad_element, None, 0, -1, -1, part, cc,
                 lv, n, blk_lo, blk_hi, S, T, dS, lv + COL_DS, f32,
                 LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def fgd_grad_pre(s, t, lv, f32, cc, C, c, c_mask):
    """Per element, the terms of gp = sum_c g_ctx S (and of T), for dz."""
    return (s * channel_row(cc + G_CTX_S * C, c, c_mask),
            t * channel_row(cc + G_CTX_T * C, c, c_mask), 0.0, 0.0)


@triton.jit
def fgd_grad_pixel(lv, n, f32, C, HW, p, p_mask, gp_s, gp_t, u2, u3, keep, n_run, n_block):
    """The block's dz_s, dz_t and pixel coefficients."""
    pc = f32 + tl.load(lv + COL_PC) + n * PIX_COEF_ROWS * HW
    K = f32 + tl.load(lv + COL_K) + n * 2
    p_s = pixel_row(pc + P_S * HW, p, p_mask)
    dz_s = p_s * per_pixel(gp_s - tl.load(K))
    dz_t = pixel_row(pc + P_T * HW, p, p_mask) * per_pixel(gp_t - tl.load(K + 1))
    return (dz_s, dz_t, pixel_row(pc + A_SIGN * HW, p, p_mask), pixel_row(pc + FGA * HW, p, p_mask),
            pixel_row(pc + BGA * HW, p, p_mask), p_s, 1.0)


@triton.jit
def fgd_grad_element(s, t, dz_s, dz_t, a_sign, fgA, bgA, p_s, cc, C, c, c_mask, inside, n_block):
    """dS of a tile, and its sums over pixels of dw (dz_s (S - ctx_s), dz_t (T - ctx_t))."""
    b_sign = channel_row(cc + B_SIGN * C, c, c_mask)              # [1, BLOCK_C, 1]
    k_d = channel_row(cc + K_D * C, c, c_mask)
    k_const = channel_row(cc + K_CONST * C, c, c_mask)
    k_fg = channel_row(cc + K_FG * C, c, c_mask)
    k_bg = channel_row(cc + K_BG * C, c, c_mask)
    g_ctx_s = channel_row(cc + G_CTX_S * C, c, c_mask)
    w_s = channel_row(cc + W_S * C, c, c_mask)
    ctx_s = channel_row(cc + CTX_S * C, c, c_mask)
    ctx_t = channel_row(cc + CTX_T * C, c, c_mask)
    grad = (sign(s) * (a_sign + b_sign) + (s - t) * (k_d + k_fg * fgA + k_bg * bgA)
            + k_const + p_s * g_ctx_s + w_s * dz_s)
    dw = stack2(sum_pixels((s - ctx_s) * dz_s), sum_pixels((t - ctx_t) * dz_t))
    return grad, dw, 0.0, 0.0, 0.0


@triton.jit(do_not_specialize=["L"])
def fgd_grad_combine_kernel(table, f32, L, LEVELS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Reads the partial dw rows of every run of a level; writes dw_s, dw_t of one channel block."""
    pid = tl.program_id(0)
    lv = find_level(table, pid, L, COL_COMB0, NCOL, LEVELS)
    C = tl.load(lv + COL_C)
    c = (pid - tl.load(lv + COL_COMB0)) * BLOCK_C + tl.arange(0, BLOCK_C)   # [BLOCK_C]
    c_mask = c < C
    dw_s = tl.zeros([BLOCK_C], tl.float32)
    dw_t = tl.zeros([BLOCK_C], tl.float32)
    part = f32 + tl.load(lv + COL_PART) + c
    for j in range(0, tl.load(lv + COL_N) * tl.load(lv + COL_NSPLIT)):  # all runs, in order
        dw_s += tl.load(part + (j * PART_ROWS + DW_S) * C, mask=c_mask, other=0.0)
        dw_t += tl.load(part + (j * PART_ROWS + DW_T) * C, mask=c_mask, other=0.0)
    tl.store(f32 + tl.load(lv + COL_DWS) + c, dw_s, mask=c_mask)
    tl.store(f32 + tl.load(lv + COL_DWT) + c, dw_t, mask=c_mask)


def _launch(S, T, pix_coef, chan_coef, K, programs):
    """dS, dw_s and dw_t of levels of one dtype."""
    dS = [torch.empty_like(s) for s in S]
    run = Launch(S, T, [dS], programs)
    dw_s = [s.new_empty((s.shape[1],), dtype=torch.float32) for s in S]
    dw_t = [s.new_empty((s.shape[1],), dtype=torch.float32) for s in S]
    ws, part0 = run.workspace(PART_ROWS.value)
    extra = [[offset(x, ws) for x in xs[:5]] + view(xs[5], dS[0])
             for xs in zip(pix_coef, chan_coef, K, dw_s, dw_t, dS)]
    comb_counts = [triton.cdiv(s.shape[1], COMBINE_BLOCK_C) for s in S]
    table = run.table(NCOL.value, comb_counts, part0, extra)
    run.main(fgd_grad_bwd_kernel, table, [S[0], T[0], dS[0]], ws)
    run.combine(fgd_grad_combine_kernel, table, ws, comb_counts)
    return dS, dw_s, dw_t


@host_copy_if_interpreted
def fgd_grad(S: list[Tensor], T: list[Tensor], pix_coef: list[Tensor], chan_coef: list[Tensor],
             K: list[Tensor], *, programs: Optional[int] = None) -> list[Tensor]:
    """[dS_0.., dw_s_0.., dw_t_0..] of fgd_passes.fgd_grad (programs: as in fgd_stats)."""
    check_features(S, T)
    device = S[0].device
    pix_coef = float32_levels("pix_coef", pix_coef,
                              [(s.shape[0], len(FGD_PIX_COEF), s.shape[2] * s.shape[3])
                               for s in S], device)
    chan_coef = float32_levels("chan_coef", chan_coef,
                               [(s.shape[0], len(FGD_CHAN_COEF), s.shape[1]) for s in S], device)
    K = float32_levels("K", K, [(s.shape[0], 2) for s in S], device)
    return per_dtype(_launch, S, [S, T, pix_coef, chan_coef, K], programs)
