"""Triton kernels of the two fused FGD passes (contract: fgdkern.reference.fgd_passes).

fgd_stats: reads S, T (+ fg, bg, w_s, w_t); writes pix (N, 4, HW) and chan (N, 8, C).
fgd_grad:  reads S, T (+ pix_coef, chan_coef, K); writes dS (like S), dw_s, dw_t (C,).

Each pass is one launch of a main kernel over every level of the pyramid and
one launch of a small combine kernel. S and T are read from DRAM once per
pass, dS is written once, and no float atomics are used: the results are the
same bit for bit from run to run (on one device; see "runs" below).

Blocks and runs. A block is BLOCK_HW consecutive pixels of one image of one
level. A main-kernel program takes a run of BLOCKS_PER_PROG consecutive blocks
of one (level, image); the run length is chosen per launch for about
PROGRAMS_PER_SM programs per SM. For each block the program
  1. loops over channel chunks, reducing over channels per pixel (gs and z
     of fgd_stats, written to pix; gp of fgd_grad), then
  2. loops over the same chunks again -- the block's tiles are still in L1/L2 --
     reducing over pixels per channel and merging the block into the run's
     partial rows in a float32 workspace (read-modify-write by the program
     that owns them: online-softmax rescaling for the softmax-weighted sums,
     Chan's formula for the second moment of D). fgd_grad writes dS here.
Bounding the number of programs bounds the bytes read between a tile's two
reads (programs * BLOCK_HW * C * 2 elements: ~17 MB for 264 programs at 256
channels, well inside an H100's 50 MB L2), and one set of partial rows per
run rather than per block keeps the workspace small (2 MB at 264 programs
and 256 channels, next to the 83 MB of float32 S and T of RetinaNet at N=2). The
combine kernel then merges the runs of each (level, image) -- for dw, of each
level -- in a fixed order. The split into runs depends on the SM count, so
devices with different SM counts may differ in the last bits.

Tiles. A block is held as a [ROWS, SECTOR] grid of pixels (SECTOR pixels are
32 bytes of one channel in NCHW) and a tile as [ROWS, BLOCK_C, SECTOR]: each
thread keeps ROWS pixels of its channels, so most of each sum over pixels is
in-thread rather than a shuffle across lanes. Tiles are loaded and stored
flat, [ROWS * BLOCK_C, SECTOR] (_tile_grid), and reshaped for the math: the
compiler gives lanes to the axis whose offsets it can prove contiguous, and
the flat form leaves it one candidate, whatever the Triton version's
tie-breaking. The launch passes LAYOUT: PIX_DENSE (the offset of pixel p is
p, as in NCHW: lanes read 32-byte sectors of several channels), CHANNELS_DENSE
(channel stride 1, channels_last: lanes span channels and a thread holds
every pixel of its channel), or GENERAL (other views: correct, with lanes
where the compiler's defaults put them).

Levels in one launch. A per-level int64 table (columns COL_*) holds program
ranges, sizes, and for every tensor its element offset from a base pointer
of the same dtype, plus its strides: the bases are level 0's S, T, dS and the
float32 workspace, from which every float32 input and output is addressed.
So S and T may have any strides (offsets inside one image are int32) and
every level its own shape. Levels of different dtypes get one launch each.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

# (BLOCK_C, BLOCK_HW, SECTOR) by (float32, LAYOUT == CHANNELS_DENSE): tiles of 1024
# elements, 8 per thread, which compile without register spills ("Tiles" above).
BLOCKS = {(True, False): (32, 32, 8), (False, False): (16, 64, 16),
          (True, True): (128, 8, 8), (False, True): (128, 8, 8)}
COMBINE_BLOCK_C = 128  # channels per combine program
NUM_WARPS = 4
PROGRAMS_PER_SM = 2
INTERPRETER_PROGRAMS = 4  # without CUDA: few programs, so that runs of several blocks are exercised
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

GENERAL = tl.constexpr(0)        # LAYOUT of the feature maps of a launch, see _image_tile
PIX_DENSE = tl.constexpr(1)
CHANNELS_DENSE = tl.constexpr(2)
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
def _level_shape(lv):
    """C, H * W and W of a level."""
    return tl.load(lv + COL_C), tl.load(lv + COL_HW), tl.load(lv + COL_W).to(tl.int32)


@triton.jit
def _block_pixels(b, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Pixels of block b as a [BLOCK_HW // SECTOR, SECTOR] grid of int32 indices."""
    grid = tl.arange(0, BLOCK_HW // SECTOR)[:, None] * SECTOR + tl.arange(0, SECTOR)[None, :]
    return (b * BLOCK_HW + grid).to(tl.int32)


@triton.jit
def _tile_grid(b, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Channel [ROWS * BLOCK_C, 1] and pixel [ROWS * BLOCK_C, SECTOR] of every element of a
    tile of block b as it is loaded: flat, row r * BLOCK_C + c holding channel c at pixels
    r * SECTOR + (0..SECTOR-1) of the block. Loads and stores use this 2-D form, in which
    the only contiguous axis the compiler can see is the one it should give to lanes;
    the math reshapes it to [ROWS, BLOCK_C, SECTOR] (the same registers)."""
    i = tl.arange(0, BLOCK_HW // SECTOR * BLOCK_C)
    pix = (b * BLOCK_HW + (i // BLOCK_C) * SECTOR)[:, None] + tl.arange(0, SECTOR)[None, :]
    return (i % BLOCK_C)[:, None], pix.to(tl.int32)


@triton.jit
def _image_tile(base, lv, col, n, tile_c, tile_p, W, LAYOUT: tl.constexpr):
    """Image n of the feature map whose view is at column col.

    Returns a pointer to its channel 0, the int32 offsets of the flat tile
    (_tile_grid) from the tile's first channel, and the channel stride. LAYOUT
    (the same for every view of a launch) says which offsets are contiguous:
    PIX_DENSE, the offset of pixel p is p (NCHW); CHANNELS_DENSE, the channel
    stride is 1 (channels_last); GENERAL, any strides.
    """
    image = base + tl.load(lv + col) + n * tl.load(lv + col + 1)
    sc = tl.load(lv + col + 2)
    if LAYOUT == PIX_DENSE:
        pix = tile_p
    else:
        sh = tl.load(lv + col + 3).to(tl.int32)
        sw = tl.load(lv + col + 4).to(tl.int32)
        pix = (tile_p // W) * sh + (tile_p % W) * sw
    if LAYOUT == CHANNELS_DENSE:
        c_off = tile_c
    else:
        c_off = tile_c * sc.to(tl.int32)
    return image, c_off + pix, sc


@triton.jit
def _tile_mask(tile_c, tile_in, c0, C):
    """Flat-tile mask of channels c0.., tile_in marking the pixels inside the map."""
    return (tile_c < C - c0) & tile_in


@triton.jit
def _load_tile(image, tile, sc, c0, mask,
               BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """[ROWS, BLOCK_C, SECTOR] float32 tile of channels c0.. of an image, zero outside it."""
    x = tl.load(image + c0 * sc + tile, mask=mask, other=0.0).to(tl.float32)
    return tl.reshape(x, [BLOCK_HW // SECTOR, BLOCK_C, SECTOR])


@triton.jit
def _store_tile(image, tile, sc, c0, mask, x,
                BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Stores a [ROWS, BLOCK_C, SECTOR] tile as channels c0.. of an image, in its dtype."""
    x = tl.reshape(x, [BLOCK_HW // SECTOR * BLOCK_C, SECTOR])
    tl.store(image + c0 * sc + tile, x.to(image.dtype.element_ty), mask=mask)


@triton.jit
def _per_pixel(v):
    """[ROWS, SECTOR] -> [ROWS, 1, SECTOR], broadcast over channels."""
    return v[:, None, :]


@triton.jit
def _per_channel(v):
    """[BLOCK_C] -> [1, BLOCK_C, 1], broadcast over pixels."""
    return v[None, :, None]


@triton.jit
def _sum_pixels(x):
    """[ROWS, BLOCK_C, SECTOR] -> [BLOCK_C], summing the in-thread ROWS axis first."""
    return tl.sum(tl.sum(x, 0), 1)


@triton.jit
def _block_sum(v):
    """[ROWS, SECTOR] -> scalar."""
    return tl.sum(tl.sum(v, 1), 0)


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
    """Weights exp(logits - m) of one block [ROWS, SECTOR], m the running maximum; and the
    factor that rescales sums taken with the previous maximum."""
    m_block = tl.max(tl.max(tl.where(p_mask, logits, float("-inf")), 1), 0)
    m, alpha, _ = _rescale(m_run, m_block)
    return m, alpha, tl.where(p_mask, tl.exp(logits - m), 0.0)


# ------------------------------------------------------------------ fgd_stats
@triton.jit
def _channel_sums(s_img, s_tile, s_sc, t_img, t_tile, t_sc, w_s, w_t, C, tile_c, tile_in,
                  ABS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
                  SECTOR: tl.constexpr):
    """Sub-loop 1: per pixel sum_c w_s S, sum_c w_t T and, if ABS, sum_c |S|, sum_c |T|.

    Each [ROWS, SECTOR]; w_s, w_t point to C weights (conv_mask weights for z,
    g_ctx for gp).
    """
    ws_s = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
    wt_t = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
    abs_s = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
    abs_t = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_mask = c < C
        mask = _tile_mask(tile_c, tile_in, c0, C)
        s = _load_tile(s_img, s_tile, s_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR)  # [ROWS, BLOCK_C, SECTOR]
        t = _load_tile(t_img, t_tile, t_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR)
        ws_s += s * _per_channel(tl.load(w_s + c, mask=c_mask, other=0.0))
        wt_t += t * _per_channel(tl.load(w_t + c, mask=c_mask, other=0.0))
        if ABS:
            abs_s += tl.abs(s)
            abs_t += tl.abs(t)
    return tl.sum(ws_s, 1), tl.sum(wt_t, 1), tl.sum(abs_s, 1), tl.sum(abs_t, 1)


@triton.jit
def _merge_moments(sum_row, m2_row, c_mask, keep, n_run, n_block, d, p_mask):
    """Fold one block's sum and block-centred second moment of D into the rows."""
    sum_b = _sum_pixels(d)                                                # [BLOCK_C]
    centred = tl.where(_per_pixel(p_mask), d - _per_channel(sum_b / n_block), 0.0)
    m2_b = _sum_pixels(centred * centred)
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
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads S, T, fg, bg, w_s, w_t of a run of blocks; writes pix and its partial chan rows."""
    lv, prog, n, blk_lo, blk_hi = _program_run(table, L, BLOCKS_PER_PROG, STATS_COLS, LEVELS,
                                               BLOCK_HW)
    C, HW, W = _level_shape(lv)
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
        p = _block_pixels(b, BLOCK_HW, SECTOR)                # [ROWS, SECTOR]
        p_mask = p < HW
        tile_c, tile_p = _tile_grid(b, BLOCK_C, BLOCK_HW, SECTOR)
        tile_in = tile_p < HW
        n_block = tl.minimum(HW - b * BLOCK_HW, BLOCK_HW).to(tl.float32)
        s_img, s_tile, s_sc = _image_tile(S, lv, COL_S, n, tile_c, tile_p, W, LAYOUT)
        t_img, t_tile, t_sc = _image_tile(T, lv, COL_T, n, tile_c, tile_p, W, LAYOUT)
        z_s, z_t, abs_s, abs_t = _channel_sums(s_img, s_tile, s_sc, t_img, t_tile, t_sc, w_s, w_t,
                                               C, tile_c, tile_in, True, BLOCK_C, BLOCK_HW, SECTOR)
        gs_s = abs_s / C
        gs_t = abs_t / C
        tl.store(pix + p, gs_s, mask=p_mask)
        tl.store(pix + HW + p, gs_t, mask=p_mask)
        tl.store(pix + 2 * HW + p, z_s, mask=p_mask)
        tl.store(pix + 3 * HW + p, z_t, mask=p_mask)
        m_zs, alpha_s, e_s = _block_softmax(z_s, p_mask, m_zs)
        m_zt, alpha_t, e_t = _block_softmax(z_t, p_mask, m_zt)
        m_a, alpha_a, e_a = _block_softmax(gs_t / temp, p_mask, m_a)
        l_zs = l_zs * alpha_s + _block_sum(e_s)
        l_zt = l_zt * alpha_t + _block_sum(e_t)
        l_a = l_a * alpha_a + _block_sum(e_a)
        e_s = _per_pixel(e_s)
        e_t = _per_pixel(e_t)
        w_fg = _per_pixel(tl.load(fg_row + p, mask=p_mask, other=0.0) * e_a)
        w_bg = _per_pixel(tl.load(bg_row + p, mask=p_mask, other=0.0) * e_a)
        for c0 in range(0, C, BLOCK_C):  # sub-loop 2: per-channel sums over the block
            c = c0 + tl.arange(0, BLOCK_C)
            c_mask = c < C
            mask = _tile_mask(tile_c, tile_in, c0, C)
            s = _load_tile(s_img, s_tile, s_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR)
            t = _load_tile(t_img, t_tile, t_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR)
            d = s - t
            d2 = d * d
            row = part + c
            _accumulate(row, c_mask, keep, 1.0, _sum_pixels(tl.abs(s)))
            _accumulate(row + C, c_mask, keep, 1.0, _sum_pixels(tl.abs(t)))
            _accumulate(row + 2 * C, c_mask, keep, alpha_s, _sum_pixels(s * e_s))
            _accumulate(row + 3 * C, c_mask, keep, alpha_t, _sum_pixels(t * e_t))
            _merge_moments(row + 4 * C, row + 5 * C, c_mask, keep, n_run, n_block, d, p_mask)
            _accumulate(row + 6 * C, c_mask, keep, alpha_a, _sum_pixels(d2 * w_fg))
            _accumulate(row + 7 * C, c_mask, keep, alpha_a, _sum_pixels(d2 * w_bg))
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
    """Reads the partial rows and scalars of the runs of an image; writes chan[n, :, c_block]."""
    pid = tl.program_id(0)
    lv = _find_level(table, pid, L, COL_COMB0, STATS_COLS, LEVELS)
    C, HW, _ = _level_shape(lv)
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
        sum_b = tl.load(row + 4 * C, mask=c_mask, other=0.0)
        m2_b = tl.load(row + 5 * C, mask=c_mask, other=0.0)
        sum_d, m2_d = _chan_merge(n_run, sum_d, m2_d, n_b, sum_b, m2_b)
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
def _coef(row, c, c_mask):
    """One row of chan_coef at channels c, broadcast over pixels: [1, BLOCK_C, 1]."""
    return _per_channel(tl.load(row + c, mask=c_mask, other=0.0))


@triton.jit
def fgd_grad_bwd_kernel(
    table,            # int64 [L, GRAD_COLS]: the level table
    S, T, dS,         # level 0's S, T, dS: bases of every level's
    f32,              # float32 workspace (partial dw rows): base of pix_coef, chan_coef, K, dw
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads S, T and the coefficients of a run of blocks; writes dS and its partial dw rows."""
    lv, prog, n, blk_lo, blk_hi = _program_run(table, L, BLOCKS_PER_PROG, GRAD_COLS, LEVELS,
                                               BLOCK_HW)
    C, HW, W = _level_shape(lv)
    pc = f32 + tl.load(lv + COL_PC) + n * 5 * HW   # rows a_sign, fgA, bgA, p_s, p_t
    cc = f32 + tl.load(lv + COL_CC) + n * 9 * C    # rows b_sign, k_d, k_const, k_fg, k_bg,
                                                   #      g_ctx_s, g_ctx_t, w_s, w_t
    K_s = tl.load(f32 + tl.load(lv + COL_K) + n * 2)
    K_t = tl.load(f32 + tl.load(lv + COL_K) + n * 2 + 1)
    part = f32 + tl.load(lv + COL_PART) + prog * 2 * C  # rows dw_s, dw_t
    for b in range(blk_lo, blk_hi):
        keep = b > blk_lo
        p = _block_pixels(b, BLOCK_HW, SECTOR)                # [ROWS, SECTOR]
        p_mask = p < HW
        tile_c, tile_p = _tile_grid(b, BLOCK_C, BLOCK_HW, SECTOR)
        tile_in = tile_p < HW
        s_img, s_tile, s_sc = _image_tile(S, lv, COL_S, n, tile_c, tile_p, W, LAYOUT)
        t_img, t_tile, t_sc = _image_tile(T, lv, COL_T, n, tile_c, tile_p, W, LAYOUT)
        ds_img, ds_tile, ds_sc = _image_tile(dS, lv, COL_DS, n, tile_c, tile_p, W, LAYOUT)
        p_s = tl.load(pc + 3 * HW + p, mask=p_mask, other=0.0)
        gp_s, gp_t, _, _ = _channel_sums(s_img, s_tile, s_sc, t_img, t_tile, t_sc, cc + 5 * C,
                                         cc + 6 * C, C, tile_c, tile_in, False, BLOCK_C, BLOCK_HW,
                                         SECTOR)
        dz_s = _per_pixel(p_s * (gp_s - K_s))
        dz_t = _per_pixel(tl.load(pc + 4 * HW + p, mask=p_mask, other=0.0) * (gp_t - K_t))
        a_sign = _per_pixel(tl.load(pc + p, mask=p_mask, other=0.0))
        fgA = _per_pixel(tl.load(pc + HW + p, mask=p_mask, other=0.0))
        bgA = _per_pixel(tl.load(pc + 2 * HW + p, mask=p_mask, other=0.0))
        p_s = _per_pixel(p_s)
        for c0 in range(0, C, BLOCK_C):  # sub-loop 2: dS, and per-channel sums for dw
            c = c0 + tl.arange(0, BLOCK_C)
            c_mask = c < C
            mask = _tile_mask(tile_c, tile_in, c0, C)
            s = _load_tile(s_img, s_tile, s_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR)
            t = _load_tile(t_img, t_tile, t_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR)
            b_sign = _coef(cc, c, c_mask)                                 # [1, BLOCK_C, 1]
            k_d = _coef(cc + C, c, c_mask)
            k_const = _coef(cc + 2 * C, c, c_mask)
            k_fg = _coef(cc + 3 * C, c, c_mask)
            k_bg = _coef(cc + 4 * C, c, c_mask)
            g_ctx_s = _coef(cc + 5 * C, c, c_mask)
            w_s = _coef(cc + 7 * C, c, c_mask)
            sign_s = (s > 0).to(tl.float32) - (s < 0).to(tl.float32)
            grad = (sign_s * (a_sign + b_sign) + (s - t) * (k_d + k_fg * fgA + k_bg * bgA)
                    + k_const + p_s * g_ctx_s + w_s * dz_s)
            _store_tile(ds_img, ds_tile, ds_sc, c0, mask, grad, BLOCK_C, BLOCK_HW, SECTOR)
            _accumulate(part + c, c_mask, keep, 1.0, _sum_pixels(s * dz_s))
            _accumulate(part + C + c, c_mask, keep, 1.0, _sum_pixels(t * dz_t))
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
        raise ValueError(f"S and T must be lists of one tensor per level, got {len(S)} and "
                         f"{len(T)}")
    device = S[0].device
    for k, (s, t) in enumerate(zip(S, T)):
        for name, x in ((f"S[{k}]", s), (f"T[{k}]", t)):
            if x.dim() != 4 or x.numel() == 0:
                raise ValueError(f"{name} must be a non-empty (N, C, H, W) tensor, got shape "
                                 f"{tuple(x.shape)}")
            if x.device != device:
                raise ValueError(f"{name} is on {x.device}, S[0] is on {device}")
        if s.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"S[{k}] must be float32, float16 or bfloat16, got {s.dtype}")
        if t.dtype != s.dtype:
            raise TypeError(f"T[{k}] is {t.dtype} but S[{k}] is {s.dtype}: they must match")
        if t.shape != s.shape:
            raise ValueError(f"T[{k}] has shape {tuple(t.shape)}, S[{k}] {tuple(s.shape)}")


def _float32_levels(name: str, xs: list[Tensor], shapes: list[tuple], device) -> list[Tensor]:
    """xs, checked to be float32 of shapes[k] on device, contiguous."""
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


def _check_int32_spans(xs: list[Tensor], block_c: int) -> None:
    """Offsets inside one image are int32 in the kernels."""
    for x in xs:
        N, C, H, W = x.shape
        span = (max(C, block_c) - 1) * x.stride(1) + (H - 1) * x.stride(2) + (W - 1) * x.stride(3)
        if span >= 2 ** 31:
            raise ValueError(f"one image of a {tuple(x.shape)} feature map spans {span} elements; "
                             "the Triton kernels address at most 2**31 - 1 within an image")


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


def _layout(views: list[Tensor]) -> int:
    """The LAYOUT of _image_tile that holds for every view."""
    def pix_dense(x):
        N, C, H, W = x.shape
        return (W == 1 or x.stride(3) == 1) and (H == 1 or x.stride(2) == W)
    if all(x.stride(1) == 1 or x.shape[1] == 1 for x in views):
        return CHANNELS_DENSE.value
    if all(pix_dense(x) for x in views):
        return PIX_DENSE.value
    return GENERAL.value


class _Launch:
    """One launch over levels of one dtype: block sizes, and runs of whole pixel blocks
    (nsplit[l] per image of level l), one main-kernel program per run."""

    def __init__(self, S: list[Tensor], T: list[Tensor], views: list[Tensor],
                 programs: Optional[int]):
        """views: every feature map the main kernel addresses (S, T and dS)."""
        self.S, self.T = S, T
        self.layout = _layout(views)
        fp32 = S[0].dtype == torch.float32
        self.block_c, self.block_hw, self.sector = BLOCKS[fp32, self.layout == CHANNELS_DENSE.value]
        _check_int32_spans(views, self.block_c)
        blocks = [triton.cdiv(s.shape[2] * s.shape[3], self.block_hw) for s in S]
        target = programs or _target_programs(S[0].device)
        self.blocks_per_prog = triton.cdiv(sum(s.shape[0] * b for s, b in zip(S, blocks)), target)
        self.nsplit = [triton.cdiv(b, self.blocks_per_prog) for b in blocks]
        self.level_programs = [s.shape[0] * k for s, k in zip(S, self.nsplit)]
        self.programs = sum(self.level_programs)
        self.levels = max(2, triton.next_power_of_2(len(S)))

    def table(self, ncol, comb_counts, part_counts, part_base, extra) -> Tensor:
        """The level table: common columns COL_PROG0..COL_PART, then each level's extra columns."""
        prog0, comb0 = _starts(self.level_programs), _starts(comb_counts)
        part0 = [part_base + k for k in _starts(part_counts)]
        rows = []
        for l, (s, t) in enumerate(zip(self.S, self.T)):
            N, C, H, W = s.shape
            rows.append([prog0[l], self.nsplit[l], comb0[l], N, C, H * W, W,
                         *_view(s, self.S[0]), *_view(t, self.T[0]), part0[l], *extra[l]])
        assert all(len(row) == ncol for row in rows)
        return torch.tensor(rows, dtype=torch.int64, device=self.S[0].device)

    def main_args(self) -> dict:
        """Keyword arguments of a main kernel."""
        return dict(LEVELS=self.levels, LAYOUT=self.layout, BLOCK_C=self.block_c,
                    BLOCK_HW=self.block_hw, SECTOR=self.sector, num_warps=NUM_WARPS)


def _by_dtype(S: list[Tensor]) -> list[list[int]]:
    """Levels grouped by dtype (one group, one launch, unless levels differ in dtype)."""
    groups: dict[torch.dtype, list[int]] = {}
    for k, s in enumerate(S):
        groups.setdefault(s.dtype, []).append(k)
    return list(groups.values())


def _stats_launch(S, T, fg, bg, w_s, w_t, temp, programs):
    run = _Launch(S, T, S + T, programs)
    pix = [s.new_empty((s.shape[0], 4, s.shape[2] * s.shape[3]), dtype=torch.float32) for s in S]
    chan = [s.new_empty((s.shape[0], 8, s.shape[1]), dtype=torch.float32) for s in S]
    part_counts = [k * 8 * s.shape[1] for k, s in zip(run.level_programs, S)]
    n_scalars = run.programs * N_SCALARS.value
    ws = torch.empty(n_scalars + sum(part_counts), dtype=torch.float32, device=S[0].device)
    extra = [[_offset(x, ws) for x in xs] for xs in zip(fg, bg, w_s, w_t, pix, chan)]
    comb_counts = [s.shape[0] * triton.cdiv(s.shape[1], COMBINE_BLOCK_C) for s in S]
    table = run.table(STATS_COLS.value, comb_counts, part_counts, n_scalars, extra)
    fgd_stats_fwd_kernel[(run.programs,)](table, S[0], T[0], ws, len(S), float(temp),
                                          run.blocks_per_prog, **run.main_args())
    fgd_stats_combine_kernel[(sum(comb_counts),)](table, ws, len(S), LEVELS=run.levels,
                                                  BLOCK_C=COMBINE_BLOCK_C, num_warps=NUM_WARPS)
    return pix, chan


def _grad_launch(S, T, pix_coef, chan_coef, K, programs):
    dS = [torch.empty_like(s) for s in S]
    run = _Launch(S, T, S + T + dS, programs)
    dw_s = [s.new_empty((s.shape[1],), dtype=torch.float32) for s in S]
    dw_t = [s.new_empty((s.shape[1],), dtype=torch.float32) for s in S]
    part_counts = [k * 2 * s.shape[1] for k, s in zip(run.level_programs, S)]
    ws = torch.empty(sum(part_counts), dtype=torch.float32, device=S[0].device)
    extra = [[_offset(x, ws) for x in xs[:5]] + _view(xs[5], dS[0])
             for xs in zip(pix_coef, chan_coef, K, dw_s, dw_t, dS)]
    comb_counts = [triton.cdiv(s.shape[1], COMBINE_BLOCK_C) for s in S]
    table = run.table(GRAD_COLS.value, comb_counts, part_counts, 0, extra)
    fgd_grad_bwd_kernel[(run.programs,)](table, S[0], T[0], dS[0], ws, len(S), run.blocks_per_prog,
                                         **run.main_args())
    fgd_grad_combine_kernel[(sum(comb_counts),)](table, ws, len(S), LEVELS=run.levels,
                                                 BLOCK_C=COMBINE_BLOCK_C, num_warps=NUM_WARPS)
    return dS, dw_s, dw_t


@_host_copy_if_interpreted
def fgd_stats(S: list[Tensor], T: list[Tensor], fg: list[Tensor], bg: list[Tensor],
              w_s: list[Tensor], w_t: list[Tensor], temp: float, *,
              programs: Optional[int] = None) -> list[Tensor]:
    """[pix_0..pix_{L-1}, chan_0..chan_{L-1}] of fgd_passes.fgd_stats.

    programs: about how many main-kernel programs to use (default: PROGRAMS_PER_SM per SM).
    """
    _check_features(S, T)
    device = S[0].device
    maps = [(s.shape[0], s.shape[2], s.shape[3]) for s in S]
    chans = [(s.shape[1],) for s in S]
    fg = _float32_levels("fg", fg, maps, device)
    bg = _float32_levels("bg", bg, maps, device)
    w_s = _float32_levels("w_s", w_s, chans, device)
    w_t = _float32_levels("w_t", w_t, chans, device)
    L = len(S)
    out: list[Tensor] = [None] * (2 * L)  # type: ignore[list-item]
    for idx in _by_dtype(S):
        group = [[xs[k] for k in idx] for xs in (S, T, fg, bg, w_s, w_t)]
        pix, chan = _stats_launch(*group, temp, programs)
        for k, p, c in zip(idx, pix, chan):
            out[k], out[L + k] = p, c
    return out


@_host_copy_if_interpreted
def fgd_grad(S: list[Tensor], T: list[Tensor], pix_coef: list[Tensor], chan_coef: list[Tensor],
             K: list[Tensor], *, programs: Optional[int] = None) -> list[Tensor]:
    """[dS_0.., dw_s_0.., dw_t_0..] of fgd_passes.fgd_grad (programs: as in fgd_stats)."""
    _check_features(S, T)
    device = S[0].device
    pix_coef = _float32_levels("pix_coef", pix_coef,
                              [(s.shape[0], 5, s.shape[2] * s.shape[3]) for s in S], device)
    chan_coef = _float32_levels("chan_coef", chan_coef, [(s.shape[0], 9, s.shape[1]) for s in S],
                                device)
    K = _float32_levels("K", K, [(s.shape[0], 2) for s in S], device)
    L = len(S)
    out: list[Tensor] = [None] * (3 * L)  # type: ignore[list-item]
    for idx in _by_dtype(S):
        group = [[xs[k] for k in idx] for xs in (S, T, pix_coef, chan_coef, K)]
        dS, dw_s, dw_t = _grad_launch(*group, programs)
        for k, d, a, b in zip(idx, dS, dw_s, dw_t):
            out[k], out[L + k], out[2 * L + k] = d, a, b
    return out
