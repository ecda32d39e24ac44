"""Triton kernels of the imitation statistics pass (contract:
fgdkern.reference.imitation_passes.imitation_stats), shared by FKD and PFI.

Reads X, Y (any strides, float32/16 or bfloat16; Y may be X itself) and the
float32 channel weights w (N, C) of every level; writes pix (N, 3, HW) and
chan (N, 2, C), float32, rows named in fgdkern.rows (IMIT_PIX, IMIT_CHAN):
    pix:  abs_x = sum_c |X|,  sum_x = sum_c X,  sq_d = sum_c w[c] (X - Y)^2
    chan: abs_x = sum_ij |X|, sum_x = sum_ij X

One launch of the main kernel over every level (levels.py: the level table
holds X in the S columns and Y in the T columns), then one of the combine
kernel; X and Y are read from DRAM once, and no float atomics are used, so
results are the same bit for bit from run to run. The main kernel is a body
on sweeps.sweep_blocks: for each block of its run a program makes one sweep
over the channel chunks of its tiles (imitation_stats_element), both
  * adding each chunk into per-pixel accumulators, reduced over channels as a
    pairwise tree once the sweep is done and written by imitation_stats_post
    (abs_x feeds FKD's softmax(abs_x / temp), so it is kept to about one ulp:
    docs/kernels.md, "Precision"), and
  * adding the chunk's sums over the block's pixels into the run's partial
    chan rows in the float32 workspace (merges.accumulate_rows).
The combine kernel adds the runs of each image in order, a program taking
levels.COMBINE_BLOCK_C channels of one image. Tile shapes (BLOCK_C x BLOCK_HW)
are those tiles.tile_shape gives every pass for the dtype and LAYOUT.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import IMIT_CHAN, IMIT_PIX
from fgdkern.triton.levels import (
    RUNTIME_INTS, run_blocks,
    COL_PART, Launch, check_features, extra_columns,
    float32_levels, host_copy_if_interpreted, image_channel_block, image_channel_blocks,
    level_shape, offset, per_dtype, program_run, row_indices)
from fgdkern.triton.merges import stack2
from fgdkern.triton.sweeps import no_pixel_math, sweep_blocks
from fgdkern.triton.tiles import channel_row, sum_pixels

# Rows of pix and chan (fgdkern.rows); a run's partial rows are laid out as chan.
P_ABS, P_SUM, P_SQ, PIX_ROWS = row_indices(IMIT_PIX, "abs_x", "sum_x", "sq_d")
C_ABS, C_SUM, CHAN_ROWS = row_indices(IMIT_CHAN, "abs_x", "sum_x")
assert [C_ABS, C_SUM] == list(range(CHAN_ROWS))  # the order a chunk stacks its sums in

# Columns of the level table after the common ones: element offsets from the workspace.
COL_WEIGHT, COL_PIX, COL_CHAN = extra_columns(3)
NCOL = tl.constexpr(COL_CHAN.value + 1)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def imitation_stats_fwd_kernel(
    table,            # int64 [L, NCOL]: the level table
    X, Y,             # level 0's X and Y: bases of every level's X and Y
    f32,              # float32 workspace (partial chan rows): base of w, pix, chan
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads X, Y and w of a run of blocks; writes their pix and the run's partial chan rows."""
    lv, prog, n, blk_lo, blk_hi = program_run(table, L, BLOCKS_PER_PROG, NCOL, LEVELS, BLOCK_HW)
    run_blocks(imitation_stats_run, lv, prog, n, blk_lo, blk_hi, X, Y, None, f32,
               LAYOUT, ALIGN, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def imitation_stats_run(lv, prog, n, blk_lo, blk_hi, X, Y, OUT, f32,
                        LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """The main kernel's work on its run of blocks, blk_lo..blk_hi of image n."""
    C, _, _ = level_shape(lv)
    part = f32 + tl.load(lv + COL_PART) + prog * CHAN_ROWS * C
    w = f32 + tl.load(lv + COL_WEIGHT) + n * C
    sweep_blocks(None, 0, no_pixel_math, imitation_stats_element, imitation_stats_post, 3,
                 -1, -1, part, w, lv, n, blk_lo, blk_hi, X, Y, None, None, f32,
                 LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def imitation_stats_element(x, y, q0, q1, q2, q3, q4, q5, w, C, c, c_mask, inside, n_block):
    """A tile's sums over pixels (abs_x, sum_x, stacked as the partial rows) and its terms of
    the sums over channels (|X|, X, w (X - Y)^2)."""
    d = x - y
    return (0.0, stack2(sum_pixels(tl.abs(x)), sum_pixels(x)), tl.abs(x), x,
            channel_row(w, c, c_mask) * (d * d))


@triton.jit
def imitation_stats_post(lv, n, f32, C, HW, p, p_mask, abs_x, sum_x, sq_d):
    """Writes the block's pix rows."""
    pix = f32 + tl.load(lv + COL_PIX) + n * PIX_ROWS * HW
    tl.store(pix + P_ABS * HW + p, abs_x, mask=p_mask)
    tl.store(pix + P_SUM * HW + p, sum_x, mask=p_mask)
    tl.store(pix + P_SQ * HW + p, sq_d, mask=p_mask)


@triton.jit(do_not_specialize=["L"])
def imitation_stats_combine_kernel(table, f32, L, LEVELS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Reads the partial rows of the runs of an image; writes chan[n, :, c_block]."""
    lv, n, c, c_mask, first, nsplit = image_channel_block(table, L, NCOL, LEVELS, BLOCK_C)
    C, _, _ = level_shape(lv)
    abs_x = tl.zeros([BLOCK_C], tl.float32)
    sum_x = tl.zeros([BLOCK_C], tl.float32)
    runs = f32 + tl.load(lv + COL_PART) + c
    for j in range(first, first + nsplit):  # the image's runs, in order
        abs_x += tl.load(runs + (j * CHAN_ROWS + C_ABS) * C, mask=c_mask, other=0.0)
        sum_x += tl.load(runs + (j * CHAN_ROWS + C_SUM) * C, mask=c_mask, other=0.0)
    chan = f32 + tl.load(lv + COL_CHAN) + n * CHAN_ROWS * C + c
    tl.store(chan + C_ABS * C, abs_x, mask=c_mask)
    tl.store(chan + C_SUM * C, sum_x, mask=c_mask)


def _launch(X, Y, w, programs):
    """pix and chan of levels of one dtype."""
    run = Launch(X, Y, [], programs)
    pix = [x.new_empty((x.shape[0], len(IMIT_PIX), x.shape[2] * x.shape[3]), dtype=torch.float32)
           for x in X]
    chan = [x.new_empty((x.shape[0], len(IMIT_CHAN), x.shape[1]), dtype=torch.float32)
            for x in X]
    ws, part0 = run.workspace(CHAN_ROWS.value)
    extra = [[offset(t, ws) for t in ts] for ts in zip(w, pix, chan)]
    comb_counts = image_channel_blocks(X)
    table = run.table(NCOL.value, comb_counts, part0, extra)
    run.main(imitation_stats_fwd_kernel, table, [X[0], Y[0]], ws)
    run.combine(imitation_stats_combine_kernel, table, ws, comb_counts)
    return pix, chan


@host_copy_if_interpreted
def imitation_stats(X: list[Tensor], Y: list[Tensor], w: list[Tensor], *,
                    programs: Optional[int] = None) -> list[Tensor]:
    """[pix_0..pix_{L-1}, chan_0..chan_{L-1}] of imitation_passes.imitation_stats.

    programs: about how many main-kernel programs to use (default: PROGRAMS_PER_SM per SM).
    """
    check_features(X, Y, names=("X", "Y"))
    w = float32_levels("w", w, [(x.shape[0], x.shape[1]) for x in X], X[0].device, maps="X")
    return per_dtype(_launch, X, [X, Y, w], programs)
