"""Triton kernels of the two fused FGD passes (contract: fgdkern.reference.fgd_passes).

fgd_stats: reads S, T (+ fg, bg, w_s, w_t); writes pix (N, 4, HW) and chan (N, 8, C).
fgd_grad:  reads S, T (+ pix_coef, chan_coef, K); writes dS (like S), dw_s, dw_t (C,).

Each pass is one launch of a main kernel over every level of the pyramid,
then one launch of a tiny combine kernel; S and T are read once per pass
from DRAM, dS written once, and no float atomics are used (deterministic).

Work split. A pixel block is BLOCK_HW consecutive pixels of one image of one
level; a program takes a run of BLOCKS_PER_PROG consecutive blocks of one
(level, image). The run length is chosen per launch so that there are about
PROGRAMS_PER_SM programs per SM: few enough that the tiles a program reads in
its first channel loop are still in L1/L2 when its second loop re-reads them
(a reuse distance of programs * BLOCK_HW * C * 2 elements, ~17 MB at
RetinaNet's 256 fp32 channels), and many enough to keep DRAM busy. For every
block a program
  1. loops over channel chunks, reducing over channels per pixel (gs, z for
     fgd_stats; gp for fgd_grad), and
  2. loops over the same chunks again, reducing over pixels per channel and
     merging the block into the program's own partial rows in a workspace
     (read-modify-write, with online-softmax rescaling and Chan's formula for
     the second moment); fgd_grad also writes dS here.
The combine kernel then merges the runs of each (level, image), or each level
for dw, in a fixed order. Partials are one row set per program, not per
block, so the workspace stays ~1% of the traffic.

Levels share a launch through a per-level int64 table (columns COL_*):
program ranges, sizes, and for every tensor its element offset from a base
pointer of the same dtype plus its strides. The bases are level 0's S, T, dS
and the float32 workspace (every float32 input and output is addressed from
it), so S and T may have any strides and each level any shape.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_HW = 32          # pixels per block: a 128-byte row per channel in fp32 NCHW
BLOCK_C = 64           # channels per chunk: tiles of [64, 32]
COMBINE_BLOCK_C = 128  # channels per combine program
NUM_WARPS = 4
PROGRAMS_PER_SM = 2
INTERPRETER_PROGRAMS = 4  # under TRITON_INTERPRET: few programs, so runs merge in tests
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Columns of the per-level table. A view of a feature map takes 5 columns:
# its element offset from the base, then its strides of n, c, h, w.
COL_PROG0 = tl.constexpr(0)   # first main-kernel program of the level
COL_NSPLIT = tl.constexpr(1)  # main-kernel programs (runs of blocks) per image
COL_COMB0 = tl.constexpr(2)   # first combine-kernel program of the level
COL_N = tl.constexpr(3)
COL_C = tl.constexpr(4)
COL_HW = tl.constexpr(5)
COL_W = tl.constexpr(6)
COL_S = tl.constexpr(7)       # view of S
COL_T = tl.constexpr(12)      # view of T
COL_PART = tl.constexpr(17)   # workspace offset of the partial rows of the level's first program
# fgd_stats: element offsets from the float32 workspace
COL_FG = tl.constexpr(18)
COL_BG = tl.constexpr(19)
COL_WS = tl.constexpr(20)
COL_WT = tl.constexpr(21)
COL_PIX = tl.constexpr(22)
COL_CHAN = tl.constexpr(23)
STATS_COLS = tl.constexpr(24)
# fgd_grad: float32 offsets, then the view of dS from level 0's dS
COL_PC = tl.constexpr(18)
COL_CC = tl.constexpr(19)
COL_K = tl.constexpr(20)
COL_DWS = tl.constexpr(21)
COL_DWT = tl.constexpr(22)
COL_DS = tl.constexpr(23)
GRAD_COLS = tl.constexpr(28)

N_SCALARS = tl.constexpr(8)   # fgd_stats per-program scalars: m, l of z_s, z_t, A; pixel count


# ------------------------------------------------------------------ helpers
@triton.jit
def _find_level(table, pid, L, col, NCOL: tl.constexpr, LEVELS: tl.constexpr):
    """Row of the level whose programs (first program in column col) contain pid."""
    lvl = tl.arange(0, LEVELS)
    first = tl.load(table + lvl * NCOL + col, mask=lvl < L, other=0)
    found = tl.sum(tl.where(lvl < L, first <= pid, False).to(tl.int32), 0) - 1
    return table + found * NCOL


@triton.jit
def _program_run(table, L, BLOCKS_PER_PROG, NCOL: tl.constexpr, LEVELS: tl.constexpr,
                 BLOCK_HW: tl.constexpr):
    """This program's level row, index within the level, image and block range."""
    pid = tl.program_id(0)
    lv = _find_level(table, pid, L, COL_PROG0, NCOL, LEVELS)
    prog = pid - tl.load(lv + COL_PROG0)
    nsplit = tl.load(lv + COL_NSPLIT)
    n_blocks = tl.cdiv(tl.load(lv + COL_HW), BLOCK_HW)
    blk_lo = (prog % nsplit) * BLOCKS_PER_PROG
    blk_hi = tl.minimum(blk_lo + BLOCKS_PER_PROG, n_blocks)
    return lv, prog, prog // nsplit, blk_lo, blk_hi


@triton.jit
def _pixel_offsets(lv, col, n, p, W):
    """Element offsets of pixels p of image n, channel 0, of the view at col; and the channel stride."""
    off = tl.load(lv + col) + n * tl.load(lv + col + 1)
    sh = tl.load(lv + col + 3)
    sw = tl.load(lv + col + 4)
    return off + (p // W) * sh + (p % W) * sw, tl.load(lv + col + 2)  # [BLOCK_HW], scalar


@triton.jit
def _tile_offsets(pix, sc, c, C_CONTIG: tl.constexpr):
    """[BLOCK_C, BLOCK_HW] element offsets; C_CONTIG: the channel stride is 1 (channels_last)."""
    if C_CONTIG:
        c_off = c.to(tl.int64)
    else:
        c_off = c * sc
    return c_off[:, None] + pix[None, :]


@triton.jit
def _load_tile(base, pix, sc, c, mask, C_CONTIG: tl.constexpr):
    """[BLOCK_C, BLOCK_HW] float32 tile of a feature map, zero outside it."""
    x = tl.load(base + _tile_offsets(pix, sc, c, C_CONTIG), mask=mask, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _accumulate(row, c_mask, keep, scale, x):
    """row[c] = row[c] * scale + x, with row read as 0 when not keep (a program's first block)."""
    acc = tl.where(keep, tl.load(row, mask=c_mask, other=0.0), 0.0)
    tl.store(row, acc * scale + x, mask=c_mask)


@triton.jit
def _rescale(m_a, m_b):
    """Online softmax: the common maximum m of two partial sums and their factors exp(m_x - m)."""
    m = tl.maximum(m_a, m_b)
    return m, tl.exp(m_a - m), tl.exp(m_b - m)


@triton.jit
def _chan_merge(n_a, sum_a, m2_a, n_b, sum_b, m2_b):
    """Chan et al.: sum and centred second moment of two sets of n_a and n_b > 0 values."""
    delta = sum_b / n_b - sum_a / tl.maximum(n_a, 1.0)
    return sum_a + sum_b, m2_a + m2_b + delta * delta * (n_a * n_b / (n_a + n_b))


@triton.jit
def _block_softmax(logits, p_mask, m_run):
    """Weights exp(logits - m) of one block, m the running maximum; and the rescale of older sums."""
    m_block = tl.max(tl.where(p_mask, logits, float("-inf")), 0)
    m, alpha, _ = _rescale(m_run, m_block)
    return m, alpha, tl.where(p_mask, tl.exp(logits - m), 0.0)  # scalar, scalar, [BLOCK_HW]


# ------------------------------------------------------------------ fgd_stats
@triton.jit
def _pixel_stats(S, T, s_pix, s_sc, t_pix, t_sc, w_s, w_t, C, p_mask,
                 C_CONTIG: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Sub-loop 1 of fgd_stats: gs_s, gs_t, z_s, z_t of one block, each [BLOCK_HW]."""
    abs_s = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    abs_t = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    z_s = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    z_t = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_mask = c < C
        mask = c_mask[:, None] & p_mask[None, :]
        s = _load_tile(S, s_pix, s_sc, c, mask, C_CONTIG)              # [BLOCK_C, BLOCK_HW]
        t = _load_tile(T, t_pix, t_sc, c, mask, C_CONTIG)
        abs_s += tl.abs(s)
        abs_t += tl.abs(t)
        z_s += s * tl.load(w_s + c, mask=c_mask, other=0.0)[:, None]
        z_t += t * tl.load(w_t + c, mask=c_mask, other=0.0)[:, None]
    return tl.sum(abs_s, 0) / C, tl.sum(abs_t, 0) / C, tl.sum(z_s, 0), tl.sum(z_t, 0)


@triton.jit
def _merge_moments(sum_row, m2_row, c_mask, keep, n_run, n_block, d, p_mask):
    """Fold one block's sum and block-centred second moment of D [BLOCK_C, BLOCK_HW] into the rows."""
    sum_b = tl.sum(d, 1)                                                  # [BLOCK_C]
    centred = tl.where(p_mask[None, :], d - (sum_b / n_block)[:, None], 0.0)
    m2_b = tl.sum(centred * centred, 1)
    sum_a = tl.where(keep, tl.load(sum_row, mask=c_mask, other=0.0), 0.0)
    m2_a = tl.where(keep, tl.load(m2_row, mask=c_mask, other=0.0), 0.0)
    sum_ab, m2_ab = _chan_merge(n_run, sum_a, m2_a, n_block, sum_b, m2_b)
    tl.store(sum_row, sum_ab, mask=c_mask)
    tl.store(m2_row, m2_ab, mask=c_mask)


@triton.jit
def fgd_stats_fwd_kernel(
    table,            # int64 [L, STATS_COLS]: the level table
    S, T,             # level 0's S and T: bases of every level's S and T
    f32,              # float32 workspace: base of fg, bg, w, pix, chan; per-program scalars first
    L,                # number of levels
    temp,             # temperature of the attention softmax
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, C_CONTIG: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Reads S, T, fg, bg, w_s, w_t of one run of blocks; writes pix rows and the run's partial chan rows."""
    lv, prog, n, blk_lo, blk_hi = _program_run(table, L, BLOCKS_PER_PROG, STATS_COLS, LEVELS, BLOCK_HW)
    C = tl.load(lv + COL_C)
    HW = tl.load(lv + COL_HW)
    W = tl.load(lv + COL_W)
    fg_row = f32 + tl.load(lv + COL_FG) + n * HW
    bg_row = f32 + tl.load(lv + COL_BG) + n * HW
    w_s = f32 + tl.load(lv + COL_WS)
    w_t = f32 + tl.load(lv + COL_WT)
    pix = f32 + tl.load(lv + COL_PIX) + n * 4 * HW          # rows gs_s, gs_t, z_s, z_t
    part = f32 + tl.load(lv + COL_PART) + prog * 8 * C      # rows as chan, unnormalised
    m_zs = float("-inf")  # running maxima and sums of exponentials of z_s, z_t, gs_t / temp
    m_zt = float("-inf")
    m_a = float("-inf")
    l_zs = 0.0
    l_zt = 0.0
    l_a = 0.0
    n_run = 0.0           # pixels merged so far
    for b in range(blk_lo, blk_hi):
        keep = b > blk_lo
        p = b * BLOCK_HW + tl.arange(0, BLOCK_HW)           # [BLOCK_HW]
        p_mask = p < HW
        n_block = tl.minimum(HW - b * BLOCK_HW, BLOCK_HW).to(tl.float32)
        s_pix, s_sc = _pixel_offsets(lv, COL_S, n, p, W)
        t_pix, t_sc = _pixel_offsets(lv, COL_T, n, p, W)
        gs_s, gs_t, z_s, z_t = _pixel_stats(S, T, s_pix, s_sc, t_pix, t_sc, w_s, w_t, C, p_mask,
                                            C_CONTIG, BLOCK_C, BLOCK_HW)
        tl.store(pix + p, gs_s, mask=p_mask)
        tl.store(pix + HW + p, gs_t, mask=p_mask)
        tl.store(pix + 2 * HW + p, z_s, mask=p_mask)
        tl.store(pix + 3 * HW + p, z_t, mask=p_mask)
        m_zs, alpha_s, e_s = _block_softmax(z_s, p_mask, m_zs)
        m_zt, alpha_t, e_t = _block_softmax(z_t, p_mask, m_zt)
        m_a, alpha_a, e_a = _block_softmax(gs_t / temp, p_mask, m_a)
        l_zs = l_zs * alpha_s + tl.sum(e_s, 0)
        l_zt = l_zt * alpha_t + tl.sum(e_t, 0)
        l_a = l_a * alpha_a + tl.sum(e_a, 0)
        w_fg = tl.load(fg_row + p, mask=p_mask, other=0.0) * e_a
        w_bg = tl.load(bg_row + p, mask=p_mask, other=0.0) * e_a
        for c0 in range(0, C, BLOCK_C):  # sub-loop 2: per-channel sums over the block
            c = c0 + tl.arange(0, BLOCK_C)
            c_mask = c < C
            mask = c_mask[:, None] & p_mask[None, :]
            s = _load_tile(S, s_pix, s_sc, c, mask, C_CONTIG)          # [BLOCK_C, BLOCK_HW]
            t = _load_tile(T, t_pix, t_sc, c, mask, C_CONTIG)
            d = s - t
            d2 = d * d
            row = part + c
            _accumulate(row, c_mask, keep, 1.0, tl.sum(tl.abs(s), 1))
            _accumulate(row + C, c_mask, keep, 1.0, tl.sum(tl.abs(t), 1))
            _accumulate(row + 2 * C, c_mask, keep, alpha_s, tl.sum(s * e_s[None, :], 1))
            _accumulate(row + 3 * C, c_mask, keep, alpha_t, tl.sum(t * e_t[None, :], 1))
            _merge_moments(row + 4 * C, row + 5 * C, c_mask, keep, n_run, n_block, d, p_mask)
            _accumulate(row + 6 * C, c_mask, keep, alpha_a, tl.sum(d2 * w_fg[None, :], 1))
            _accumulate(row + 7 * C, c_mask, keep, alpha_a, tl.sum(d2 * w_bg[None, :], 1))
        n_run += n_block
        tl.debug_barrier()  # the next block re-reads rows that other threads stored
    scalars = f32 + tl.program_id(0) * N_SCALARS
    tl.store(scalars, m_zs)
    tl.store(scalars + 1, l_zs)
    tl.store(scalars + 2, m_zt)
    tl.store(scalars + 3, l_zt)
    tl.store(scalars + 4, m_a)
    tl.store(scalars + 5, l_a)
    tl.store(scalars + 6, n_run)


@triton.jit
def fgd_stats_combine_kernel(table, f32, L, LEVELS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Reads the partial rows and scalars of one image's runs; writes chan[n, :, c] of one channel block."""
    pid = tl.program_id(0)
    lv = _find_level(table, pid, L, COL_COMB0, STATS_COLS, LEVELS)
    C = tl.load(lv + COL_C)
    HW = tl.load(lv + COL_HW)
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
        row = f32 + tl.load(lv + COL_PART) + j * 8 * C + c
        gc_s += tl.load(row, mask=c_mask, other=0.0)
        gc_t += tl.load(row + C, mask=c_mask, other=0.0)
        m_zs, keep_s, take_s = _rescale(m_zs, tl.load(sc))
        ctx_s = ctx_s * keep_s + tl.load(row + 2 * C, mask=c_mask, other=0.0) * take_s
        l_zs = l_zs * keep_s + tl.load(sc + 1) * take_s
        m_zt, keep_t, take_t = _rescale(m_zt, tl.load(sc + 2))
        ctx_t = ctx_t * keep_t + tl.load(row + 3 * C, mask=c_mask, other=0.0) * take_t
        l_zt = l_zt * keep_t + tl.load(sc + 3) * take_t
        n_b = tl.load(sc + 6)
        sum_d, m2_d = _chan_merge(n_run, sum_d, m2_d, n_b, tl.load(row + 4 * C, mask=c_mask, other=0.0),
                                  tl.load(row + 5 * C, mask=c_mask, other=0.0))
        n_run += n_b
        m_a, keep_a, take_a = _rescale(m_a, tl.load(sc + 4))
        x_fg = x_fg * keep_a + tl.load(row + 6 * C, mask=c_mask, other=0.0) * take_a
        x_bg = x_bg * keep_a + tl.load(row + 7 * C, mask=c_mask, other=0.0) * take_a
        l_a = l_a * keep_a + tl.load(sc + 5) * take_a
    chan = f32 + tl.load(lv + COL_CHAN) + n * 8 * C + c
    tl.store(chan, gc_s / HW, mask=c_mask)
    tl.store(chan + C, gc_t / HW, mask=c_mask)
    tl.store(chan + 2 * C, ctx_s / l_zs, mask=c_mask)
    tl.store(chan + 3 * C, ctx_t / l_zt, mask=c_mask)
    tl.store(chan + 4 * C, sum_d, mask=c_mask)
    tl.store(chan + 5 * C, m2_d, mask=c_mask)
    tl.store(chan + 6 * C, x_fg * HW / l_a, mask=c_mask)
    tl.store(chan + 7 * C, x_bg * HW / l_a, mask=c_mask)


# ------------------------------------------------------------------ fgd_grad
@triton.jit
def _context_grads(S, T, s_pix, s_sc, t_pix, t_sc, g_ctx_s, g_ctx_t, C, p_mask,
                   C_CONTIG: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Sub-loop 1 of fgd_grad: gp_s = sum_c g_ctx_s S, gp_t = sum_c g_ctx_t T, each [BLOCK_HW]."""
    gp_s = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    gp_t = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_mask = c < C
        mask = c_mask[:, None] & p_mask[None, :]
        s = _load_tile(S, s_pix, s_sc, c, mask, C_CONTIG)              # [BLOCK_C, BLOCK_HW]
        t = _load_tile(T, t_pix, t_sc, c, mask, C_CONTIG)
        gp_s += s * tl.load(g_ctx_s + c, mask=c_mask, other=0.0)[:, None]
        gp_t += t * tl.load(g_ctx_t + c, mask=c_mask, other=0.0)[:, None]
    return tl.sum(gp_s, 0), tl.sum(gp_t, 0)


@triton.jit
def fgd_grad_bwd_kernel(
    table,            # int64 [L, GRAD_COLS]: the level table
    S, T, dS,         # level 0's S, T, dS: bases of every level's
    f32,              # float32 workspace (partial dw rows): base of pix_coef, chan_coef, K, dw
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, C_CONTIG: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """Reads S, T and the coefficients of one run of blocks; writes dS and the run's partial dw rows."""
    lv, prog, n, blk_lo, blk_hi = _program_run(table, L, BLOCKS_PER_PROG, GRAD_COLS, LEVELS, BLOCK_HW)
    C = tl.load(lv + COL_C)
    HW = tl.load(lv + COL_HW)
    W = tl.load(lv + COL_W)
    pc = f32 + tl.load(lv + COL_PC) + n * 5 * HW   # rows a_sign, fgA, bgA, p_s, p_t
    cc = f32 + tl.load(lv + COL_CC) + n * 9 * C    # rows b_sign, k_d, k_const, k_fg, k_bg, g_ctx_s, g_ctx_t, w_s, w_t
    K_s = tl.load(f32 + tl.load(lv + COL_K) + n * 2)
    K_t = tl.load(f32 + tl.load(lv + COL_K) + n * 2 + 1)
    part = f32 + tl.load(lv + COL_PART) + prog * 2 * C  # rows dw_s, dw_t
    for b in range(blk_lo, blk_hi):
        keep = b > blk_lo
        p = b * BLOCK_HW + tl.arange(0, BLOCK_HW)           # [BLOCK_HW]
        p_mask = p < HW
        s_pix, s_sc = _pixel_offsets(lv, COL_S, n, p, W)
        t_pix, t_sc = _pixel_offsets(lv, COL_T, n, p, W)
        ds_pix, ds_sc = _pixel_offsets(lv, COL_DS, n, p, W)
        a_sign = tl.load(pc + p, mask=p_mask, other=0.0)
        fgA = tl.load(pc + HW + p, mask=p_mask, other=0.0)
        bgA = tl.load(pc + 2 * HW + p, mask=p_mask, other=0.0)
        p_s = tl.load(pc + 3 * HW + p, mask=p_mask, other=0.0)
        p_t = tl.load(pc + 4 * HW + p, mask=p_mask, other=0.0)
        gp_s, gp_t = _context_grads(S, T, s_pix, s_sc, t_pix, t_sc, cc + 5 * C, cc + 6 * C, C, p_mask,
                                    C_CONTIG, BLOCK_C, BLOCK_HW)
        dz_s = p_s * (gp_s - K_s)                             # [BLOCK_HW]
        dz_t = p_t * (gp_t - K_t)
        for c0 in range(0, C, BLOCK_C):  # sub-loop 2: dS, and per-channel sums for dw
            c = c0 + tl.arange(0, BLOCK_C)
            c_mask = c < C
            mask = c_mask[:, None] & p_mask[None, :]
            s = _load_tile(S, s_pix, s_sc, c, mask, C_CONTIG)          # [BLOCK_C, BLOCK_HW]
            t = _load_tile(T, t_pix, t_sc, c, mask, C_CONTIG)
            b_sign = tl.load(cc + c, mask=c_mask, other=0.0)[:, None]  # [BLOCK_C, 1]
            k_d = tl.load(cc + C + c, mask=c_mask, other=0.0)[:, None]
            k_const = tl.load(cc + 2 * C + c, mask=c_mask, other=0.0)[:, None]
            k_fg = tl.load(cc + 3 * C + c, mask=c_mask, other=0.0)[:, None]
            k_bg = tl.load(cc + 4 * C + c, mask=c_mask, other=0.0)[:, None]
            g_ctx_s = tl.load(cc + 5 * C + c, mask=c_mask, other=0.0)[:, None]
            w_s = tl.load(cc + 7 * C + c, mask=c_mask, other=0.0)[:, None]
            sign_s = (s > 0).to(tl.float32) - (s < 0).to(tl.float32)
            grad = (sign_s * (a_sign[None, :] + b_sign)
                    + (s - t) * (k_d + k_fg * fgA[None, :] + k_bg * bgA[None, :])
                    + k_const + p_s[None, :] * g_ctx_s + w_s * dz_s[None, :])
            tl.store(dS + _tile_offsets(ds_pix, ds_sc, c, C_CONTIG),
                     grad.to(dS.dtype.element_ty), mask=mask)
            _accumulate(part + c, c_mask, keep, 1.0, tl.sum(s * dz_s[None, :], 1))
            _accumulate(part + C + c, c_mask, keep, 1.0, tl.sum(t * dz_t[None, :], 1))
        tl.debug_barrier()  # the next block re-reads rows that other threads stored


@triton.jit
def fgd_grad_combine_kernel(table, f32, L, LEVELS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Reads the partial dw rows of every run of a level; writes dw_s, dw_t of one channel block."""
    pid = tl.program_id(0)
    lv = _find_level(table, pid, L, COL_COMB0, GRAD_COLS, LEVELS)
    C = tl.load(lv + COL_C)
    c = (pid - tl.load(lv + COL_COMB0)) * BLOCK_C + tl.arange(0, BLOCK_C)   # [BLOCK_C]
    c_mask = c < C
    dw_s = tl.zeros([BLOCK_C], tl.float32)
    dw_t = tl.zeros([BLOCK_C], tl.float32)
    part = f32 + tl.load(lv + COL_PART) + c
    for j in range(0, tl.load(lv + COL_N) * tl.load(lv + COL_NSPLIT)):  # all runs, in order
        dw_s += tl.load(part + j * 2 * C, mask=c_mask, other=0.0)
        dw_t += tl.load(part + j * 2 * C + C, mask=c_mask, other=0.0)
    tl.store(f32 + tl.load(lv + COL_DWS) + c, dw_s, mask=c_mask)
    tl.store(f32 + tl.load(lv + COL_DWT) + c, dw_t, mask=c_mask)


# ------------------------------------------------------------------ launchers
def _host_copy_if_interpreted(fn):
    """Under TRITON_INTERPRET the interpreter copies each GPU tensor argument to the host on
    its own, which breaks the offsets between tensors: run on host copies instead."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = args[0][0].device if args[0] else torch.device("cpu")
        if os.environ.get("TRITON_INTERPRET") != "1" or device.type == "cpu":
            return fn(*args, **kwargs)
        host = [[x.cpu() for x in a] if isinstance(a, list) else a for a in args]
        return [out.to(device) for out in fn(*host, **kwargs)]
    return wrapper


def _check_features(S: list[Tensor], T: list[Tensor]) -> None:
    if len(S) == 0 or len(S) != len(T):
        raise ValueError(f"S and T must be lists of one tensor per level, got {len(S)} and {len(T)}")
    device = S[0].device
    for k, (s, t) in enumerate(zip(S, T)):
        for name, x in ((f"S[{k}]", s), (f"T[{k}]", t)):
            if x.dim() != 4 or x.numel() == 0:
                raise ValueError(f"{name} must be a non-empty (N, C, H, W) tensor, got shape {tuple(x.shape)}")
            if x.device != device:
                raise ValueError(f"{name} is on {x.device}, S[0] is on {device}")
        if s.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"S[{k}] must be float32, float16 or bfloat16, got {s.dtype}")
        if t.dtype != s.dtype:
            raise TypeError(f"T[{k}] is {t.dtype} but S[{k}] is {s.dtype}: they must match")
        if t.shape != s.shape:
            raise ValueError(f"T[{k}] has shape {tuple(t.shape)}, S[{k}] {tuple(s.shape)}")


def _check_float32(name: str, xs: list[Tensor], shapes: list[tuple], device) -> list[Tensor]:
    """Each xs[k] float32 of shapes[k] on device; returned contiguous."""
    if len(xs) != len(shapes):
        raise ValueError(f"{name} has {len(xs)} levels, S has {len(shapes)}")
    for k, (x, shape) in enumerate(zip(xs, shapes)):
        if x.dtype != torch.float32:
            raise TypeError(f"{name}[{k}] must be float32, got {x.dtype}")
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}[{k}] must have shape {shape}, got {tuple(x.shape)}")
        if x.device != device:
            raise ValueError(f"{name}[{k}] is on {x.device}, S[0] is on {device}")
    return [x.contiguous() for x in xs]


def _offset(x: Tensor, base: Tensor) -> int:
    """Element offset of x from base (same dtype, any allocation)."""
    q, r = divmod(x.data_ptr() - base.data_ptr(), x.element_size())
    if r:
        raise ValueError(f"a tensor of dtype {x.dtype} is not aligned to its element size")
    return q


def _view(x: Tensor, base: Tensor) -> list[int]:
    return [_offset(x, base), *x.stride()]


def _starts(counts: list[int]) -> list[int]:
    out, total = [], 0
    for k in counts:
        out.append(total)
        total += k
    return out


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return PROGRAMS_PER_SM * _sm_count(index)


class _Plan:
    """Runs of whole pixel blocks, one program each: nsplit[l] runs per image of level l."""

    def __init__(self, S: list[Tensor], programs: int | None):
        blocks = [triton.cdiv(s.shape[2] * s.shape[3], BLOCK_HW) for s in S]
        target = programs or _target_programs(S[0].device)
        self.blocks_per_prog = triton.cdiv(sum(s.shape[0] * b for s, b in zip(S, blocks)), target)
        self.nsplit = [triton.cdiv(b, self.blocks_per_prog) for b in blocks]
        self.level_programs = [s.shape[0] * k for s, k in zip(S, self.nsplit)]
        self.prog0 = _starts(self.level_programs)
        self.programs = sum(self.level_programs)
        self.levels = max(2, triton.next_power_of_2(len(S)))

    def rows(self, S, T, comb_counts, part_counts, part_base, extra) -> list[list[int]]:
        """The table's common columns (COL_PROG0..COL_PART), then each level's extra columns."""
        comb0 = _starts(comb_counts)
        part0 = [part_base + k for k in _starts(part_counts)]
        rows = []
        for l, (s, t) in enumerate(zip(S, T)):
            N, C, H, W = s.shape
            rows.append([self.prog0[l], self.nsplit[l], comb0[l], N, C, H * W, W,
                         *_view(s, S[0]), *_view(t, T[0]), part0[l], *extra[l]])
        return rows


def _channels_contiguous(xs: list[Tensor]) -> bool:
    return all(x.stride(1) == 1 or x.shape[1] == 1 for x in xs)


def _by_dtype(S: list[Tensor]) -> list[list[int]]:
    """Levels grouped by dtype (one group, one launch, unless levels differ in dtype)."""
    groups: dict[torch.dtype, list[int]] = {}
    for k, s in enumerate(S):
        groups.setdefault(s.dtype, []).append(k)
    return list(groups.values())


def _stats_launch(S, T, fg, bg, w_s, w_t, temp, programs):
    plan = _Plan(S, programs)
    device = S[0].device
    pix = [s.new_empty((s.shape[0], 4, s.shape[2] * s.shape[3]), dtype=torch.float32) for s in S]
    chan = [s.new_empty((s.shape[0], 8, s.shape[1]), dtype=torch.float32) for s in S]
    part_counts = [k * 8 * s.shape[1] for k, s in zip(plan.level_programs, S)]
    ws = torch.empty(plan.programs * N_SCALARS.value + sum(part_counts), dtype=torch.float32,
                     device=device)
    extra = [[_offset(x, ws) for x in xs] for xs in zip(fg, bg, w_s, w_t, pix, chan)]
    comb_counts = [s.shape[0] * triton.cdiv(s.shape[1], COMBINE_BLOCK_C) for s in S]
    rows = plan.rows(S, T, comb_counts, part_counts, plan.programs * N_SCALARS.value, extra)
    table = torch.tensor(rows, dtype=torch.int64, device=device)
    fgd_stats_fwd_kernel[(plan.programs,)](
        table, S[0], T[0], ws, len(S), float(temp), plan.blocks_per_prog,
        LEVELS=plan.levels, C_CONTIG=_channels_contiguous(S + T),
        BLOCK_C=BLOCK_C, BLOCK_HW=BLOCK_HW, num_warps=NUM_WARPS)
    fgd_stats_combine_kernel[(sum(comb_counts),)](
        table, ws, len(S), LEVELS=plan.levels, BLOCK_C=COMBINE_BLOCK_C, num_warps=NUM_WARPS)
    return pix, chan


def _grad_launch(S, T, pix_coef, chan_coef, K, programs):
    plan = _Plan(S, programs)
    device = S[0].device
    dS = [torch.empty_like(s) for s in S]
    dw_s = [s.new_empty((s.shape[1],), dtype=torch.float32) for s in S]
    dw_t = [s.new_empty((s.shape[1],), dtype=torch.float32) for s in S]
    part_counts = [k * 2 * s.shape[1] for k, s in zip(plan.level_programs, S)]
    ws = torch.empty(sum(part_counts), dtype=torch.float32, device=device)
    extra = [[_offset(x, ws) for x in xs[:5]] + _view(xs[5], dS[0])
             for xs in zip(pix_coef, chan_coef, K, dw_s, dw_t, dS)]
    comb_counts = [triton.cdiv(s.shape[1], COMBINE_BLOCK_C) for s in S]
    table = torch.tensor(plan.rows(S, T, comb_counts, part_counts, 0, extra), dtype=torch.int64,
                         device=device)
    fgd_grad_bwd_kernel[(plan.programs,)](
        table, S[0], T[0], dS[0], ws, len(S), plan.blocks_per_prog,
        LEVELS=plan.levels, C_CONTIG=_channels_contiguous(S + T + dS),
        BLOCK_C=BLOCK_C, BLOCK_HW=BLOCK_HW, num_warps=NUM_WARPS)
    fgd_grad_combine_kernel[(sum(comb_counts),)](
        table, ws, len(S), LEVELS=plan.levels, BLOCK_C=COMBINE_BLOCK_C, num_warps=NUM_WARPS)
    return dS, dw_s, dw_t


@_host_copy_if_interpreted
def fgd_stats(S: list[Tensor], T: list[Tensor], fg: list[Tensor], bg: list[Tensor],
              w_s: list[Tensor], w_t: list[Tensor], temp: float, *,
              programs: int | None = None) -> list[Tensor]:
    """[pix_0..pix_{L-1}, chan_0..chan_{L-1}] of fgd_passes.fgd_stats.

    programs: about how many main-kernel programs to use (default: PROGRAMS_PER_SM per SM).
    """
    _check_features(S, T)
    maps = [(s.shape[0], s.shape[2], s.shape[3]) for s in S]
    chans = [(s.shape[1],) for s in S]
    fg, bg = (_check_float32(name, x, maps, S[0].device) for name, x in (("fg", fg), ("bg", bg)))
    w_s, w_t = (_check_float32(name, x, chans, S[0].device) for name, x in (("w_s", w_s), ("w_t", w_t)))
    L = len(S)
    out: list[Tensor] = [None] * (2 * L)  # type: ignore[list-item]
    for idx in _by_dtype(S):
        pick = lambda xs: [xs[k] for k in idx]  # noqa: E731
        pix, chan = _stats_launch(pick(S), pick(T), pick(fg), pick(bg), pick(w_s), pick(w_t),
                                  temp, programs)
        for k, p, c in zip(idx, pix, chan):
            out[k], out[L + k] = p, c
    return out


@_host_copy_if_interpreted
def fgd_grad(S: list[Tensor], T: list[Tensor], pix_coef: list[Tensor], chan_coef: list[Tensor],
             K: list[Tensor], *, programs: int | None = None) -> list[Tensor]:
    """[dS_0.., dw_s_0.., dw_t_0..] of fgd_passes.fgd_grad (programs: as in fgd_stats)."""
    _check_features(S, T)
    device = S[0].device
    pix_coef = _check_float32("pix_coef", pix_coef,
                              [(s.shape[0], 5, s.shape[2] * s.shape[3]) for s in S], device)
    chan_coef = _check_float32("chan_coef", chan_coef, [(s.shape[0], 9, s.shape[1]) for s in S], device)
    K = _check_float32("K", K, [(s.shape[0], 2) for s in S], device)
    L = len(S)
    out: list[Tensor] = [None] * (3 * L)  # type: ignore[list-item]
    for idx in _by_dtype(S):
        pick = lambda xs: [xs[k] for k in idx]  # noqa: E731
        dS, dw_s, dw_t = _grad_launch(pick(S), pick(T), pick(pix_coef), pick(chan_coef), pick(K),
                                      programs)
        for k, d, a, b in zip(idx, dS, dw_s, dw_t):
            out[k], out[L + k], out[2 * L + k] = d, a, b
    return out
