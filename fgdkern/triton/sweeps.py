"""Channel sweeps: a main-kernel program's run of blocks, one channel chunk at a time.

Reads S and T through the level table (levels.py) and tiles (tiles.py); writes
a pass's partial rows (fold_rows) or its output map (map_blocks). What a pass
computes of one tile is a jit function it hands over as a constexpr (BODY), so
its own file holds only its math and merges; run_blocks picks the aligned path.

For passes without sums across channels (CWD's softmaxes over the pixels of
an image, PKD's moments over the pixels of a level, and their elementwise
gradients) the channel chunk is the outer loop and the run's blocks the inner
one: a chunk's per-channel accumulators stay in registers over the whole run
and its partial rows are written once per run, where passes with per-pixel
sums across channels (fgd_stats, imitation_stats) must read and write theirs
in the workspace for every block. S and T are still read once.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import triton
import triton.language as tl

from fgdkern.triton.levels import COL_S, COL_T, level_shape
from fgdkern.triton.tiles import (
    block_grids, extents, image_tile, load_tile, per_pixel, store_tile, tile_mask)


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
