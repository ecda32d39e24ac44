"""FKD's small math on the GPU (the code variant): the terms of every level in one launch
(contract: fgdkern.reference.fkd_small_math.terms; docs/fkd.md, "The code variant").

Reads per level the imitation statistics pix_t (N, 3, HW), chan_t (N, 2, Ct) of
the pair X = T, Y = f(S) and pix_s, chan_s (N, 2, Cs) of X = S, and the channel
and spatial mimic layers; writes the (L, 3) table of unweighted terms L_feat,
L_ch, L_sp. A program per level walks its images in order (so the sums are the
same bit for bit from run to run): the masks' softmaxes over the image's
pixels, the 3x3 spatial mimic on the mean over channels, the Linear channel
mimic on the mean over pixels. Its backward is fkd_terms_grad.py.

Every float32 tensor is addressed by its element offset from one base (level 0's
pix_t), so the levels' tables and parameters may live anywhere.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import FKD_MIMIC, IMIT_CHAN, IMIT_PIX
from fgdkern.triton.levels import (
    device_values, host_copy_if_interpreted, offset, on_device, positive_levels, row_indices)
from fgdkern.triton.merges import softmax_at, softmax_stats

ABS_X, SUM_X, SQ_D, PIX_ROWS = row_indices(IMIT_PIX, "abs_x", "sum_x", "sq_d")
CHAN_SUM_X, CHAN_ROWS = row_indices(IMIT_CHAN, "sum_x")
# Columns of the level table: sizes, the element offsets of the forward's inputs (the four
# tables, the four mimic parameters), then of what only the backward writes (the
# coefficient tables of f(S) and S, the parameters' gradients, a scratch row per image);
# the forward's table leaves those zero.
(COL_N, COL_CT, COL_CS, COL_HW, COL_W, COL_PIX_T, COL_PIX_S, COL_CHAN_T, COL_CHAN_S,
 COL_MIMIC, COL_PIXC_F, COL_PIXC_S, COL_CHANC_S, COL_GMIMIC, COL_SCRATCH) = (
    tl.constexpr(k) for k in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 20))
NCOL = tl.constexpr(21)
W_CH, B_CH, W_SP, B_SP = (tl.constexpr(k) for k in range(4))  # within the mimic columns
BLOCK = 128     # pixels per step of a sweep
BLOCK_J = 16    # rows (teacher channels) of a channel-mimic weight tile
BLOCK_I = 128   # columns (student channels) of a weight tile
NUM_WARPS = 4


@triton.jit
def param(base, lv, col, which):
    """The address of one mimic parameter (W_CH .. B_SP) or of its gradient (col)."""
    return base + tl.load(lv + col + which)


@triton.jit
def spatial_diff(base, lv, t_sum, s_sum, y, x, ok, H, W, Ct, Cs):
    """mean_c T - spatial_adaptation(mean_c S) at pixels (y, x) where ok, else 0: the 3x3
    conv with padding 1 (cross-correlation, as Conv2d) on the means over channels."""
    w = param(base, lv, COL_MIMIC, W_SP)
    pred = tl.load(param(base, lv, COL_MIMIC, B_SP)) + tl.zeros(y.shape, tl.float32)
    for k in tl.static_range(9):
        yy, xx = y + (k // 3 - 1), x + (k % 3 - 1)
        inside = ok & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        pred += tl.load(w + k) * (tl.load(s_sum + yy * W + xx, mask=inside, other=0.0) / Cs)
    return tl.where(ok, tl.load(t_sum + y * W + x, mask=ok, other=0.0) / Ct - pred, 0.0)


@triton.jit
def channel_diff(base, lv, t_mean, s_mean, j, jn, Cs, HW, BLOCK_I: tl.constexpr):
    """mean_ij T - channel_adaptation(mean_ij S) at teacher channels j where jn, else 0:
    the Linear Cs -> Ct on the means over pixels (t_mean, s_mean: the sum_x rows)."""
    w = param(base, lv, COL_MIMIC, W_CH)
    pred = tl.zeros(j.shape, tl.float32)
    for i0 in range(0, Cs, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        tile = tl.load(w + j[:, None] * Cs + i[None, :], mask=jn[:, None] & (i < Cs)[None, :],
                       other=0.0)
        pred += tl.sum(tile * (tl.load(s_mean + i, mask=i < Cs, other=0.0) / HW)[None, :], 1)
    pred += tl.load(param(base, lv, COL_MIMIC, B_CH) + j, mask=jn, other=0.0)
    return tl.where(jn, tl.load(t_mean + j, mask=jn, other=0.0) / HW - pred, 0.0)


@triton.jit
def level_sizes(lv):
    """N, Ct, Cs (float32), HW, W, H of a level."""
    HW, W = tl.load(lv + COL_HW), tl.load(lv + COL_W)
    return (tl.load(lv + COL_N), tl.load(lv + COL_CT).to(tl.float32),
            tl.load(lv + COL_CS).to(tl.float32), HW, W, HW // W)


@triton.jit
def image_tables(base, lv, n, HW):
    """Image n's pix_t, pix_s and the sum_x rows of its chan_t, chan_s."""
    Ct, Cs = tl.load(lv + COL_CT), tl.load(lv + COL_CS)
    return (base + tl.load(lv + COL_PIX_T) + n * PIX_ROWS * HW,
            base + tl.load(lv + COL_PIX_S) + n * PIX_ROWS * HW,
            base + tl.load(lv + COL_CHAN_T) + n * CHAN_ROWS * Ct + CHAN_SUM_X * Ct,
            base + tl.load(lv + COL_CHAN_S) + n * CHAN_ROWS * Cs + CHAN_SUM_X * Cs)


@triton.jit
def mask_at(pt, ps, p, pn, HW, scale_t, scale_s, mt, zt, ms, zs):
    """M = (A_S(T) + A_S(S)) / 2 at pixels p, float64 (A_S: HW times the softmax)."""
    return (HW / 2) * (softmax_at(pt + ABS_X * HW, p, pn, scale_t, mt, zt)
                       + softmax_at(ps + ABS_X * HW, p, pn, scale_s, ms, zs))


@triton.jit
def safe_sqrt(x):
    return tl.where(x > 0, tl.sqrt(tl.maximum(x, 0.0)), 0.0)


@triton.jit
def fkd_terms_kernel(table, base, temps, out, BLOCK: tl.constexpr, BLOCK_J: tl.constexpr,
                     BLOCK_I: tl.constexpr):
    """Reads one level's tables and mimic parameters; writes its row of out (L, 3)."""
    l = tl.program_id(0)
    lv = table + l * NCOL
    N, Ct, Cs, HW, W, H = level_sizes(lv)
    temp = tl.load(temps + l)
    scale_t, scale_s = 1.0 / (Ct * temp), 1.0 / (Cs * temp)
    feat = tl.zeros([], tl.float64)
    ch = tl.zeros([], tl.float64)
    sp = tl.zeros([], tl.float64)
    for n in range(N):
        pt, ps, t_mean, s_mean = image_tables(base, lv, n, HW)
        # L_feat: sq_d weighted by the mask; L_sp: the spatial mimic
        mt, zt = softmax_stats(pt + ABS_X * HW, HW, scale_t, BLOCK)
        ms, zs = softmax_stats(ps + ABS_X * HW, HW, scale_s, BLOCK)
        for p0 in range(0, HW, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            pn = p < HW
            M = mask_at(pt, ps, p, pn, HW, scale_t, scale_s, mt, zt, ms, zs)
            feat += tl.sum(M * tl.load(pt + SQ_D * HW + p, mask=pn, other=0.0), 0)
            d = spatial_diff(base, lv, pt + SUM_X * HW, ps + SUM_X * HW, p // W, p % W, pn,
                             H, W, Ct, Cs)
            sp += tl.sum(d * d, 0)
        # L_ch: the channel mimic
        for j0 in range(0, tl.load(lv + COL_CT), BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            d = channel_diff(base, lv, t_mean, s_mean, j, j < Ct, tl.load(lv + COL_CS), HW,
                             BLOCK_I)
            ch += tl.sum(d * d, 0)
    tl.store(out + l * 3, safe_sqrt(feat).to(tl.float32))
    tl.store(out + l * 3 + 1, safe_sqrt(ch).to(tl.float32))
    tl.store(out + l * 3 + 2, safe_sqrt(sp).to(tl.float32))


# ------------------------------------------------------------------ launches
def check_levels(pix_t: list[Tensor], pix_s: list[Tensor], chan_t: list[Tensor],
                 chan_s: list[Tensor], mimic: list[Tensor], widths: list[int]) -> None:
    """The tables: contiguous float32 on one device, shaped as the imitation pass returns
    them for maps of N images, HW = H * widths[l] pixels; mimic: 4 float32 contiguous
    parameters per level (FKD_MIMIC)."""
    L = len(pix_t)
    if L == 0 or not len(pix_s) == len(chan_t) == len(chan_s) == len(widths) == L:
        raise ValueError("pix_t, pix_s, chan_t, chan_s and widths must hold one entry per "
                         f"level, got {len(pix_t)}, {len(pix_s)}, {len(chan_t)}, "
                         f"{len(chan_s)}, {len(widths)}")
    if len(mimic) != len(FKD_MIMIC) * L:
        raise ValueError(f"mimic must hold {len(FKD_MIMIC)} parameters per level, got "
                         f"{len(mimic)}")
    device, N = pix_t[0].device, pix_t[0].shape[0]
    for k in range(L):
        HW, Ct, Cs = pix_t[k].shape[-1], chan_t[k].shape[-1], chan_s[k].shape[-1]
        if not (isinstance(widths[k], int) and widths[k] >= 1 and HW % widths[k] == 0):
            raise ValueError(f"widths[{k}] must be an int dividing the {HW} pixels, got "
                             f"{widths[k]!r}")
        for name, x, shape in ((f"pix_t[{k}]", pix_t[k], (N, len(IMIT_PIX), HW)),
                               (f"pix_s[{k}]", pix_s[k], (N, len(IMIT_PIX), HW)),
                               (f"chan_t[{k}]", chan_t[k], (N, len(IMIT_CHAN), Ct)),
                               (f"chan_s[{k}]", chan_s[k], (N, len(IMIT_CHAN), Cs))):
            if (x.dtype != torch.float32 or tuple(x.shape) != shape or not x.is_contiguous()
                    or x.device != device):
                raise ValueError(f"{name} must be a contiguous float32 {shape} table on "
                                 f"{device}, got {x.dtype} {tuple(x.shape)} on {x.device}")
        shapes = ((Ct, Cs), (Ct,), (1, 1, 3, 3), (1,))
        for name, p, shape in zip(FKD_MIMIC, mimic[4 * k:4 * k + 4], shapes):
            if (p.dtype != torch.float32 or tuple(p.shape) != shape or not p.is_contiguous()
                    or p.device != device):
                raise ValueError(f"{name} of level {k} must be contiguous float32 of shape "
                                 f"{shape} on {device}, got {p.dtype} {tuple(p.shape)}")


def level_table(pix_t, pix_s, chan_t, chan_s, mimic, widths, grad=None) -> Tensor:
    """The int64 level table; grad: per level the backward's pix_coef of f(S) and of S,
    chan_coef of S, the 4 parameter gradients and the scratch rows, or None."""
    base, rows = pix_t[0], []
    for l, tables in enumerate(zip(pix_t, pix_s, chan_t, chan_s)):
        ins = [*tables, *mimic[4 * l:4 * l + 4], *(grad[l] if grad else [])]
        row = [tables[0].shape[0], tables[2].shape[2], tables[3].shape[2], tables[0].shape[2],
               widths[l], *(offset(x, base) for x in ins)]
        rows.append(row + [0] * (NCOL.value - len(row)))
    return device_values(rows, torch.int64, base.device)


@host_copy_if_interpreted
def fkd_terms(pix_t: list[Tensor], pix_s: list[Tensor], chan_t: list[Tensor],
              chan_s: list[Tensor], mimic: list[Tensor], widths: list[int],
              temps: list[float]) -> list[Tensor]:
    """[table]: the (L, 3) float32 terms (the contract's table)."""
    check_levels(pix_t, pix_s, chan_t, chan_s, mimic, widths)
    temps = positive_levels("temps", temps, len(pix_t))
    out = pix_t[0].new_empty((len(pix_t), 3))
    with on_device(out.device):
        fkd_terms_kernel[(len(pix_t),)](
            level_table(pix_t, pix_s, chan_t, chan_s, mimic, widths), pix_t[0],
            device_values(temps, torch.float32, out.device), out, BLOCK=BLOCK,
            BLOCK_J=BLOCK_J, BLOCK_I=BLOCK_I, num_warps=NUM_WARPS)
    return [out]
