"""FKD's small math in plain PyTorch: the terms from the imitation statistics, and the
imitation gradient pass's tables from their gradients. This module is that math's one
statement.

``terms`` is docs/fkd.md, "The code variant", written on the tables of
fgdkern.reference.imitation_passes: per level pix_t, chan_t of the pair X = T,
Y = f(S) and pix_s, chan_s of X = S, through the functions the reference loss
itself calls (masks, norms, the channel and spatial mimics). ``paper_masks`` and
``paper_terms`` are "The paper variant": M_c from the statistics of X = S', T,
then L_AT and L_AM with those of the pair X = S', Y = T weighted by M_c. The
backwards are autograd of them (``terms_grad``, ``paper_terms_grad``), turned
into the gradient pass's coefficients by imitation_passes.coefficients. On a GPU
fgdkern/triton/fkd_*.py write the same math out, tested against this module
(tests/triton/test_fkd_terms.py, test_fkd_paper.py); on CPU the FKD op runs it
as it is, under autograd.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.reference.fkd import (CodeParams, code_mimic, paper_mimic, safe_sqrt,
                                   softmax_mask)
from fgdkern.reference.imitation_passes import coefficients
from fgdkern.rows import FKD_MIMIC, IMIT_CHAN, IMIT_PIX


def flat(params: list[CodeParams]) -> list[Tensor]:
    """The mimic layers' parameters of every level, level after level, FKD_MIMIC order."""
    return [getattr(p, name) for p in params for name in FKD_MIMIC]


def level_terms(pix_t: Tensor, pix_s: Tensor, chan_t: Tensor, chan_s: Tensor,
                mimic: list[Tensor], W: int, temp: float) -> Tensor:
    """The unweighted L_feat, L_ch, L_sp (3,) of one level of width W from its tables:
    pix_t (N, 3, HW), chan_t (N, 2, Ct) of (T, f(S)); pix_s, chan_s (N, 2, Cs) of S."""
    N, HW, Ct, Cs = pix_t.shape[0], pix_t.shape[2], chan_t.shape[2], chan_s.shape[2]
    A_t = softmax_mask(pix_t[:, IMIT_PIX.abs_x] / Ct, temp)
    A_s = softmax_mask(pix_s[:, IMIT_PIX.abs_x] / Cs, temp)
    M = ((A_t + A_s) / 2).detach()
    feat = safe_sqrt((M * pix_t[:, IMIT_PIX.sq_d]).sum())
    p = CodeParams(None, None, **dict(zip(FKD_MIMIC, mimic)))
    ch, sp = code_mimic(chan_t[:, IMIT_CHAN.sum_x] / HW, chan_s[:, IMIT_CHAN.sum_x] / HW,
                        pix_t[:, IMIT_PIX.sum_x].reshape(N, HW // W, W) / Ct,
                        pix_s[:, IMIT_PIX.sum_x].reshape(N, HW // W, W) / Cs, p)
    return torch.stack([feat, ch, sp])


def terms(pix_t: list[Tensor], pix_s: list[Tensor], chan_t: list[Tensor],
          chan_s: list[Tensor], mimic: list[Tensor], widths: list[int],
          temps: list[float]) -> list[Tensor]:
    """[table]: the (L, 3) terms of every level (mimic: flat(); widths: each level's W)."""
    P = len(FKD_MIMIC)
    return [torch.stack([
        level_terms(pix_t[l], pix_s[l], chan_t[l], chan_s[l], mimic[P * l:P * (l + 1)],
                    widths[l], temps[l]) for l in range(len(pix_t))])]


def terms_grad(G: Tensor, pix_t, pix_s, chan_t, chan_s, mimic, widths, temps,
               table) -> list[Tensor]:
    """The backward of terms by autograd from the terms' gradient G (L, 3):
    [pix_coef of f(S) * L, pix_coef of S * L, chan_coef of S * L, g_mimic * 4L]
    (imitation_grad's tables; the channel coefficients of f(S) are w = 1, b = s = 0).
    table: what terms returned, which the kernels read (unused here)."""
    def table_of(pt, ps, cs, m):
        return terms(pt, ps, chan_t, cs, m, widths, temps)[0]

    _, vjp = torch.func.vjp(table_of, pix_t, pix_s, chan_s, mimic)
    g_pix_t, g_pix_s, g_chan_s, g_mimic = vjp(G.to(pix_t[0].dtype))
    pix_f, pix_s_coef, chan_s_coef = [], [], []
    for gt, gs, gc, ct, cs in zip(g_pix_t, g_pix_s, g_chan_s, chan_t, chan_s):
        pix_f.append(coefficients(gt, torch.zeros_like(ct), torch.ones_like(ct[:, 0]))[2])
        p, c, _, _ = coefficients(gs, gc, torch.ones_like(cs[:, 0]))
        pix_s_coef.append(p)
        chan_s_coef.append(c)
    return [*pix_f, *pix_s_coef, *chan_s_coef, *g_mimic]


def paper_masks(pix: list[Tensor], chan: list[Tensor], temps: list[float]) -> list[Tensor]:
    """M_c (N, C) of every level, detached, from the tables of X = [S'..., T...] (2L)."""
    L = len(temps)
    return [softmax_mask((chan[l][:, IMIT_CHAN.abs_x] / pix[l].shape[2]
                          + chan[L + l][:, IMIT_CHAN.abs_x] / pix[l].shape[2]), temps[l]).detach()
            for l in range(L)]


def paper_level_terms(pix_s: Tensor, pix_t: Tensor, chan_s: Tensor, chan_t: Tensor,
                      pix_d: Tensor, temp: float) -> Tensor:
    """L_AT, L_AM (2,) of one level (eqs. (1), (2)): pix_s, chan_s of S', pix_t, chan_t
    of T, pix_d of the pair X = S', Y = T weighted by M_c."""
    C, HW = chan_s.shape[2], pix_s.shape[2]
    Gs_s, Gs_t = pix_s[:, IMIT_PIX.abs_x] / C, pix_t[:, IMIT_PIX.abs_x] / C
    Gc_s, Gc_t = chan_s[:, IMIT_CHAN.abs_x] / HW, chan_t[:, IMIT_CHAN.abs_x] / HW
    M_s = softmax_mask(Gs_s + Gs_t, temp).detach()
    return torch.stack([paper_mimic(Gs_s, Gs_t, Gc_s, Gc_t),
                        safe_sqrt((M_s * pix_d[:, IMIT_PIX.sq_d]).sum())])


def paper_terms(pix: list[Tensor], chan: list[Tensor], pix_d: list[Tensor],
                temps: list[float]) -> list[Tensor]:
    """[table]: the (L, 2) terms L_AT, L_AM of every level."""
    L = len(temps)
    return [torch.stack([paper_level_terms(pix[l], pix[L + l], chan[l], chan[L + l], pix_d[l],
                                           temps[l]) for l in range(L)])]


def paper_terms_grad(G: Tensor, pix, chan, pix_d, M_c, temps, table) -> list[Tensor]:
    """The backward of paper_terms by autograd from G (L, 2): [pix_coef * L, chan_coef * L]
    of dS' in the gradient pass over X = S', Y = T (w = M_c: the a-term of L_AM, the
    s-terms of L_AT). table: what paper_terms returned, which the kernels read."""
    L = len(temps)

    def table_of(ps, cs, pd):
        return paper_terms([*ps, *pix[L:]], [*cs, *chan[L:]], pd, temps)[0]

    _, vjp = torch.func.vjp(table_of, pix[:L], chan[:L], pix_d)
    g_pix, g_chan, g_pix_d = vjp(G.to(pix[0].dtype))
    tables = [coefficients(gp + gd, gc, w)[:2] for gp, gc, gd, w in zip(g_pix, g_chan, g_pix_d, M_c)]
    return [t[0] for t in tables] + [t[1] for t in tables]
