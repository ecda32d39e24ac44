"""FGD's small math in plain PyTorch: the terms from fgd_stats' statistics, and fgd_grad's
tables from their gradients. This module is that math's one statement.

``terms`` is docs/fgd.md, "Loss terms", written on the statistics of
fgdkern.reference.fgd_passes, with the GcBlock MLP of the ground truth itself
(fgdkern.reference.fgd.gc_transform). Its backward is autograd of it
(``terms_grad``), and ``grad_tables`` turns the statistics' gradients into
fgd_grad's tables (docs/kernels.md, "The row tables"). The kernels write
the same math and its backward out by hand: on CPU csrc/cpu/fgd_terms*.cpp, on
a GPU fgdkern/triton/fgd_terms*.py, each tested against this module
(tests/cpu/test_fgd_terms_cpp.py, tests/triton/test_fgd_terms.py). The
"torch" implementation of the FGD op runs it as it is.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.reference.fgd import GcBlockParams, gc_transform
from fgdkern.rows import FGD_CHAN, FGD_CHAN_COEF, FGD_PIX, FGD_PIX_COEF, GC_MLP


def flat(gcs) -> list[Tensor]:
    """The MLP parameters of every level (GcBlockParams), level after level, GC_MLP order."""
    return [getattr(g, name) for g in gcs for name in GC_MLP]


def channel_shift(ctx: Tensor, params: list[Tensor], eps: float) -> Tensor:
    """channel_add_conv (N, C) of the contexts ctx (N, C) of one level, from its GC_MLP
    parameters (conv_mask is not read)."""
    gc = GcBlockParams(mask_weight=None, mask_bias=None, norm_eps=eps,
                       **dict(zip(GC_MLP, params)))
    return gc_transform(ctx[..., None, None], gc).flatten(1)


def level_terms(pix: Tensor, chan: Tensor, mlp_s: list[Tensor], mlp_t: list[Tensor],
                eps_s: float, eps_t: float, temp: float) -> Tensor:
    """The unweighted fg, bg, mask, rela terms (4,) of one level from its pix (N, 4, HW) and
    chan (N, 8, C) statistics. The teacher's attention is a constant: it is detached."""
    N, C, HW = chan.shape[0], chan.shape[2], pix.shape[-1]
    c = dict(zip(FGD_CHAN, chan.unbind(1)))
    A_C_s, A_C_t = (C * torch.softmax(x / temp, -1) for x in (c["gc_s"], c["gc_t"].detach()))
    A_S_s, A_S_t = (HW * torch.softmax(x / temp, -1)
                    for x in (pix[:, FGD_PIX.gs_s], pix[:, FGD_PIX.gs_t].detach()))
    shift = channel_shift(c["ctx_s"], mlp_s, eps_s) - channel_shift(c["ctx_t"], mlp_t, eps_t)
    rela = c["m2_d"].sum() + HW * (c["sum_d"] / HW + shift).square().sum()
    return torch.stack([(A_C_t * c["x_fg"]).sum(), (A_C_t * c["x_bg"]).sum(),
                        (A_C_s - A_C_t).abs().sum() + (A_S_s - A_S_t).abs().sum(), rela]) / N


def terms(pix: list[Tensor], chan: list[Tensor], mlp_s: list[Tensor], mlp_t: list[Tensor],
          eps_s: list[float], eps_t: list[float], temps: list[float]) -> list[Tensor]:
    """[table]: the (L, 4) terms of every level (mlp_s / mlp_t: flat(); eps_s / eps_t: the
    LayerNorm eps of each level). Nothing is saved: terms_grad evaluates it again."""
    P = len(GC_MLP)
    return [torch.stack([
        level_terms(pix[l], chan[l], mlp_s[P * l:P * (l + 1)], mlp_t[P * l:P * (l + 1)],
                    eps_s[l], eps_t[l], temps[l]) for l in range(len(pix))])]


def terms_grad(G: Tensor, pix, chan, saved, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t,
               temps) -> list[Tensor]:
    """The backward of terms by autograd, from the terms' gradient G (L, 4):
    [pix_coef*L, chan_coef*L, K*L, g_mlp_s*6L, g_mlp_t*6L], what the kernels' terms_grad
    return (saved: what their terms saved, unused here). torch.func.vjp rather than
    torch.autograd.grad: called from the FGD node's backward, it traces under torch.compile."""
    L, n_mlp = len(pix), len(mlp_s)

    def table_of(*x):
        return terms(x[:L], x[L:2 * L], x[2 * L:2 * L + n_mlp], x[2 * L + n_mlp:], eps_s, eps_t,
                     temps)[0]

    table, vjp = torch.func.vjp(table_of, *pix, *chan, *mlp_s, *mlp_t)
    grads = vjp(G.to(table.dtype))
    tables = [grad_tables(*level) for level in zip(fg, bg, w_s, w_t, pix, chan, grads[:L],
                                                     grads[L:2 * L], temps)]
    return [t[k] for k in range(3) for t in tables] + list(grads[2 * L:])


def grad_tables(fg: Tensor, bg: Tensor, w_s: Tensor, w_t: Tensor, pix: Tensor, chan: Tensor,
                g_pix: Tensor, g_chan: Tensor, temp: float) -> tuple[Tensor, Tensor, Tensor]:
    """fgd_grad's tables of one level, pix_coef (N, 5, HW), chan_coef (N, 11, C), K (N, 2)
    (rows: fgdkern.rows.FGD_PIX_COEF, FGD_CHAN_COEF), from the gradients g_pix, g_chan of
    its statistics (fgdkern/reference/fgd_passes.py gives what each row does there)."""
    N, C, HW = chan.shape[0], chan.shape[2], pix.shape[-1]
    A = HW * torch.softmax(pix[:, FGD_PIX.gs_t] / temp, -1)             # teacher A_S
    p = torch.softmax(pix[:, FGD_PIX.z_s:FGD_PIX.z_t + 1], -1)           # p_s, p_t
    rows = dict(a_sign=g_pix[:, FGD_PIX.gs_s] / C, fgA=fg.reshape(N, HW) * A,
                bgA=bg.reshape(N, HW) * A, p_s=p[:, 0], p_t=p[:, 1])
    pix_coef = torch.stack([rows[r] for r in FGD_PIX_COEF], 1)
    g = dict(zip(FGD_CHAN, g_chan.unbind(1)))
    c = dict(zip(FGD_CHAN, chan.unbind(1)))
    rows = dict(b_sign=g["gc_s"] / HW, k_d=2 * g["m2_d"],
                k_const=g["sum_d"] - 2 * g["m2_d"] * (c["sum_d"] / HW), k_fg=2 * g["x_fg"],
                k_bg=2 * g["x_bg"], g_ctx_s=g["ctx_s"], g_ctx_t=g["ctx_t"],
                w_s=w_s.expand(N, C), w_t=w_t.expand(N, C), ctx_s=c["ctx_s"], ctx_t=c["ctx_t"])
    chan_coef = torch.stack([rows[r] for r in FGD_CHAN_COEF], 1)
    K = torch.stack([(g["ctx_s"] * c["ctx_s"]).sum(-1), (g["ctx_t"] * c["ctx_t"]).sum(-1)], -1)
    return pix_coef, chan_coef, K
