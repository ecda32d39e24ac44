"""FKD's small math on the GPU, the paper variant: its masks, terms and their backward, every
level in one launch each (contract: fgdkern.reference.fkd_small_math, paper_masks,
paper_terms, paper_terms_grad; docs/fkd.md, "The paper variant").

Reads per level the imitation statistics of S' and of T (pix (N, 3, HW), chan
(N, 2, C), rows abs_x), and of the pair X = S', Y = T weighted by M_c (pix_d,
row sq_d):
    fkd_paper_masks_kernel       writes M_c = C softmax_c((G_c(S') + G_c(T)) / temp)
    fkd_paper_terms_kernel       writes L_AT (eq. 1) and L_AM (eq. 2), (L, 2)
    fkd_paper_terms_grad_kernel  writes dS''s coefficient tables: the pixel rows a =
                                 2 g_AM M_s, s = d L_AT / d abs_x, the channel rows
                                 w = M_c, s = d L_AT / d abs_x
A program per level walks its images in order (the sums are the same bit for bit
from run to run); every float32 tensor is addressed by its element offset from
level 0's pix table.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.rows import IMIT_CHAN, IMIT_CHAN_COEF, IMIT_PIX, IMIT_PIX_COEF
from fgdkern.triton.fkd_terms import BLOCK, NUM_WARPS, safe_sqrt
from fgdkern.triton.levels import (
    device_values, host_copy_if_interpreted, offset, on_device, positive_levels, row_indices)
from fgdkern.triton.merges import softmax_step

ABS_X, SQ_D, PIX_ROWS = row_indices(IMIT_PIX, "abs_x", "sq_d")
CHAN_ABS_X, CHAN_ROWS = row_indices(IMIT_CHAN, "abs_x")
A, B, S, COEF_ROWS = row_indices(IMIT_PIX_COEF, "a", "b", "s")
CW, CB, CS, CHAN_COEF_ROWS = row_indices(IMIT_CHAN_COEF, "w", "b", "s")
# Columns of the level table: sizes, then the element offsets of the tables of S', of T,
# of the pair, of M_c and of the coefficient tables (zero where a launch has none).
(COL_N, COL_C, COL_HW, COL_PIX_S, COL_PIX_T, COL_CHAN_S, COL_CHAN_T, COL_PIX_D, COL_MC,
 COL_PIXC, COL_CHANC) = (tl.constexpr(k) for k in range(11))
NCOL = tl.constexpr(11)


@triton.jit
def image_rows(base, lv, n, col_pix, col_chan):
    """Image n's abs_x rows over pixels and over channels of one map's tables."""
    C, HW = tl.load(lv + COL_C), tl.load(lv + COL_HW)
    return (base + tl.load(lv + col_pix) + n * PIX_ROWS * HW + ABS_X * HW,
            base + tl.load(lv + col_chan) + n * CHAN_ROWS * C + CHAN_ABS_X * C)


@triton.jit
def summed_softmax_stats(a, b, n, inv_n, inv_temp, BLOCK: tl.constexpr):
    """Max and 1 / sum of exp over the n values of (a / n' + b / n') / temp (inv_n = 1 / n',
    the mean's divisor), online: the softmax of the masks M_s, M_c (weights, which no
    term subtracts: float32 as the reference's)."""
    m = tl.full([], -float("inf"), tl.float32)
    z = tl.zeros([], tl.float32)
    for i0 in range(0, n, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        m, z = softmax_step(m, z, summed_logits(a, b, i, i < n, inv_n, inv_temp), i < n)
    return m, 1.0 / z


@triton.jit
def summed_logits(a, b, i, mask, inv_n, inv_temp):
    v = tl.load(a + i, mask=mask, other=0.0) * inv_n + tl.load(b + i, mask=mask, other=0.0) * inv_n
    return tl.where(mask, v * inv_temp, -float("inf"))


@triton.jit
def summed_mask_at(a, b, i, mask, n, inv_n, inv_temp, m, inv_z):
    """n softmax at i from summed_softmax_stats' m and 1 / z."""
    return tl.where(mask, n * tl.exp(summed_logits(a, b, i, mask, inv_n, inv_temp) - m) * inv_z,
                    0.0)


@triton.jit
def fkd_paper_masks_kernel(table, base, temps, BLOCK: tl.constexpr):
    """Reads one level's channel rows of S' and T; writes its M_c (N, C)."""
    lv = table + tl.program_id(0) * NCOL
    N, C, HW = tl.load(lv + COL_N), tl.load(lv + COL_C), tl.load(lv + COL_HW)
    inv_temp, inv_hw = 1.0 / tl.load(temps + tl.program_id(0)), 1.0 / HW.to(tl.float32)
    for n in range(N):
        _, cs = image_rows(base, lv, n, COL_PIX_S, COL_CHAN_S)
        _, ct = image_rows(base, lv, n, COL_PIX_T, COL_CHAN_T)
        m, inv_z = summed_softmax_stats(cs, ct, C, inv_hw, inv_temp, BLOCK)
        mc = base + tl.load(lv + COL_MC) + n * C
        for c0 in range(0, C, BLOCK):
            c = c0 + tl.arange(0, BLOCK)
            M = summed_mask_at(cs, ct, c, c < C, C, inv_hw, inv_temp, m, inv_z)
            tl.store(mc + c, M.to(tl.float32), mask=c < C)


@triton.jit
def attention_sums(base, lv, BLOCK: tl.constexpr):
    """The squares of G_s(S') - G_s(T) and of G_c(S') - G_c(T), each summed over the level
    (in float64, returned in float32)."""
    N, C, HW = tl.load(lv + COL_N), tl.load(lv + COL_C), tl.load(lv + COL_HW)
    at_s = tl.zeros([], tl.float64)
    at_c = tl.zeros([], tl.float64)
    for n in range(N):
        ps, cs = image_rows(base, lv, n, COL_PIX_S, COL_CHAN_S)
        pt, ct = image_rows(base, lv, n, COL_PIX_T, COL_CHAN_T)
        for p0 in range(0, HW, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            d = (tl.load(ps + p, mask=p < HW, other=0.0) / C
                 - tl.load(pt + p, mask=p < HW, other=0.0) / C)
            at_s += tl.sum(d * d, 0)
        for c0 in range(0, C, BLOCK):
            c = c0 + tl.arange(0, BLOCK)
            d = (tl.load(cs + c, mask=c < C, other=0.0) / HW
                 - tl.load(ct + c, mask=c < C, other=0.0) / HW)
            at_c += tl.sum(d * d, 0)
    return at_s.to(tl.float32), at_c.to(tl.float32)


@triton.jit
def fkd_paper_terms_kernel(table, base, temps, out, BLOCK: tl.constexpr):
    """Reads one level's tables; writes its row of out (L, 2): L_AT, L_AM."""
    l = tl.program_id(0)
    lv = table + l * NCOL
    N, C, HW = tl.load(lv + COL_N), tl.load(lv + COL_C), tl.load(lv + COL_HW)
    inv_temp, inv_c = 1.0 / tl.load(temps + l), 1.0 / C.to(tl.float32)
    am = tl.zeros([BLOCK], tl.float64)  # per lane, reduced once at the end
    for n in range(N):
        ps, _ = image_rows(base, lv, n, COL_PIX_S, COL_CHAN_S)
        pt, _ = image_rows(base, lv, n, COL_PIX_T, COL_CHAN_T)
        pd = base + tl.load(lv + COL_PIX_D) + n * PIX_ROWS * HW + SQ_D * HW
        m, inv_z = summed_softmax_stats(ps, pt, HW, inv_c, inv_temp, BLOCK)
        for p0 in range(0, HW, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            M_s = summed_mask_at(ps, pt, p, p < HW, HW, inv_c, inv_temp, m, inv_z)
            am += M_s * tl.load(pd + p, mask=p < HW, other=0.0)
    at_s, at_c = attention_sums(base, lv, BLOCK)
    tl.store(out + l * 2, safe_sqrt(at_s) + safe_sqrt(at_c))
    tl.store(out + l * 2 + 1, safe_sqrt(tl.sum(am, 0).to(tl.float32)))


@triton.jit
def fkd_paper_terms_grad_kernel(table, base, temps, G, terms, BLOCK: tl.constexpr):
    """Reads one level's row of G and of the terms, its tables and M_c; writes dS''s
    coefficient tables."""
    l = tl.program_id(0)
    lv = table + l * NCOL
    N, C, HW = tl.load(lv + COL_N), tl.load(lv + COL_C), tl.load(lv + COL_HW)
    inv_temp, inv_c = 1.0 / tl.load(temps + l), 1.0 / C.to(tl.float32)
    at_s, at_c = attention_sums(base, lv, BLOCK)
    g_at = tl.load(G + l * 2)
    # d ||x|| / dx = x / ||x||, 0 where the norm is 0
    k_s = tl.where(at_s > 0, g_at / tl.sqrt(tl.maximum(at_s, 0.0)), 0.0)
    k_c = tl.where(at_c > 0, g_at / tl.sqrt(tl.maximum(at_c, 0.0)), 0.0)
    am = tl.load(terms + l * 2 + 1)
    g_am = tl.where(am > 0, tl.load(G + l * 2 + 1) / (2 * am), 0.0)
    for n in range(N):
        ps, cs = image_rows(base, lv, n, COL_PIX_S, COL_CHAN_S)
        pt, ct = image_rows(base, lv, n, COL_PIX_T, COL_CHAN_T)
        pixc = base + tl.load(lv + COL_PIXC) + n * COEF_ROWS * HW
        chanc = base + tl.load(lv + COL_CHANC) + n * CHAN_COEF_ROWS * C
        m, inv_z = summed_softmax_stats(ps, pt, HW, inv_c, inv_temp, BLOCK)
        for p0 in range(0, HW, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            pn = p < HW
            M_s = summed_mask_at(ps, pt, p, pn, HW, inv_c, inv_temp, m, inv_z)
            d = tl.load(ps + p, mask=pn, other=0.0) / C - tl.load(pt + p, mask=pn, other=0.0) / C
            tl.store(pixc + A * HW + p, (2 * g_am * M_s).to(tl.float32), mask=pn)
            tl.store(pixc + B * HW + p, tl.zeros([BLOCK], tl.float32), mask=pn)
            tl.store(pixc + S * HW + p, k_s * d / C, mask=pn)
        mc = base + tl.load(lv + COL_MC) + n * C
        for c0 in range(0, C, BLOCK):
            c = c0 + tl.arange(0, BLOCK)
            cn = c < C
            d = (tl.load(cs + c, mask=cn, other=0.0) / HW
                 - tl.load(ct + c, mask=cn, other=0.0) / HW)
            tl.store(chanc + CW * C + c, tl.load(mc + c, mask=cn, other=0.0), mask=cn)
            tl.store(chanc + CB * C + c, tl.zeros([BLOCK], tl.float32), mask=cn)
            tl.store(chanc + CS * C + c, k_c * d / HW, mask=cn)


# ------------------------------------------------------------------ launches
def _check(pix: list[Tensor], chan: list[Tensor], temps, pix_d=None, M_c=None) -> list[float]:
    """pix, chan: the 2L tables of X = [S'..., T...]; pix_d: the pair's L pixel tables;
    M_c: L (N, C) float32; all contiguous float32 on one device. Returns temps checked."""
    L = len(pix) // 2
    if L == 0 or len(pix) != 2 * L or len(chan) != 2 * L:
        raise ValueError("pix and chan must hold the tables of S' then of T (2 per level), "
                         f"got {len(pix)} and {len(chan)}")
    device, N = pix[0].device, pix[0].shape[0]
    named = []
    for k in range(2 * L):
        HW, C = pix[k % L].shape[-1], chan[k % L].shape[-1]
        named += [(f"pix[{k}]", pix[k], (N, PIX_ROWS.value, HW)),
                  (f"chan[{k}]", chan[k], (N, CHAN_ROWS.value, C))]
        if k < L and pix_d is not None:
            named.append((f"pix_d[{k}]", pix_d[k] if k < len(pix_d) else None,
                          (N, PIX_ROWS.value, HW)))
        if k < L and M_c is not None:
            named.append((f"M_c[{k}]", M_c[k] if k < len(M_c) else None, (N, C)))
    for name, x, shape in named:
        if x is None or (x.dtype != torch.float32 or tuple(x.shape) != shape
                         or not x.is_contiguous() or x.device != device):
            got = "nothing" if x is None else f"{x.dtype} {tuple(x.shape)} on {x.device}"
            raise ValueError(f"{name} must be a contiguous float32 {shape} table on {device}, "
                             f"got {got}")
    return positive_levels("temps", temps, L)


def _table(pix, chan, pix_d=None, M_c=None, coef=None) -> Tensor:
    L, base = len(pix) // 2, pix[0]
    rows = []
    for l in range(L):
        ins = [pix[l], pix[L + l], chan[l], chan[L + l], pix_d[l] if pix_d else base,
               M_c[l] if M_c else base, *(coef[l] if coef else (base, base))]
        rows.append([pix[l].shape[0], chan[l].shape[2], pix[l].shape[2],
                     *(offset(x, base) for x in ins)])
    return device_values(rows, torch.int64, base.device)


@host_copy_if_interpreted
def fkd_paper_masks(pix: list[Tensor], chan: list[Tensor], temps: list[float]) -> list[Tensor]:
    """[M_c per level]: the contract's paper_masks."""
    temps = _check(pix, chan, temps)
    L = len(temps)
    M_c = [c.new_empty((c.shape[0], c.shape[2])) for c in chan[:L]]
    with on_device(pix[0].device):
        fkd_paper_masks_kernel[(L,)](_table(pix, chan, M_c=M_c), pix[0],
                                     device_values(temps, torch.float32, pix[0].device),
                                     BLOCK=BLOCK, num_warps=NUM_WARPS)
    return M_c


@host_copy_if_interpreted
def fkd_paper_terms(pix: list[Tensor], chan: list[Tensor], pix_d: list[Tensor],
                    temps: list[float]) -> list[Tensor]:
    """[table]: the contract's paper_terms, (L, 2) float32."""
    temps = _check(pix, chan, temps, pix_d)
    out = pix[0].new_empty((len(temps), 2))
    with on_device(out.device):
        fkd_paper_terms_kernel[(len(temps),)](
            _table(pix, chan, pix_d), pix[0], device_values(temps, torch.float32, out.device),
            out, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return [out]


@host_copy_if_interpreted
def fkd_paper_terms_grad(G: Tensor, pix: list[Tensor], chan: list[Tensor], pix_d: list[Tensor],
                         M_c: list[Tensor], temps: list[float], table: Tensor) -> list[Tensor]:
    """The contract's paper_terms_grad: [pix_coef * L, chan_coef * L] (table: what
    fkd_paper_terms returned)."""
    temps = _check(pix, chan, temps, pix_d, M_c)
    L = len(temps)
    for name, x in (("G", G), ("table", table)):
        if x.shape != (L, 2) or x.dtype != torch.float32 or x.device != pix[0].device:
            raise ValueError(f"{name} must be ({L}, 2) float32 on {pix[0].device}, got "
                             f"{x.dtype} {tuple(x.shape)} on {x.device}")
    pixc = [torch.empty_like(p) for p in pix[:L]]
    chanc = [c.new_empty((c.shape[0], CHAN_COEF_ROWS.value, c.shape[2])) for c in chan[:L]]
    with on_device(G.device):
        fkd_paper_terms_grad_kernel[(L,)](
            _table(pix, chan, pix_d, M_c, list(zip(pixc, chanc))), pix[0],
            device_values(temps, torch.float32, G.device), G.contiguous(), table.contiguous(),
            BLOCK=BLOCK, num_warps=NUM_WARPS)
    return pixc + chanc
