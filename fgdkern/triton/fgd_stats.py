"""Triton kernels of the FGD statistics pass (contract: fgdkern.reference.fgd_passes.fgd_stats).

Reads S, T (any strides, float32/16 or bfloat16) and the float32 fg, bg, w_s,
w_t and temperature of every level; writes pix (N, len(FGD_PIX), HW) and chan
(N, len(FGD_CHAN), C), float32, rows named in fgdkern.rows (docs/kernels.md,
"The row tables").

One launch of the main kernel over every level, then one of the combine
kernel; S and T are read from DRAM once, and no float atomics are used, so
results are the same bit for bit from run to run. The main kernel is a body
on sweeps.sweep_blocks; for each block of its run a program
  1. sums over channels per pixel (fgd_stats_pre: z_s, z_t, |S|, |T|), then
     (fgd_stats_pixel) writes gs, z to pix and merges the block into the run's
     online softmaxes of z_s, z_t and gs_t / temp (its scalars, in the
     workspace);
  2. goes over the same chunks again -- the block's tiles are still in L1/L2 --
     summing over pixels per channel into the run's partial chan rows
     (fgd_stats_element), merged by online-softmax rescaling (ctx, x_fg, x_bg)
     and Chan's formula (m2_d), all rows of a chunk in one read-modify-write
     (merges.py).
The combine kernel merges the runs of each image in a fixed order.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import FGD_CHAN, FGD_PIX
from fgdkern.triton.levels import (
    RUNTIME_INTS, device_values, run_blocks,
    COL_COMB0, COL_NSPLIT, COL_PART, COL_PROG0, COMBINE_BLOCK_C, Launch,
    check_features, extra_columns, find_level, float32_levels, host_copy_if_interpreted,
    level_shape, offset, per_dtype, positive_levels, program_run, row_indices)
from fgdkern.triton.merges import block_softmax, chan_merge, rescale, stack8
from fgdkern.triton.sweeps import sweep_blocks
from fgdkern.triton.tiles import (
    block_sum, channel_row, per_channel, per_pixel, pixel_row, sum_pixels)

# Rows of pix and chan (fgdkern.rows); the partial rows of a run are laid out as chan.
GS_S, GS_T, Z_S, Z_T, PIX_ROWS = row_indices(FGD_PIX, "gs_s", "gs_t", "z_s", "z_t")
GC_S, GC_T, CTX_S, CTX_T, SUM_D, M2_D, X_FG, X_BG, CHAN_ROWS = row_indices(
    FGD_CHAN, "gc_s", "gc_t", "ctx_s", "ctx_t", "sum_d", "m2_d", "x_fg", "x_bg")
# sub-loop 2 stacks a chunk's sums in this order: that of the rows in memory
assert [GC_S, GC_T, CTX_S, CTX_T, SUM_D, M2_D, X_FG, X_BG] == list(range(CHAN_ROWS))

# Columns of the level table after the common ones: element offsets from the workspace.
COL_FG, COL_BG, COL_WS, COL_WT, COL_PIX, COL_CHAN, COL_TEMP = extra_columns(7)
NCOL = tl.constexpr(COL_TEMP.value + 1)
# Per-program scalars at the start of the workspace: running maxima m and sums of
# exponentials l of the softmaxes of z_s, z_t and gs_t / temp; the pixel count.
M_ZS, L_ZS, M_ZT, L_ZT, M_A, L_A, N_RUN = (tl.constexpr(k) for k in range(7))
N_SCALARS = tl.constexpr(8)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def fgd_stats_fwd_kernel(
    table,            # int64 [L, NCOL]: the level table
    S, T,             # level 0's S and T: bases of every level's S and T
    f32,              # float32 workspace: base of fg, bg, w, temps, pix, chan; scalars first
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads S, T, fg, bg, w_s, w_t, temp of a run of blocks; writes pix and its partial chan
    rows (ctx, x_fg, x_bg unnormalised) and scalars."""
    lv, prog, n, blk_lo, blk_hi = program_run(table, L, BLOCKS_PER_PROG, NCOL, LEVELS, BLOCK_HW)
    run_blocks(fgd_stats_run, lv, prog, n, blk_lo, blk_hi, S, T, None, f32,
               LAYOUT, ALIGN, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def fgd_stats_run(lv, prog, n, blk_lo, blk_hi, S, T, OUT, f32,
                  LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """The main kernel's work on its run of blocks, blk_lo..blk_hi of image n."""
    C, _, _ = level_shape(lv)
    part = f32 + tl.load(lv + COL_PART) + prog * CHAN_ROWS * C
    w_s = f32 + tl.load(lv + COL_WS)
    sweep_blocks(fgd_stats_pre, 4, fgd_stats_pixel, fgd_stats_element, None, 0, SUM_D, M2_D,
                 part, w_s, lv, n, blk_lo, blk_hi, S, T, None, None, f32,
                 LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def fgd_stats_pre(s, t, lv, f32, w_s, C, c, c_mask):
    """Per element, the terms of z = sum_c w_s S, sum_c w_t T, sum_c |S| and sum_c |T|."""
    return (s * channel_row(w_s, c, c_mask),
            t * channel_row(f32 + tl.load(lv + COL_WT), c, c_mask), tl.abs(s), tl.abs(t))


@triton.jit
def running_softmax(scalars, M: tl.constexpr, keep):
    """One of the run's softmaxes before this block: its running maximum and sum of
    exponentials (scalars M, M + 1 of the program; -inf, 0 before the run's first block)."""
    return (tl.where(keep, tl.load(scalars + M), float("-inf")),
            tl.where(keep, tl.load(scalars + M + 1), 0.0))


@triton.jit
def merge_block(scalars, M: tl.constexpr, m, l, logits, p_mask):
    """A block's logits merged into a running softmax (m, l), stored back; returns their
    exp(logits - m) and the factor that rescales sums taken with the previous maximum."""
    m, alpha, e = block_softmax(logits, p_mask, m)
    tl.store(scalars + M, m)
    tl.store(scalars + M + 1, l * alpha + block_sum(e))
    return e, alpha


@triton.jit
def fgd_stats_pixel(lv, n, f32, C, HW, p, p_mask, z_s, z_t, abs_s, abs_t, keep, n_run, n_block):
    """Writes the block's pix rows; merges its softmaxes of z_s, z_t and gs_t / temp into the
    run's; returns their weights (fg, bg times the attention's) and the rows' factors."""
    gs_s = abs_s / C
    gs_t = abs_t / C
    pix = f32 + tl.load(lv + COL_PIX) + n * PIX_ROWS * HW
    tl.store(pix + GS_S * HW + p, gs_s, mask=p_mask)
    tl.store(pix + GS_T * HW + p, gs_t, mask=p_mask)
    tl.store(pix + Z_S * HW + p, z_s, mask=p_mask)
    tl.store(pix + Z_T * HW + p, z_t, mask=p_mask)
    scalars = f32 + tl.program_id(0) * N_SCALARS
    temp = tl.load(f32 + tl.load(lv + COL_TEMP))              # the level's temperature
    m_zs, l_zs = running_softmax(scalars, M_ZS, keep)
    m_zt, l_zt = running_softmax(scalars, M_ZT, keep)
    m_a, l_a = running_softmax(scalars, M_A, keep)
    tl.debug_barrier()  # every thread has read them before any stores the new values
    e_s, alpha_s = merge_block(scalars, M_ZS, m_zs, l_zs, z_s, p_mask)
    e_t, alpha_t = merge_block(scalars, M_ZT, m_zt, l_zt, z_t, p_mask)
    e_a, alpha_a = merge_block(scalars, M_A, m_a, l_a, gs_t / temp, p_mask)
    tl.store(scalars + N_RUN, n_run + n_block)
    w_fg = pixel_row(f32 + tl.load(lv + COL_FG) + n * HW, p, p_mask) * per_pixel(e_a)
    w_bg = pixel_row(f32 + tl.load(lv + COL_BG) + n * HW, p, p_mask) * per_pixel(e_a)
    # the rows' factors: softmax-weighted sums are rescaled to the new maxima
    rows = tl.arange(0, CHAN_ROWS)[None, :]  # the partial rows, as stacked by stack8
    scales = tl.where(rows == CTX_S, alpha_s, tl.where(rows == CTX_T, alpha_t, 1.0))
    scales = tl.where((rows == X_FG) | (rows == X_BG), alpha_a, scales)
    return per_pixel(e_s), per_pixel(e_t), w_fg, w_bg, 0.0, 0.0, scales


@triton.jit
def fgd_stats_element(s, t, e_s, e_t, w_fg, w_bg, q4, q5, w_s, C, c, c_mask, inside, n_block):
    """A tile's sums over pixels, stacked as the partial rows (sum_d, m2_d: the block's sum of
    d = S - T and centred second moment, which sweep_blocks merges by Chan's formula)."""
    d = s - t
    d2 = d * d
    sum_d = sum_pixels(d)                                           # [BLOCK_C]
    centred = tl.where(inside, d - per_channel(sum_d / n_block), 0.0)
    sums = stack8(sum_pixels(tl.abs(s)), sum_pixels(tl.abs(t)), sum_pixels(s * e_s),
                  sum_pixels(t * e_t), sum_d, sum_pixels(centred * centred),
                  sum_pixels(d2 * w_fg), sum_pixels(d2 * w_bg))
    return 0.0, sums, 0.0, 0.0, 0.0


@triton.jit(do_not_specialize=["L"])
def fgd_stats_combine_kernel(table, f32, L, LEVELS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Reads the partial rows and scalars of the runs of an image; writes chan[n, :, c_block]."""
    pid = tl.program_id(0)
    lv = find_level(table, pid, L, COL_COMB0, NCOL, LEVELS)
    C, HW, _ = level_shape(lv)
    nsplit = tl.load(lv + COL_NSPLIT)
    local = pid - tl.load(lv + COL_COMB0)
    n_cblocks = tl.cdiv(C, BLOCK_C)
    n = local // n_cblocks
    c = (local % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)   # [BLOCK_C]
    c_mask = c < C
    gc_s = tl.zeros([BLOCK_C], tl.float32)
    gc_t = tl.zeros([BLOCK_C], tl.float32)
    ctx_s = tl.zeros([BLOCK_C], tl.float32)
    ctx_t = tl.zeros([BLOCK_C], tl.float32)
    sum_d = tl.zeros([BLOCK_C], tl.float32)
    m2_d = tl.zeros([BLOCK_C], tl.float32)
    x_fg = tl.zeros([BLOCK_C], tl.float32)
    x_bg = tl.zeros([BLOCK_C], tl.float32)
    m_zs = float("-inf")
    m_zt = float("-inf")
    m_a = float("-inf")
    l_zs = 0.0
    l_zt = 0.0
    l_a = 0.0
    n_run = 0.0
    for j in range(n * nsplit, (n + 1) * nsplit):  # the image's runs, in order
        sc = f32 + (tl.load(lv + COL_PROG0) + j) * N_SCALARS
        row = f32 + tl.load(lv + COL_PART) + j * CHAN_ROWS * C + c
        gc_s += tl.load(row + GC_S * C, mask=c_mask, other=0.0)
        gc_t += tl.load(row + GC_T * C, mask=c_mask, other=0.0)
        m_zs, keep_s, take_s = rescale(m_zs, tl.load(sc + M_ZS))
        ctx_s = ctx_s * keep_s + tl.load(row + CTX_S * C, mask=c_mask, other=0.0) * take_s
        l_zs = l_zs * keep_s + tl.load(sc + L_ZS) * take_s
        m_zt, keep_t, take_t = rescale(m_zt, tl.load(sc + M_ZT))
        ctx_t = ctx_t * keep_t + tl.load(row + CTX_T * C, mask=c_mask, other=0.0) * take_t
        l_zt = l_zt * keep_t + tl.load(sc + L_ZT) * take_t
        n_b = tl.load(sc + N_RUN)
        sum_b = tl.load(row + SUM_D * C, mask=c_mask, other=0.0)
        m2_b = tl.load(row + M2_D * C, mask=c_mask, other=0.0)
        sum_d, m2_d = chan_merge(n_run, sum_d, m2_d, n_b, sum_b, m2_b)
        n_run += n_b
        m_a, keep_a, take_a = rescale(m_a, tl.load(sc + M_A))
        x_fg = x_fg * keep_a + tl.load(row + X_FG * C, mask=c_mask, other=0.0) * take_a
        x_bg = x_bg * keep_a + tl.load(row + X_BG * C, mask=c_mask, other=0.0) * take_a
        l_a = l_a * keep_a + tl.load(sc + L_A) * take_a
    chan = f32 + tl.load(lv + COL_CHAN) + n * CHAN_ROWS * C + c
    tl.store(chan + GC_S * C, gc_s / HW, mask=c_mask)
    tl.store(chan + GC_T * C, gc_t / HW, mask=c_mask)
    tl.store(chan + CTX_S * C, ctx_s / l_zs, mask=c_mask)
    tl.store(chan + CTX_T * C, ctx_t / l_zt, mask=c_mask)
    tl.store(chan + SUM_D * C, sum_d, mask=c_mask)
    tl.store(chan + M2_D * C, m2_d, mask=c_mask)
    tl.store(chan + X_FG * C, x_fg * HW / l_a, mask=c_mask)
    tl.store(chan + X_BG * C, x_bg * HW / l_a, mask=c_mask)


def _launch(S, T, fg, bg, w_s, w_t, temps, programs):
    """pix and chan of levels of one dtype."""
    run = Launch(S, T, [], programs)
    pix = [s.new_empty((s.shape[0], len(FGD_PIX), s.shape[2] * s.shape[3]), dtype=torch.float32)
           for s in S]
    chan = [s.new_empty((s.shape[0], len(FGD_CHAN), s.shape[1]), dtype=torch.float32) for s in S]
    temps = device_values(temps, torch.float32, S[0].device)
    ws, part0 = run.workspace(len(FGD_CHAN), head=run.programs * N_SCALARS.value)
    extra = [[offset(x, ws) for x in xs] for xs in zip(fg, bg, w_s, w_t, pix, chan, temps)]
    comb_counts = [s.shape[0] * triton.cdiv(s.shape[1], COMBINE_BLOCK_C) for s in S]
    table = run.table(NCOL.value, comb_counts, part0, extra)
    run.main(fgd_stats_fwd_kernel, table, [S[0], T[0]], ws)
    run.combine(fgd_stats_combine_kernel, table, ws, comb_counts)
    return pix, chan


@host_copy_if_interpreted
def fgd_stats(S: list[Tensor], T: list[Tensor], fg: list[Tensor], bg: list[Tensor],
              w_s: list[Tensor], w_t: list[Tensor], temps: list[float], *,
              programs: Optional[int] = None) -> list[Tensor]:
    """[pix_0..pix_{L-1}, chan_0..chan_{L-1}] of fgd_passes.fgd_stats; temps: one temperature
    per level (docs/fgd.md, "Multi-level and temperatures").

    programs: about how many main-kernel programs to use (default: PROGRAMS_PER_SM per SM).
    """
    check_features(S, T)
    device = S[0].device
    maps = [(s.shape[0], s.shape[2], s.shape[3]) for s in S]
    chans = [(s.shape[1],) for s in S]
    fg = float32_levels("fg", fg, maps, device)
    bg = float32_levels("bg", bg, maps, device)
    w_s = float32_levels("w_s", w_s, chans, device)
    w_t = float32_levels("w_t", w_t, chans, device)
    temps = positive_levels("temps", temps, len(S))
    return per_dtype(_launch, S, [S, T, fg, bg, w_s, w_t, temps], programs)
