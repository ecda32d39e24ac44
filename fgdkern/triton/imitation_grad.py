"""Triton kernel of the imitation gradient pass (contract:
fgdkern.reference.imitation_passes.imitation_grad), shared by FKD and PFI.

Reads X, Y (any strides, float32/16 or bfloat16; Y may be X itself) and the
float32 coefficient tables pix_coef (N, 3, HW) and chan_coef (N, 3, C) of
every level, rows named in fgdkern.rows (IMIT_PIX_COEF: a, b, s;
IMIT_CHAN_COEF: w, b, s); writes dX (shape, dtype and strides of X, as
torch.empty_like gives them), per image, channel c and pixel ij:
    dX = a[ij] w[c] (X - Y) + b[ij] + b[c] + sign(X) (s[ij] + s[c]),  sign(0) = 0
computed in float32 and rounded once to X's dtype.

One launch over every level (levels.py: the level table holds X in the S
columns, Y in the T columns and dX in columns of its own, from level 0's dX;
tile shapes as tiles.tile_shape gives them). The pass is elementwise, a body on
sweeps.sweep_blocks: a program takes a run of pixel blocks and, per block,
reads the pixel coefficients once and then goes over the channel chunks of
the block, reading X and Y and writing dX once. No sums, so no workspace and no combine kernel: the float32 base of
the level table's offsets is level 0's pix_coef.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import IMIT_CHAN_COEF, IMIT_PIX_COEF
from fgdkern.triton.levels import (
    RUNTIME_INTS, run_blocks,
    VIEW_COLS, Launch, check_features, extra_columns, float32_levels,
    host_copy_if_interpreted, level_shape, offset, per_dtype, program_run, row_indices, view)
from fgdkern.triton.sweeps import sweep_blocks
from fgdkern.triton.tiles import channel_row, pixel_row, sign

# Rows of pix_coef and chan_coef (fgdkern.rows).
PA, PB, PS, PIX_COEF_ROWS = row_indices(IMIT_PIX_COEF, "a", "b", "s")
CW, CB, CS, CHAN_COEF_ROWS = row_indices(IMIT_CHAN_COEF, "w", "b", "s")

# Columns of the level table after the common ones: element offsets of pix_coef and
# chan_coef from level 0's pix_coef, then the view of dX from level 0's dX.
COL_PC, COL_CC, COL_DX = extra_columns(3)
NCOL = tl.constexpr(COL_DX.value + VIEW_COLS)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def imitation_grad_bwd_kernel(
    table,            # int64 [L, NCOL]: the level table
    X, Y, dX,         # level 0's X, Y, dX: bases of every level's
    f32,              # level 0's pix_coef: base of every pix_coef and chan_coef
    L,                # number of levels
    BLOCKS_PER_PROG,  # pixel blocks per program (per run)
    LEVELS: tl.constexpr, LAYOUT: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr,
):
    """Reads X, Y and the coefficients of a run of blocks; writes their dX."""
    lv, prog, n, blk_lo, blk_hi = program_run(table, L, BLOCKS_PER_PROG, NCOL, LEVELS, BLOCK_HW)
    run_blocks(imitation_grad_run, lv, prog, n, blk_lo, blk_hi, X, Y, dX, f32,
               LAYOUT, ALIGN, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def imitation_grad_run(lv, prog, n, blk_lo, blk_hi, X, Y, dX, f32,
                       LAYOUT: tl.constexpr, ALIGN: tl.constexpr, STAGES: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """The main kernel's work on its run of blocks, blk_lo..blk_hi of image n: no sums."""
    C, _, _ = level_shape(lv)
    cc = f32 + tl.load(lv + COL_CC) + n * CHAN_COEF_ROWS * C
    sweep_blocks(None, 0, imitation_grad_pixel, imitation_grad_element, None, 0, -1, -1, None,
                 cc, lv, n, blk_lo, blk_hi, X, Y, dX, lv + COL_DX, f32,
                 LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def imitation_grad_pixel(lv, n, f32, C, HW, p, p_mask, u0, u1, u2, u3, keep, n_run, n_block):
    """The block's pixel coefficients a, b, s."""
    pc = f32 + tl.load(lv + COL_PC) + n * PIX_COEF_ROWS * HW
    return (pixel_row(pc + PA * HW, p, p_mask), pixel_row(pc + PB * HW, p, p_mask),
            pixel_row(pc + PS * HW, p, p_mask), 0.0, 0.0, 0.0, 1.0)


@triton.jit
def imitation_grad_element(x, y, a_p, b_p, s_p, q3, q4, q5, cc, C, c, c_mask, inside, n_block):
    """dX of a tile."""
    w_c = channel_row(cc + CW * C, c, c_mask)                 # [1, BLOCK_C, 1]
    b_c = channel_row(cc + CB * C, c, c_mask)
    s_c = channel_row(cc + CS * C, c, c_mask)
    grad = a_p * w_c * (x - y) + b_p + b_c + sign(x) * (s_p + s_c)
    return grad, 0.0, 0.0, 0.0, 0.0


def _launch(X, Y, pix_coef, chan_coef, programs):
    """dX of levels of one dtype."""
    dX = [torch.empty_like(x) for x in X]
    run = Launch(X, Y, [dX], programs)
    base = pix_coef[0]
    extra = [[offset(pc, base), offset(cc, base), *view(dx, dX[0])]
             for pc, cc, dx in zip(pix_coef, chan_coef, dX)]
    table = run.table(NCOL.value, [0] * len(X), [0] * len(X), extra)
    run.main(imitation_grad_bwd_kernel, table, [X[0], Y[0], dX[0]], base)
    return (dX,)


@host_copy_if_interpreted
def imitation_grad(X: list[Tensor], Y: list[Tensor], pix_coef: list[Tensor],
                   chan_coef: list[Tensor], *, programs: Optional[int] = None) -> list[Tensor]:
    """[dX_0..dX_{L-1}] of imitation_passes.imitation_grad (programs: as in imitation_stats)."""
    check_features(X, Y, names=("X", "Y"))
    device = X[0].device
    pix_coef = float32_levels(
        "pix_coef", pix_coef, [(x.shape[0], len(IMIT_PIX_COEF), x.shape[2] * x.shape[3])
                               for x in X], device, maps="X")
    chan_coef = float32_levels(
        "chan_coef", chan_coef, [(x.shape[0], len(IMIT_CHAN_COEF), x.shape[1]) for x in X],
        device, maps="X")
    return per_dtype(_launch, X, [X, Y, pix_coef, chan_coef], programs)
