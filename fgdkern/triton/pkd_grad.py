"""Triton kernel of the PKD gradient pass (contract: fgdkern.reference.channel_passes.pkd_grad).

Reads S, T (any strides, float32/16 or bfloat16) and the float32 coefficient
table coef (4, C) of every level, rows named in fgdkern.rows (PKD_COEF: a,
mean_s, b, mean_t); writes dS (shape, dtype and strides of S, as
torch.empty_like gives them), per channel c, image and pixel:
    dS = a (S - mean_s) + b (T - mean_t)
(the gradient of the loss of Cao et al., NeurIPS 2022, eq. 2, through the centred
moments m2_s and m_st: fgdkern/ops/pkd.py), computed in float32 and rounded once
to S's dtype.

One launch over every level (levels.py: dS in columns of its own, from level
0's dS); the pass is elementwise (sweeps.map_blocks), so there is no workspace
and no combine kernel: the float32 base of the level table's offsets is level
0's coef.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import PKD_COEF
from fgdkern.triton.level_math import map_items
from fgdkern.triton.pkd_stats import CHAN_ROWS, pkd_sigmas
from fgdkern.triton.pkd_stats import MEAN_S as CHAN_MEAN_S, MEAN_T as CHAN_MEAN_T
from fgdkern.triton.levels import (
    RUNTIME_INTS, VIEW_COLS, Launch, check_features, extra_columns, float32_levels,
    host_copy_if_interpreted, offset, per_dtype, program_run, row_indices, run_blocks, view)
from fgdkern.triton.sweeps import map_blocks
from fgdkern.triton.tiles import channel_row

A, MEAN_S, B, MEAN_T, COEF_ROWS = row_indices(PKD_COEF, "a", "mean_s", "b", "mean_t")

# Columns of the level table after the common ones: element offset of coef from level
# 0's, then the view of dS from level 0's dS.
COL_COEF, COL_DS = extra_columns(2)
NCOL = tl.constexpr(COL_DS.value + VIEW_COLS)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def pkd_grad_bwd_kernel(
    table,            # int64 [L, NCOL]: the level table
    S, T, dS,         # level 0's S, T, dS: bases of every level's
    f32,              # level 0's coef: base of every coef
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads S, T and coef of a run of blocks; writes their dS."""
    lv, prog, n, blk_lo, blk_hi = program_run(table, L, BLOCKS_PER_PROG, NCOL, LEVELS, BLOCK_HW)
    run_blocks(pkd_grad_run, lv, prog, n, blk_lo, blk_hi, S, T, dS, f32,
               LAYOUT, ALIGN, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def pkd_grad_run(lv, prog, n, blk_lo, blk_hi, S, T, dS, f32,
                 LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """The main kernel's work on its run of blocks, blk_lo..blk_hi of image n."""
    coef = f32 + tl.load(lv + COL_COEF)
    map_blocks(pkd_grad_tile, 1.0, coef, lv, n, blk_lo, blk_hi, S, T, dS, lv + COL_DS,
               LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def pkd_grad_tile(S, T, unused, coef, c, c_mask, C):
    """dS = a (S - mean_s) + b (T - mean_t) of a tile of S and T (coef: the level's rows)."""
    u = S - channel_row(coef + MEAN_S * C, c, c_mask)
    v = T - channel_row(coef + MEAN_T * C, c, c_mask)
    return channel_row(coef + A * C, c, c_mask) * u + channel_row(coef + B * C, c, c_mask) * v


def _launch(S, T, coef, programs):
    """dS of levels of one dtype."""
    dS = [torch.empty_like(s) for s in S]
    run = Launch(S, T, [dS], programs)
    base = coef[0]
    extra = [[offset(co, base), *view(ds, dS[0])] for co, ds in zip(coef, dS)]
    table = run.table(NCOL.value, [0] * len(S), [0] * len(S), extra)
    run.main(pkd_grad_bwd_kernel, table, [S[0], T[0], dS[0]], base)
    return (dS,)


@host_copy_if_interpreted
def pkd_grad(S: list[Tensor], T: list[Tensor], coef: list[Tensor], *,
             programs: Optional[int] = None) -> list[Tensor]:
    """[dS_0..dS_{L-1}] of channel_passes.pkd_grad (programs: as in pkd_stats)."""
    check_features(S, T)
    coef = float32_levels("coef", coef, [(len(PKD_COEF), s.shape[1]) for s in S], S[0].device)
    return per_dtype(_launch, S, [S, T, coef], programs)


@triton.jit
def pkd_coef_body(row0, aux0, out0, C, mask, g, p0, p1):
    """Items' coef: a = 2 g / (2 M C) df/dm2_s (sigma_s's share through
    dr_s / dm2_s = 1 / (2 (M - 1) r_s)), b = g / (2 M C) df/dm_st and the means
    (p0 = M - 1, p1 = 1 / (2 M C))."""
    m2_s, _, m_st, r_s, sig_s, sig_t = pkd_sigmas(row0, C, mask, p0)
    df_dsig_s = 2 * (m_st / (sig_s * sig_t) - m2_s / (sig_s * sig_s)) / sig_s
    df_dm2_s = 1 / (sig_s * sig_s) + df_dsig_s * 0.5 / (p0 * r_s)
    scale = g * p1
    tl.store(out0 + A * C, 2 * scale * df_dm2_s, mask=mask)
    tl.store(out0 + B * C, scale * (-2 / (sig_s * sig_t)), mask=mask)
    tl.store(out0 + MEAN_S * C, tl.load(row0 + CHAN_MEAN_S * C, mask=mask), mask=mask)
    tl.store(out0 + MEAN_T * C, tl.load(row0 + CHAN_MEAN_T * C, mask=mask), mask=mask)


@host_copy_if_interpreted
def pkd_coef(chan: list[Tensor], dlevels: Tensor, pixels: list[int]) -> list[Tensor]:
    """[coef_l] of channel_passes.pkd_coef: one launch (level_math.map_items)."""
    return map_items(pkd_coef_body, CHAN_ROWS.value, COEF_ROWS.value, chan, dlevels,
                     [(M - 1.0, 1.0 / (2 * M * ch.shape[1])) for ch, M in zip(chan, pixels)])
