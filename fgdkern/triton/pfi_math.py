"""PFI's small math on the GPU (contract: fgdkern.reference.imitation_passes, pfi_levels and
pfi_coef; docs/pfi.md, eqs. (7)-(9)): bodies on level_math.

Reads per level the pixel tables of the features' pair (chan) and of the
probabilities' (aux), float32 (N, 3, HW), rows fgdkern.rows.IMIT_PIX; an item
is one (image, pixel). With v = sq_d_F * sq_d_P / (C K) (p0 = 1 / (C K)):
    pfi_levels: sum of v^2 over the items, times p1 = 1 / (N HW);
    pfi_coef:   the features' dX coefficients a = 4 g p1 v sq_d_P p0, b = s = 0
                (rows IMIT_PIX_COEF).
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import IMIT_PIX, IMIT_PIX_COEF
from fgdkern.triton.level_math import level_sums, map_items
from fgdkern.triton.levels import host_copy_if_interpreted, row_indices

SQ_D, PIX_ROWS = row_indices(IMIT_PIX, "sq_d")
COEF_A, COEF_B, COEF_S, COEF_ROWS = row_indices(IMIT_PIX_COEF, "a", "b", "s")


@triton.jit
def pfi_v(row0, aux0, C, mask, p0):
    """Items' v = sq_d_F * sq_d_P / (C K), and sq_d_P."""
    sq_p = tl.load(aux0 + SQ_D * C, mask=mask, other=0.0)
    return tl.load(row0 + SQ_D * C, mask=mask, other=0.0) * sq_p * p0, sq_p


@triton.jit
def pfi_level_body(row0, aux0, C, mask, p0, p1):
    """Items' v^2: their sum times p1 = 1 / (N HW) is the level's loss, eq. (9)."""
    v, _ = pfi_v(row0, aux0, C, mask, p0)
    return v * v


@triton.jit
def pfi_coef_body(row0, aux0, out0, C, mask, g, p0, p1):
    """Items' coefficients of dF_s: a = 2 d level / d sq_d_F = 4 g p1 v sq_d_P p0, b = s = 0."""
    v, sq_p = pfi_v(row0, aux0, C, mask, p0)
    a = 4 * g * p1 * v * sq_p * p0
    tl.store(out0 + COEF_A * C, a, mask=mask)
    tl.store(out0 + COEF_B * C, tl.zeros_like(a), mask=mask)
    tl.store(out0 + COEF_S * C, tl.zeros_like(a), mask=mask)


def _params(pix: list[Tensor], widths: list[int]) -> list[tuple[float, float]]:
    return [(1.0 / ck, 1.0 / (p.shape[0] * p.shape[2])) for p, ck in zip(pix, widths)]


@host_copy_if_interpreted
def pfi_levels(pix: list[Tensor], widths: list[int]) -> Tensor:
    """(L,) of imitation_passes.pfi_levels: one launch (level_math.level_sums)."""
    L = len(widths)
    return level_sums(pfi_level_body, PIX_ROWS.value, pix[:L], _params(pix, widths), pix[L:])


@host_copy_if_interpreted
def pfi_coef(pix: list[Tensor], dlevels: Tensor, widths: list[int]) -> list[Tensor]:
    """[pix_coef_l] of imitation_passes.pfi_coef: one launch (level_math.map_items)."""
    L = len(widths)
    return map_items(pfi_coef_body, PIX_ROWS.value, COEF_ROWS.value, pix[:L], dlevels,
                     _params(pix, widths), pix[L:])
