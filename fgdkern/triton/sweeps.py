"""The Triton pass engine: the loop nests of a main-kernel program's run of blocks.

Reads S and T through the level table (levels.py) and tiles (tiles.py); writes
a pass's partial rows (fold_rows, sweep_blocks) or its output map (map_blocks,
sweep_blocks). What a pass computes of one tile is a jit function it hands over
as a constexpr (BODY; PRE, PIXEL, ELEMENT, POST), so its own file holds only its
math; run_blocks picks the aligned path.

For passes without sums across channels (CWD's softmaxes over the pixels of
an image, PKD's moments over the pixels of a level, and their elementwise
gradients) the channel chunk is the outer loop and the run's blocks the inner
one: a chunk's per-channel accumulators stay in registers over the whole run
and its partial rows are written once per run, where passes with per-pixel
sums across channels (fgd_stats, imitation_stats) must read and write theirs
in the workspace for every block. S and T are still read once.

Passes with sums across channels run on sweep_blocks: per block of the run,
  1. PRE: up to 4 sums over channels per pixel (a pairwise tree, sum_channels);
  2. PIXEL: per-pixel math on them, once per block: up to 6 per-pixel factors
     for the elements and the factor that rescales the run's partial rows;
  3. ELEMENT: per tile of a channel chunk, the output tile, the chunk's sums
     over the block's pixels (stacked rows, merged into the run's partial rows
     as a plain or Chan sum: merges.py) and up to 3 more sums over channels per
     pixel, which POST receives when the sweep is done.
S and T are read from DRAM once: the second sweep finds the block in L1/L2.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import triton
import triton.language as tl

from fgdkern.triton.levels import COL_S, COL_T, level_shape
from fgdkern.triton.merges import accumulate_rows, accumulate_rows_and_moments
from fgdkern.triton.tiles import (
    block_grids, extents, image_tile, load_tile, per_pixel, store_tile, sum_channels, tile_mask)


@triton.jit
def block_tiles(lv, n, blk, c0, C, HW, W, S, T, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Channels c0.. of block blk of image n: the float32 tiles of S and T [ROWS, BLOCK_C,
    SECTOR] (0 outside the map), which pixels are inside [ROWS, 1, SECTOR] and how many;
    then the flat tile grid and mask that store_tile takes."""
    p, p_mask, tile_c, tile_p, tile_in = block_grids(blk, HW, BLOCK_C, BLOCK_HW, SECTOR)
    mask = tile_mask(tile_c, tile_in, c0, C)
    s_img, s_tile, s_sc = image_tile(S, lv + COL_S, n, tile_c, tile_p, W, LAYOUT, ALIGN)
    t_img, t_tile, t_sc = image_tile(T, lv + COL_T, n, tile_c, tile_p, W, LAYOUT, ALIGN)
    s = load_tile(s_img, s_tile, s_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR)
    t = load_tile(t_img, t_tile, t_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR)
    n_block = tl.minimum(HW - blk * BLOCK_HW, BLOCK_HW).to(tl.float32)
    return s, t, per_pixel(p_mask), n_block, tile_c, tile_p, mask


@triton.jit
def fold_rows(BODY: tl.constexpr, init0, init1, init2, init3, init4, param, part,
              lv, n, blk_lo, blk_hi, S, T, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
              STAGES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
              SECTOR: tl.constexpr):
    """Five per-channel accumulators x0..x4, from init0..init4, folded over the run's blocks:
    x = BODY(x0, .., x4, s, t, param, inside, n_run, n_block) per tile (block_tiles; n_run:
    the pixels folded before it, param: a float of the pass); then stored as the run's
    partial rows 0..4 (C values each at part)."""
    C, HW, W = level_shape(lv)
    C, HW = extents(C, HW, LAYOUT, ALIGN)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        zero = tl.zeros([BLOCK_C], tl.float32)
        x0, x1, x2, x3, x4 = zero + init0, zero + init1, zero + init2, zero + init3, zero + init4
        n_run = 0.0
        for blk in tl.range(blk_lo, blk_hi, num_stages=STAGES):  # the run's blocks, in order
            s, t, inside, n_block, _, _, _ = block_tiles(lv, n, blk, c0, C, HW, W, S, T, LAYOUT,
                                                         ALIGN, BLOCK_C, BLOCK_HW, SECTOR)
            x0, x1, x2, x3, x4 = BODY(x0, x1, x2, x3, x4, s, t, param, inside, n_run, n_block)
            n_run += n_block
        c_mask = c < C
        tl.store(part + c, x0, mask=c_mask)
        tl.store(part + C + c, x1, mask=c_mask)
        tl.store(part + 2 * C + c, x2, mask=c_mask)
        tl.store(part + 3 * C + c, x3, mask=c_mask)
        tl.store(part + 4 * C + c, x4, mask=c_mask)


@triton.jit
def map_blocks(BODY: tl.constexpr, param, coef, lv, n, blk_lo, blk_hi, S, T, OUT, out_view,
               LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """OUT = BODY(s, t, param, coef, c, c_mask, C) on every tile of the run (block_tiles;
    coef: the pass's coefficient rows, param: a float of the pass), rounded once to OUT's
    dtype; out_view: OUT's view in the level table."""
    C, HW, W = level_shape(lv)
    C, HW = extents(C, HW, LAYOUT, ALIGN)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_mask = c < C
        for blk in tl.range(blk_lo, blk_hi, num_stages=STAGES):
            s, t, _, _, tile_c, tile_p, mask = block_tiles(lv, n, blk, c0, C, HW, W, S, T, LAYOUT,
                                                           ALIGN, BLOCK_C, BLOCK_HW, SECTOR)
            o_img, o_tile, o_sc = image_tile(OUT, out_view, n, tile_c, tile_p, W, LAYOUT, ALIGN)
            store_tile(o_img, o_tile, o_sc, c0, mask, BODY(s, t, param, coef, c, c_mask, C),
                       BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def no_pixel_math(lv, n, f32, C, HW, p, p_mask, u0, u1, u2, u3, keep, n_run, n_block):
    """The PIXEL of a pass without per-pixel math: no factors, rows rescaled by 1."""
    return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0


@triton.jit
def chunk_tiles(c0, C, tile_c, tile_in, s_img, s_tile, s_sc, t_img, t_tile, t_sc,
                BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Channels c0.. of a block: c, their mask, the flat-tile mask, and the float32 tiles of
    S and T (0 outside the map)."""
    c = c0 + tl.arange(0, BLOCK_C)
    mask = tile_mask(tile_c, tile_in, c0, C)
    return (c, c < C, mask, load_tile(s_img, s_tile, s_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR),
            load_tile(t_img, t_tile, t_sc, c0, mask, BLOCK_C, BLOCK_HW, SECTOR))


@triton.jit
def add_first(K: tl.constexpr, a0, a1, a2, a3, x0, x1, x2, x3):
    """a_k + x_k for the first K (0..4) of four accumulators; the others as they are."""
    if K > 0:
        a0 += x0
    if K > 1:
        a1 += x1
    if K > 2:
        a2 += x2
    if K > 3:
        a3 += x3
    return a0, a1, a2, a3


@triton.jit
def pixel_sums(PRE: tl.constexpr, N_PRE: tl.constexpr, lv, f32, coef, C, s_img, s_tile, s_sc,
               t_img, t_tile, t_sc, tile_c, tile_in, STAGES: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Per pixel of a block, the sums over channels of the first N_PRE (1..4) of the values
    x0..x3 = PRE(s, t, lv, f32, coef, C, c, c_mask) of each element, [ROWS, SECTOR] each; each
    lane adds its channels c, c + BLOCK_C, .. in turn, then a pairwise tree (sum_channels)."""
    a0 = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
    a1 = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
    a2 = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
    a3 = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
    for c0 in tl.range(0, C, BLOCK_C, num_stages=STAGES):
        c, c_mask, mask, s, t = chunk_tiles(c0, C, tile_c, tile_in, s_img, s_tile, s_sc,
                                            t_img, t_tile, t_sc, BLOCK_C, BLOCK_HW, SECTOR)
        x0, x1, x2, x3 = PRE(s, t, lv, f32, coef, C, c, c_mask)
        a0, a1, a2, a3 = add_first(N_PRE, a0, a1, a2, a3, x0, x1, x2, x3)
    return (sum_channels(a0, BLOCK_C, BLOCK_HW, SECTOR), sum_channels(a1, BLOCK_C, BLOCK_HW, SECTOR),
            sum_channels(a2, BLOCK_C, BLOCK_HW, SECTOR), sum_channels(a3, BLOCK_C, BLOCK_HW, SECTOR))


@triton.jit
def sweep_blocks(PRE: tl.constexpr, N_PRE: tl.constexpr, PIXEL: tl.constexpr,
                 ELEMENT: tl.constexpr, POST: tl.constexpr, N_POST: tl.constexpr,
                 SUM: tl.constexpr, M2: tl.constexpr, part, coef, lv, n, blk_lo, blk_hi,
                 S, T, OUT, out_view, f32, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
                 STAGES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
                 SECTOR: tl.constexpr):
    """A pass with sums across channels on its run of blocks (see the module docstring).

    coef: the pass's per-channel rows of image n, which PRE (with lv and f32) and ELEMENT
    get. Per block (u: pixel_sums of PRE, 0.0 without; keep: not the run's first block;
    n_run: the pixels of the run before it, n_block its own):
      q0, .., q5, scale = PIXEL(lv, n, f32, C, HW, p, p_mask, u0, .., u3, keep, n_run, n_block)
    then per channel chunk (inside: [ROWS, 1, SECTOR], the pixels inside the map)
      out, rows, x0, x1, x2 = ELEMENT(s, t, q0, .., q5, coef, C, c, c_mask, inside, n_block)
    out is stored to OUT (its view at out_view; none if OUT is None); rows, [BLOCK_C, R], to
    the R partial rows of C values at part (none if part is None) as rows * scale + rows of
    the block, rows SUM and M2 merged by Chan's formula (none if SUM < 0); the first N_POST
    of x0..x2 are summed over channels and handed to POST(lv, n, f32, C, HW, p, p_mask, v0,
    v1, v2) after the chunks.
    """
    C, HW, W = level_shape(lv)
    C, HW = extents(C, HW, LAYOUT, ALIGN)
    n_run = 0.0
    for b in range(blk_lo, blk_hi):
        keep = b > blk_lo
        p, p_mask, tile_c, tile_p, tile_in = block_grids(b, HW, BLOCK_C, BLOCK_HW, SECTOR)
        n_block = tl.minimum(HW - b * BLOCK_HW, BLOCK_HW).to(tl.float32)
        s_img, s_tile, s_sc = image_tile(S, lv + COL_S, n, tile_c, tile_p, W, LAYOUT, ALIGN)
        t_img, t_tile, t_sc = image_tile(T, lv + COL_T, n, tile_c, tile_p, W, LAYOUT, ALIGN)
        # sweep 1 and the per-pixel math
        u0, u1, u2, u3 = 0.0, 0.0, 0.0, 0.0
        if N_PRE > 0:
            u0, u1, u2, u3 = pixel_sums(PRE, N_PRE, lv, f32, coef, C, s_img, s_tile, s_sc,
                                        t_img, t_tile, t_sc, tile_c, tile_in, STAGES,
                                        BLOCK_C, BLOCK_HW, SECTOR)
        q0, q1, q2, q3, q4, q5, scale = PIXEL(lv, n, f32, C, HW, p, p_mask, u0, u1, u2, u3,
                                              keep, n_run, n_block)
        if OUT is not None:
            o_img, o_tile, o_sc = image_tile(OUT, out_view, n, tile_c, tile_p, W, LAYOUT, ALIGN)
        v0 = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
        v1 = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
        v2 = tl.zeros([BLOCK_HW // SECTOR, BLOCK_C, SECTOR], tl.float32)
        # sweep 2: the elements
        for c0 in tl.range(0, C, BLOCK_C, num_stages=STAGES):
            c, c_mask, mask, s, t = chunk_tiles(c0, C, tile_c, tile_in, s_img, s_tile, s_sc,
                                                t_img, t_tile, t_sc, BLOCK_C, BLOCK_HW, SECTOR)
            out, rows, x0, x1, x2 = ELEMENT(s, t, q0, q1, q2, q3, q4, q5, coef, C, c, c_mask,
                                            per_pixel(p_mask), n_block)
            if OUT is not None:
                store_tile(o_img, o_tile, o_sc, c0, mask, out, BLOCK_C, BLOCK_HW, SECTOR)
            if part is not None:
                if SUM >= 0:
                    accumulate_rows_and_moments(part, c, c_mask, C, keep, scale, rows, n_run,
                                                n_block, SUM, M2)
                else:
                    accumulate_rows(part, c, c_mask, C, keep, scale, rows)
            v0, v1, v2, _ = add_first(N_POST, v0, v1, v2, 0.0, x0, x1, x2, 0.0)
        if N_POST > 0:
            POST(lv, n, f32, C, HW, p, p_mask, sum_channels(v0, BLOCK_C, BLOCK_HW, SECTOR),
                 sum_channels(v1, BLOCK_C, BLOCK_HW, SECTOR),
                 sum_channels(v2, BLOCK_C, BLOCK_HW, SECTOR))
        n_run += n_block
        if part is not None:
            tl.debug_barrier()  # the next block re-reads rows that other threads stored
