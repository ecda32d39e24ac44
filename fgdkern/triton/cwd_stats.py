"""Triton kernels of the CWD statistics pass (contract:
fgdkern.reference.channel_passes.cwd_stats).

Reads S, T (any strides, float32/16 or bfloat16) and 1 / tau of every level;
writes chan (N, 3, C) float32, rows named in fgdkern.rows (CWD_CHAN): per image
n and channel c, over its pixels i, with s = S / tau and t = T / tau (Shu et
al., ICCV 2021, eq. 3: the channel softmax phi(y_c) = exp(y_ci / tau) / sum_i ..),
    lse_s = log sum_i exp(s_i),  lse_t = log sum_i exp(t_i),
    kl = sum_i p_t,i (t_i - s_i) - lse_t + lse_s = KL(p_t || p_s),  p_t = exp(t - lse_t).

One launch of the main kernel over every level, then one of the combine
kernel; no float atomics, so results are the same bit for bit from run to run.
A main-kernel program sweeps its run of blocks one channel chunk at a time
(sweeps.fold_rows) with the online softmax: per channel the running maxima m_s,
m_t, the sums of exponentials l_s = sum exp(s - m_s), l_t, and the sum
w = sum exp(t - m_t) (t - s), each block's merged in (merges.softmax_merge);
it writes those five as its partial rows. The combine kernel merges the runs
of each image in order by the same rule, then lse = m + log l, kl = w / l_t -
lse_t + lse_s.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import CWD_CHAN
from fgdkern.triton.level_math import level_sums
from fgdkern.triton.levels import (
    RUNTIME_INTS, COL_PART, Launch, check_features, device_values, extra_columns,
    host_copy_if_interpreted, image_channel_block, image_channel_blocks, level_shape, offset,
    per_dtype, positive_levels, program_run, row_indices, run_blocks)
from fgdkern.triton.merges import (
    partial_row, softmax_merge, softmax_merge_weighted, tile_softmax)
from fgdkern.triton.sweeps import fold_rows
from fgdkern.triton.tiles import sum_pixels

LSE_S, LSE_T, KL, CHAN_ROWS = row_indices(CWD_CHAN, "lse_s", "lse_t", "kl")
# A run's partial rows, in the order cwd_block folds them.
M_S, L_S, M_T, L_T, W_T = (tl.constexpr(k) for k in range(5))
PART_ROWS = tl.constexpr(5)

# Columns of the level table after the common ones: element offsets from the workspace.
COL_CHAN, COL_INV_TAU = extra_columns(2)
NCOL = tl.constexpr(COL_INV_TAU.value + 1)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def cwd_stats_fwd_kernel(
    table,            # int64 [L, NCOL]: the level table
    S, T,             # level 0's S and T: bases of every level's S and T
    f32,              # float32 workspace (partial rows): base of 1 / tau and chan
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads S, T and 1 / tau of a run of blocks; writes its partial rows m_s, l_s, m_t, l_t, w."""
    lv, prog, n, blk_lo, blk_hi = program_run(table, L, BLOCKS_PER_PROG, NCOL, LEVELS, BLOCK_HW)
    run_blocks(cwd_stats_run, lv, prog, n, blk_lo, blk_hi, S, T, None, f32,
               LAYOUT, ALIGN, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def cwd_stats_run(lv, prog, n, blk_lo, blk_hi, S, T, OUT, f32,
                  LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """The main kernel's work on its run of blocks, blk_lo..blk_hi of image n."""
    C, _, _ = level_shape(lv)
    inv_tau = tl.load(f32 + tl.load(lv + COL_INV_TAU))
    part = f32 + tl.load(lv + COL_PART) + prog * PART_ROWS * C
    fold_rows(cwd_block, float("-inf"), 0.0, float("-inf"), 0.0, 0.0, inv_tau, part,
              lv, n, blk_lo, blk_hi, S, T, LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def cwd_block(m_s, l_s, m_t, l_t, w, S, T, inv_tau, inside, n_run, n_block):
    """The running softmax sums of a channel chunk with one block's tiles of S and T merged in."""
    s = S * inv_tau
    t = T * inv_tau
    mb_s, e_s = tile_softmax(s, inside)     # block maxima, exp(s - mb_s)
    mb_t, e_t = tile_softmax(t, inside)
    m_s, l_s = softmax_merge(m_s, l_s, mb_s, sum_pixels(e_s))
    m_t, l_t, w = softmax_merge_weighted(m_t, l_t, w, mb_t, sum_pixels(e_t),
                                         sum_pixels(e_t * (t - s)))
    return m_s, l_s, m_t, l_t, w


@triton.jit(do_not_specialize=["L"])
def cwd_stats_combine_kernel(table, f32, L, LEVELS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Reads the partial rows of the runs of an image; writes chan[n, :, c_block]."""
    lv, n, c, c_mask, first, nsplit = image_channel_block(table, L, NCOL, LEVELS, BLOCK_C)
    C, _, _ = level_shape(lv)
    m_s = tl.full([BLOCK_C], float("-inf"), tl.float32)
    m_t = tl.full([BLOCK_C], float("-inf"), tl.float32)
    l_s = tl.zeros([BLOCK_C], tl.float32)
    l_t = tl.zeros([BLOCK_C], tl.float32)
    w = tl.zeros([BLOCK_C], tl.float32)
    runs = f32 + tl.load(lv + COL_PART)
    for j in range(first, first + nsplit):  # the image's runs, in order
        run = runs + j * PART_ROWS * C
        m_s, l_s = softmax_merge(m_s, l_s, partial_row(run, M_S, c, c_mask, C),
                                 partial_row(run, L_S, c, c_mask, C))
        m_t, l_t, w = softmax_merge_weighted(m_t, l_t, w, partial_row(run, M_T, c, c_mask, C),
                                             partial_row(run, L_T, c, c_mask, C),
                                             partial_row(run, W_T, c, c_mask, C))
    l_s = tl.where(c_mask, l_s, 1.0)  # lanes past C: no log(0) (the interpreter warns)
    l_t = tl.where(c_mask, l_t, 1.0)
    lse_s = m_s + tl.log(l_s)
    lse_t = m_t + tl.log(l_t)
    chan = f32 + tl.load(lv + COL_CHAN) + n * CHAN_ROWS * C + c
    tl.store(chan + LSE_S * C, lse_s, mask=c_mask)
    tl.store(chan + LSE_T * C, lse_t, mask=c_mask)
    tl.store(chan + KL * C, w / l_t - lse_t + lse_s, mask=c_mask)


def _launch(S, T, inv_tau, programs):
    """chan of levels of one dtype."""
    run = Launch(S, T, [], programs)
    chan = [s.new_empty((s.shape[0], len(CWD_CHAN), s.shape[1]), dtype=torch.float32) for s in S]
    ws, part0 = run.workspace(PART_ROWS.value)
    inv_tau = device_values(inv_tau, torch.float32, S[0].device)
    extra = [[offset(ch, ws), offset(it, ws)] for ch, it in zip(chan, inv_tau)]
    comb_counts = image_channel_blocks(S)
    table = run.table(NCOL.value, comb_counts, part0, extra)
    run.main(cwd_stats_fwd_kernel, table, [S[0], T[0]], ws)
    run.combine(cwd_stats_combine_kernel, table, ws, comb_counts)
    return (chan,)


@host_copy_if_interpreted
def cwd_stats(S: list[Tensor], T: list[Tensor], inv_tau: list[float], *,
              programs: Optional[int] = None) -> list[Tensor]:
    """[chan_0..chan_{L-1}] of channel_passes.cwd_stats; inv_tau: 1 / tau per level.

    programs: about how many main-kernel programs to use (default: PROGRAMS_PER_SM per SM).
    """
    check_features(S, T)
    inv_tau = positive_levels("inv_tau", inv_tau, len(S))
    return per_dtype(_launch, S, [S, T, inv_tau], programs)


@triton.jit
def cwd_level_body(row0, aux0, C, mask, p0, p1):
    """Items' kl: their sum times p1 = tau^2 / (N C) is the level's loss."""
    return tl.load(row0 + KL * C, mask=mask, other=0.0)


@host_copy_if_interpreted
def cwd_levels(chan: list[Tensor], inv_tau: list[float]) -> Tensor:
    """(L,) of channel_passes.cwd_levels: one launch (level_math.level_sums)."""
    inv_tau = positive_levels("inv_tau", inv_tau, len(chan))
    return level_sums(cwd_level_body, CHAN_ROWS.value, chan,
                      [(0.0, 1.0 / (it * it * ch.shape[0] * ch.shape[2]))
                       for ch, it in zip(chan, inv_tau)])
