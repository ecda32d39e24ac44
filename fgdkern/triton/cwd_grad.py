"""Triton kernel of the CWD gradient pass (contract: fgdkern.reference.channel_passes.cwd_grad).

Reads S, T (any strides, float32/16 or bfloat16), 1 / tau and the float32
coefficient table coef (N, 3, C) of every level, rows named in fgdkern.rows
(CWD_COEF: lse_s, lse_t, k); writes dS (shape, dtype and strides of S, as
torch.empty_like gives them), per image n, channel c and pixel i:
    dS = k (p_s - p_t),  p_s = exp(S / tau - lse_s),  p_t = exp(T / tau - lse_t)
(the gradient of KL(p_t || p_s) of Shu et al., ICCV 2021, eq. 4, with 1 / tau
folded into k), computed in float32 and rounded once to S's dtype.

One launch over every level (levels.py: dS in columns of its own, from level
0's dS); the pass is elementwise (sweeps.map_blocks), so there is no workspace
and no combine kernel: the float32 base of the level table's offsets is 1 / tau.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import CWD_CHAN, CWD_COEF
from fgdkern.triton.level_math import map_items
from fgdkern.triton.levels import (
    RUNTIME_INTS, VIEW_COLS, Launch, check_features, device_values, extra_columns,
    float32_levels, host_copy_if_interpreted, level_shape, offset, per_dtype, positive_levels,
    program_run, row_indices, run_blocks, view)
from fgdkern.triton.sweeps import map_blocks
from fgdkern.triton.tiles import channel_row

LSE_S, LSE_T, K, COEF_ROWS = row_indices(CWD_COEF, "lse_s", "lse_t", "k")
CHAN_LSE_S, CHAN_LSE_T, CHAN_ROWS = row_indices(CWD_CHAN, "lse_s", "lse_t")

# Columns of the level table after the common ones: element offsets of coef and 1 / tau
# from the float32 base, then the view of dS from level 0's dS.
COL_COEF, COL_INV_TAU, COL_DS = extra_columns(3)
NCOL = tl.constexpr(COL_DS.value + VIEW_COLS)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def cwd_grad_bwd_kernel(
    table,            # int64 [L, NCOL]: the level table
    S, T, dS,         # level 0's S, T, dS: bases of every level's
    f32,              # 1 / tau of every level: base of them and of every coef
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads S, T, 1 / tau and coef of a run of blocks; writes their dS."""
    lv, prog, n, blk_lo, blk_hi = program_run(table, L, BLOCKS_PER_PROG, NCOL, LEVELS, BLOCK_HW)
    run_blocks(cwd_grad_run, lv, prog, n, blk_lo, blk_hi, S, T, dS, f32,
               LAYOUT, ALIGN, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def cwd_grad_run(lv, prog, n, blk_lo, blk_hi, S, T, dS, f32,
                 LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """The main kernel's work on its run of blocks, blk_lo..blk_hi of image n."""
    C, _, _ = level_shape(lv)
    inv_tau = tl.load(f32 + tl.load(lv + COL_INV_TAU))
    coef = f32 + tl.load(lv + COL_COEF) + n * COEF_ROWS * C
    map_blocks(cwd_grad_tile, inv_tau, coef, lv, n, blk_lo, blk_hi, S, T, dS, lv + COL_DS,
               LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def cwd_grad_tile(S, T, inv_tau, coef, c, c_mask, C):
    """dS = k (p_s - p_t) of a tile of S and T of image n (coef: its rows)."""
    p_s = tl.exp(S * inv_tau - channel_row(coef + LSE_S * C, c, c_mask))
    p_t = tl.exp(T * inv_tau - channel_row(coef + LSE_T * C, c, c_mask))
    return channel_row(coef + K * C, c, c_mask) * (p_s - p_t)


def _launch(S, T, coef, inv_tau, programs):
    """dS of levels of one dtype."""
    dS = [torch.empty_like(s) for s in S]
    run = Launch(S, T, [dS], programs)
    base = device_values(inv_tau, torch.float32, S[0].device)
    extra = [[offset(co, base), k, *view(ds, dS[0])] for k, (co, ds) in enumerate(zip(coef, dS))]
    table = run.table(NCOL.value, [0] * len(S), [0] * len(S), extra)
    run.main(cwd_grad_bwd_kernel, table, [S[0], T[0], dS[0]], base)
    return (dS,)


@host_copy_if_interpreted
def cwd_grad(S: list[Tensor], T: list[Tensor], coef: list[Tensor], inv_tau: list[float], *,
             programs: Optional[int] = None) -> list[Tensor]:
    """[dS_0..dS_{L-1}] of channel_passes.cwd_grad (programs: as in cwd_stats)."""
    check_features(S, T)
    coef = float32_levels("coef", coef, [(s.shape[0], len(CWD_COEF), s.shape[1]) for s in S],
                          S[0].device)
    inv_tau = positive_levels("inv_tau", inv_tau, len(S))
    return per_dtype(_launch, S, [S, T, coef, inv_tau], programs)


@triton.jit
def cwd_coef_body(row0, aux0, out0, C, mask, g, p0, p1):
    """Items' coef: their lse_s and lse_t, and k = g tau / (N C) (p1 = tau / (N C))."""
    lse_s = tl.load(row0 + CHAN_LSE_S * C, mask=mask)
    tl.store(out0 + LSE_S * C, lse_s, mask=mask)
    tl.store(out0 + LSE_T * C, tl.load(row0 + CHAN_LSE_T * C, mask=mask), mask=mask)
    tl.store(out0 + K * C, tl.zeros_like(lse_s) + g * p1, mask=mask)


@host_copy_if_interpreted
def cwd_coef(chan: list[Tensor], dlevels: Tensor, inv_tau: list[float]) -> list[Tensor]:
    """[coef_l] of channel_passes.cwd_coef: one launch (level_math.map_items)."""
    inv_tau = positive_levels("inv_tau", inv_tau, len(chan))
    return map_items(cwd_coef_body, CHAN_ROWS.value, COEF_ROWS.value, chan, dlevels,
                     [(0.0, 1.0 / (it * ch.shape[0] * ch.shape[2]))
                      for ch, it in zip(chan, inv_tau)])
