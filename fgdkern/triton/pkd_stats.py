"""Triton kernels of the PKD statistics pass (contract:
fgdkern.reference.channel_passes.pkd_stats).

Reads S, T (any strides, float32/16 or bfloat16) of every level; writes chan
(5, C) float32, rows named in fgdkern.rows (PKD_CHAN): per channel c over all
images and pixels (the statistics with which Cao et al., NeurIPS 2022, eq. 2,
normalise each channel to zero mean and unit variance),
    mean_s, mean_t,  m2_s = sum (S - mean_s)^2,  m2_t = sum (T - mean_t)^2,
    m_st = sum (S - mean_s) (T - mean_t).

One launch of the main kernel over every level, then one of the combine
kernel; no float atomics, so results are the same bit for bit from run to run.
A main-kernel program sweeps its run of blocks one channel chunk at a time
(sweeps.fold_rows): each block's sums and moments about its own mean are merged
into the run's by Chan et al.'s pairwise formula with the cross moment
(merges.chan_merge_pair), so no moment cancels when a mean is large next to the
spread; it writes the run's sums and moments as its partial rows and its pixel
count. The combine kernel merges every run of a level, image by image, by the
same formula: the moments are over the level, not per image.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import PKD_CHAN
from fgdkern.reference.pkd import EPS
from fgdkern.triton.level_math import level_sums
from fgdkern.triton.levels import (
    RUNTIME_INTS, COL_PART, COL_PROG0, Launch, check_features, extra_columns,
    host_copy_if_interpreted, level_channel_block, level_channel_blocks, level_shape, offset,
    per_dtype, program_run, row_indices, run_blocks)
from fgdkern.triton.merges import chan_merge_pair, partial_row
from fgdkern.triton.sweeps import fold_rows
from fgdkern.triton.tiles import per_channel, sum_pixels

EPS = tl.constexpr(EPS)
MEAN_S, MEAN_T, M2_S, M2_T, M_ST, CHAN_ROWS = row_indices(
    PKD_CHAN, "mean_s", "mean_t", "m2_s", "m2_t", "m_st")
# A run's partial rows, in the order pkd_block folds them: chan's, with sums for means.
SUM_S, SUM_T, PART_ROWS = MEAN_S, MEAN_T, CHAN_ROWS
assert [SUM_S, SUM_T, M2_S, M2_T, M_ST] == list(range(PART_ROWS))

# Columns of the level table after the common ones: element offset of chan in the workspace.
COL_CHAN, = extra_columns(1)
NCOL = tl.constexpr(COL_CHAN.value + 1)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def pkd_stats_fwd_kernel(
    table,            # int64 [L, NCOL]: the level table
    S, T,             # level 0's S and T: bases of every level's S and T
    f32,              # float32 workspace: run pixel counts, partial rows; base of chan
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads S and T of a run of blocks; writes its pixel count and partial rows."""
    lv, prog, n, blk_lo, blk_hi = program_run(table, L, BLOCKS_PER_PROG, NCOL, LEVELS, BLOCK_HW)
    run_blocks(pkd_stats_run, lv, prog, n, blk_lo, blk_hi, S, T, None, f32,
               LAYOUT, ALIGN, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def pkd_stats_run(lv, prog, n, blk_lo, blk_hi, S, T, OUT, f32,
                  LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """The main kernel's work on its run of blocks, blk_lo..blk_hi of image n."""
    C, HW, _ = level_shape(lv)
    n_run = tl.minimum(blk_hi * BLOCK_HW, HW) - blk_lo * BLOCK_HW
    tl.store(f32 + tl.program_id(0), n_run.to(tl.float32))  # the head: a count per run
    part = f32 + tl.load(lv + COL_PART) + prog * PART_ROWS * C
    fold_rows(pkd_block, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, part,
              lv, n, blk_lo, blk_hi, S, T, LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def pkd_block(sum_s, sum_t, m2_s, m2_t, m_st, S, T, unused, inside, n_run, n_block):
    """The run's sums and centred moments of a channel chunk with one block's tiles merged in."""
    sb_s = sum_pixels(S)                    # outside the map S and T are 0
    sb_t = sum_pixels(T)
    u = tl.where(inside, S - per_channel(sb_s / n_block), 0.0)   # centred on the block's means
    v = tl.where(inside, T - per_channel(sb_t / n_block), 0.0)
    return chan_merge_pair(n_run, sum_s, sum_t, m2_s, m2_t, m_st,
                           n_block, sb_s, sb_t, sum_pixels(u * u), sum_pixels(v * v),
                           sum_pixels(u * v))


@triton.jit(do_not_specialize=["L"])
def pkd_stats_combine_kernel(table, f32, L, LEVELS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Reads the pixel counts and partial rows of the runs of a level; writes chan[:, c_block]."""
    lv, c, c_mask, runs = level_channel_block(table, L, NCOL, LEVELS, BLOCK_C)
    C, _, _ = level_shape(lv)
    sum_s = tl.zeros([BLOCK_C], tl.float32)
    sum_t = tl.zeros([BLOCK_C], tl.float32)
    m2_s = tl.zeros([BLOCK_C], tl.float32)
    m2_t = tl.zeros([BLOCK_C], tl.float32)
    m_st = tl.zeros([BLOCK_C], tl.float32)
    count = 0.0
    counts = f32 + tl.load(lv + COL_PROG0)
    part = f32 + tl.load(lv + COL_PART)
    for j in range(0, runs):  # the level's runs, image by image, in order
        run = part + j * PART_ROWS * C
        n_b = tl.load(counts + j)
        sum_s, sum_t, m2_s, m2_t, m_st = chan_merge_pair(
            count, sum_s, sum_t, m2_s, m2_t, m_st,
            n_b, partial_row(run, SUM_S, c, c_mask, C), partial_row(run, SUM_T, c, c_mask, C),
            partial_row(run, M2_S, c, c_mask, C), partial_row(run, M2_T, c, c_mask, C),
            partial_row(run, M_ST, c, c_mask, C))
        count += n_b
    chan = f32 + tl.load(lv + COL_CHAN) + c
    tl.store(chan + MEAN_S * C, sum_s / count, mask=c_mask)
    tl.store(chan + MEAN_T * C, sum_t / count, mask=c_mask)
    tl.store(chan + M2_S * C, m2_s, mask=c_mask)
    tl.store(chan + M2_T * C, m2_t, mask=c_mask)
    tl.store(chan + M_ST * C, m_st, mask=c_mask)


def _launch(S, T, programs):
    """chan of levels of one dtype."""
    run = Launch(S, T, [], programs)
    chan = [s.new_empty((len(PKD_CHAN), s.shape[1]), dtype=torch.float32) for s in S]
    ws, part0 = run.workspace(PART_ROWS.value, head=run.programs)
    extra = [[offset(ch, ws)] for ch in chan]
    comb_counts = level_channel_blocks(S)
    table = run.table(NCOL.value, comb_counts, part0, extra)
    run.main(pkd_stats_fwd_kernel, table, [S[0], T[0]], ws)
    run.combine(pkd_stats_combine_kernel, table, ws, comb_counts)
    return (chan,)


@host_copy_if_interpreted
def pkd_stats(S: list[Tensor], T: list[Tensor], *, programs: Optional[int] = None) -> list[Tensor]:
    """[chan_0..chan_{L-1}] of channel_passes.pkd_stats.

    programs: about how many main-kernel programs to use (default: PROGRAMS_PER_SM per SM).
    """
    check_features(S, T)
    return per_dtype(_launch, S, [S, T], programs)


@triton.jit
def pkd_sigmas(row0, C, mask, p0):
    """Items' m2_s, m2_t, m_st, r_s = sqrt(m2_s / (M - 1)) and sigma = r + EPS of S and T
    (p0 = M - 1; lanes past the items read m2 = 1, not a 0 to divide by)."""
    m2_s = tl.load(row0 + M2_S * C, mask=mask, other=1.0)
    m2_t = tl.load(row0 + M2_T * C, mask=mask, other=1.0)
    r_s = tl.sqrt(m2_s / p0)
    sig_t = tl.sqrt(m2_t / p0) + EPS
    return m2_s, m2_t, tl.load(row0 + M_ST * C, mask=mask, other=0.0), r_s, r_s + EPS, sig_t


@triton.jit
def pkd_level_body(row0, aux0, C, mask, p0, p1):
    """Items' f = m2_s / sigma_s^2 + m2_t / sigma_t^2 - 2 m_st / (sigma_s sigma_t): their sum
    times p1 = 1 / (2 M C) is the level's loss."""
    m2_s, m2_t, m_st, _, sig_s, sig_t = pkd_sigmas(row0, C, mask, p0)
    return m2_s / (sig_s * sig_s) + m2_t / (sig_t * sig_t) - 2 * m_st / (sig_s * sig_t)


@host_copy_if_interpreted
def pkd_levels(chan: list[Tensor], pixels: list[int]) -> Tensor:
    """(L,) of channel_passes.pkd_levels: one launch (level_math.level_sums)."""
    return level_sums(pkd_level_body, CHAN_ROWS.value, chan,
                      [(M - 1.0, 1.0 / (2 * M * ch.shape[1])) for ch, M in zip(chan, pixels)])
