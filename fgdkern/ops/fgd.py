"""The FGD op: masks, then one autograd node that runs the fused passes and the small math.

``fgd_terms`` is what the loss modules call; it takes tensors only (features,
boxes, GcBlock parameters, temperatures). For the fused implementations, the
autograd function ``_FGD``:
forward:  fgd_stats (one pass over S and T, per backend) -> small statistics;
          terms (the O(N*(C+HW)) small math of all levels: softmaxes, L1 terms,
          the GcBlock MLPs) -> the (L, 4) table of terms.
backward: terms_grad (the small math's backward, written out) -> fgd_grad's
          coefficient tables and the MLP parameters' gradients; fgd_grad (one
          pass over S and T writing dS, dw_s, dw_t).
Which code runs each of the four steps is ``kernels(impl)``: on CPU all four are
compiled ops, on a GPU Triton kernels (fgdkern/triton/fgd_terms*.py for the small
math), each one launch over every level; the pure-PyTorch path runs the contracts
themselves: the passes' in ``fgdkern.reference.fgd_passes``, the small math's (and
its backward by autograd) in ``fgdkern.reference.fgd_small_math``. The rows of the
passes' tables are named in ``fgdkern.rows`` (docs/kernels.md).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fgdkern import _checks
from fgdkern._ext import HAS_EXT
from fgdkern.ops import dispatch
from fgdkern.ops.rasterize import rasterize_boxes
from fgdkern.reference import fgd_passes, fgd_small_math
from fgdkern.reference.fgd import GcBlockParams, fgd_reference
from fgdkern.rows import FGD_CHAN, FGD_CHAN_COEF, FGD_PIX, FGD_PIX_COEF


# ---------------------------------------------------------------- op registry
def _stats_fake(S, T, fg, bg, w_s, w_t, temps):
    pix = [s.new_empty((s.shape[0], len(FGD_PIX), s.shape[2] * s.shape[3]),
                       dtype=torch.float32) for s in S]
    chan = [s.new_empty((s.shape[0], len(FGD_CHAN), s.shape[1]), dtype=torch.float32) for s in S]
    return pix + chan


def _grad_fake(S, T, pix_coef, chan_coef, K):
    dS = [torch.empty_like(s) for s in S]
    dw = [s.new_empty((s.shape[1],), dtype=torch.float32) for s in S]
    return dS + dw + [w.clone() for w in dw]


def _terms_fake(pix, chan, mlp_s, mlp_t, eps_s, eps_t, temp):
    y_S = [p.new_empty((p.shape[0], 2, p.shape[2])) for p in pix]
    return [chan[0].new_empty((len(pix), 4))] + y_S


def _terms_grad_fake(G, pix, chan, y_S, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t, temp):
    pix_coef = [p.new_empty((p.shape[0], len(FGD_PIX_COEF), p.shape[2])) for p in pix]
    chan_coef = [c.new_empty((c.shape[0], len(FGD_CHAN_COEF), c.shape[2])) for c in chan]
    K = [c.new_empty((c.shape[0], 2)) for c in chan]
    return pix_coef + chan_coef + K + [torch.empty_like(p) for p in [*mlp_s, *mlp_t]]


if HAS_EXT:
    torch.library.register_fake("fgdkern::fgd_stats_cpp")(_stats_fake)
    torch.library.register_fake("fgdkern::fgd_grad_cpp")(_grad_fake)
    torch.library.register_fake("fgdkern::fgd_terms_cpp")(_terms_fake)
    torch.library.register_fake("fgdkern::fgd_terms_grad_cpp")(_terms_grad_fake)


@torch.library.custom_op("fgdkern::fgd_stats_triton", mutates_args=())
def _fgd_stats_triton(S: list[Tensor], T: list[Tensor], fg: list[Tensor], bg: list[Tensor],
                      w_s: list[Tensor], w_t: list[Tensor], temps: list[float]) -> list[Tensor]:
    from fgdkern.triton import fgd_stats
    return fgd_stats(S, T, fg, bg, w_s, w_t, temps)


@torch.library.custom_op("fgdkern::fgd_grad_triton", mutates_args=())
def _fgd_grad_triton(S: list[Tensor], T: list[Tensor], pix_coef: list[Tensor],
                     chan_coef: list[Tensor], K: list[Tensor]) -> list[Tensor]:
    from fgdkern.triton import fgd_grad
    return fgd_grad(S, T, pix_coef, chan_coef, K)


@torch.library.custom_op("fgdkern::fgd_terms_triton", mutates_args=())
def _fgd_terms_triton(pix: list[Tensor], chan: list[Tensor], mlp_s: list[Tensor],
                      mlp_t: list[Tensor], eps_s: list[float], eps_t: list[float],
                      temps: list[float]) -> list[Tensor]:
    from fgdkern.triton import fgd_terms
    return fgd_terms(pix, chan, mlp_s, mlp_t, eps_s, eps_t, temps)


@torch.library.custom_op("fgdkern::fgd_terms_grad_triton", mutates_args=())
def _fgd_terms_grad_triton(G: Tensor, pix: list[Tensor], chan: list[Tensor],
                           saved: list[Tensor], fg: list[Tensor], bg: list[Tensor],
                           w_s: list[Tensor], w_t: list[Tensor], mlp_s: list[Tensor],
                           mlp_t: list[Tensor], eps_s: list[float], eps_t: list[float],
                           temps: list[float]) -> list[Tensor]:
    from fgdkern.triton import fgd_terms_grad
    return fgd_terms_grad(G, pix, chan, saved, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t,
                          temps)


_fgd_stats_triton.register_fake(_stats_fake)
_fgd_grad_triton.register_fake(_grad_fake)
_fgd_terms_triton.register_fake(lambda pix, *_: [pix[0].new_empty((len(pix), 4))])
_fgd_terms_grad_triton.register_fake(_terms_grad_fake)


class Kernels(NamedTuple):
    """The four steps of one fused implementation (contracts: fgdkern/reference/fgd_small_math.py
    for terms and terms_grad, fgdkern/reference/fgd_passes.py for the passes)."""
    stats: Callable       # (S, T, fg, bg, w_s, w_t, temps) -> [pix*L, chan*L]
    terms: Callable       # (pix, chan, mlp_s, mlp_t, eps_s, eps_t, temps) -> [table, *saved]
    terms_grad: Callable  # (G, pix, chan, saved, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s,
    #                        eps_t, temps) -> [pix_coef*L, chan_coef*L, K*L, g_mlp_s, g_mlp_t]
    grad: Callable        # (S, T, pix_coef, chan_coef, K) -> [dS*L, dw_s*L, dw_t*L]


def kernels(impl: str) -> Kernels:
    """The steps of a fused implementation: 'cpp', 'triton' or 'torch'."""
    ops = torch.ops.fgdkern
    if impl == "cpp":
        return Kernels(ops.fgd_stats_cpp, ops.fgd_terms_cpp, ops.fgd_terms_grad_cpp,
                       ops.fgd_grad_cpp)
    if impl == "triton":
        return Kernels(ops.fgd_stats_triton, ops.fgd_terms_triton, ops.fgd_terms_grad_triton,
                       ops.fgd_grad_triton)
    if impl == "torch":
        return Kernels(fgd_passes.fgd_stats, fgd_small_math.terms, fgd_small_math.terms_grad,
                       fgd_passes.fgd_grad)
    raise ValueError(f"unknown fused implementation {impl!r}")


# ------------------------------------------------------------------ autograd
def _split(tensors: tuple, sizes: list[int]) -> list[list[Tensor]]:
    out, at = [], 0
    for n in sizes:
        out.append(list(tensors[at:at + n]))
        at += n
    return out


class _FGD(torch.autograd.Function):
    """The (L, 4) FGD terms of L levels that share C, differentiable w.r.t. S, the
    conv_mask weights and the GcBlock MLP parameters of both sides.

    Inputs: S*L, T*L, fg*L, bg*L, w_s*L, w_t*L, b_s*L, b_t*L, mlp_s (6L), mlp_t (6L).
    The conv_mask biases b_s, b_t do not change a softmax over pixels: their gradient
    is exactly zero, returned as zeros so that every parameter gets a gradient (as
    DistributedDataParallel expects). check: names of the levels' features when the
    statistics are checked for NaN/Inf (one host sync), else None.
    """

    @staticmethod
    def forward(ctx, impl: str, temps: list, eps: tuple, check, L: int, *tensors):
        S, T, fg, bg, w_s, w_t, b, mlp_s, mlp_t = _split(tensors, [L] * 6 + [2 * L] + [6 * L] * 2)
        k = kernels(impl)
        stats = k.stats(S, T, fg, bg, w_s, w_t, temps)
        pix, chan = stats[:L], stats[L:]
        if check is not None:
            _check_stats_finite(pix, check)
        out = k.terms(pix, chan, mlp_s, mlp_t, eps[0], eps[1], temps)
        ctx.impl, ctx.temps, ctx.eps, ctx.L = impl, temps, eps, L
        ctx.bias_like = [(x.shape, x.dtype, x.device) for x in b]
        ctx.save_for_backward(*S, *T, *fg, *bg, *w_s, *w_t, *mlp_s, *mlp_t, *pix, *chan,
                              *out[1:])
        return out[0]

    @staticmethod
    def backward(ctx, G):
        L, k = ctx.L, kernels(ctx.impl)
        S, T, fg, bg, w_s, w_t, mlp_s, mlp_t, pix, chan, saved = _split(
            ctx.saved_tensors, [L] * 6 + [6 * L] * 2 + [L] * 2 + [len(ctx.saved_tensors)])
        # float32 whatever autocast region the backward is called from, as in the forward
        with torch.autocast(S[0].device.type, enabled=False):
            coefs = k.terms_grad(G.float().contiguous(), pix, chan, saved, fg, bg, w_s, w_t,
                                 mlp_s, mlp_t, ctx.eps[0], ctx.eps[1], ctx.temps)
            out = k.grad(S, T, coefs[:L], coefs[L:2 * L], coefs[2 * L:3 * L])
        dS, dw_s, dw_t = out[:L], out[L:2 * L], out[2 * L:]
        return (None,) * 5 + (*dS, *[None] * 3 * L, *dw_s, *dw_t, *_zeros(ctx.bias_like),
                              *coefs[3 * L:])


def _zeros(like: list[tuple]) -> list[Tensor]:
    """Zero tensors of the (shape, dtype, device) in like: views of one fill where all match."""
    if all(x == like[0] for x in like):
        shape, dtype, device = like[0]
        return list(torch.zeros((len(like), *shape), dtype=dtype, device=device).unbind(0))
    return [torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in like]


def fgd_table(impl: str, S, T, fg, bg, gc_s, gc_t, temps, check=None) -> Tensor:
    """The (L, 4) terms of levels that share C through ``impl``'s fused steps, with autograd."""
    L = len(S)
    w_s = [g.mask_weight.reshape(-1).float() for g in gc_s]
    w_t = [g.mask_weight.reshape(-1).float() for g in gc_t]
    b = [g.mask_bias for g in gc_s] + [g.mask_bias for g in gc_t]
    mlp = [[p.float() for p in fgd_small_math.flat(gcs)] for gcs in (gc_s, gc_t)]
    eps = ([g.norm_eps for g in gc_s], [g.norm_eps for g in gc_t])
    return _FGD.apply(impl, [float(t) for t in temps], eps, check, L,
                      *S, *T, *fg, *bg, *w_s, *w_t, *b, *mlp[0], *mlp[1])


def _check_stats_finite(pix: list[Tensor], names: list[str]) -> None:
    """A non-finite value in S (T) makes its per-pixel mean |S| (|T|) non-finite: one sync."""
    rows = [FGD_PIX.gs_s, FGD_PIX.gs_t]
    bad = torch.stack([~torch.isfinite(p[:, rows]).all((0, 2)) for p in pix]).cpu()
    for sfx, (bad_s, bad_t) in zip(names, bad.tolist()):
        for name, flag in ((f"preds_S{sfx}", bad_s), (f"preds_T{sfx}", bad_t)):
            if flag:
                raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


# ------------------------------------------------------------------ the op
def fgd_terms(backend: str, S: list[Tensor], T: list[Tensor], gt_bboxes, img_shapes,
              gc_s: list[GcBlockParams], gc_t: list[GcBlockParams], temps: list[float],
              check_finite: bool = False, border: str = "clip") -> Tensor:
    """Unweighted FGD terms of every level (docs/fgd.md): an (L, 4) float32 table, per
    level fg_loss, bg_loss, mask_loss, rela_loss (the order of FGDTerms).

    S, T: per level (N, C, H, W) features of one dtype per level (S aligned, T
    detached), all on one device; gt_bboxes / img_shapes as rasterize_boxes
    takes them; gc_s / gc_t: the GcBlock parameters of each level; temps: each
    level's temperature. check_finite: raise on NaN/Inf features (one host
    sync); otherwise they propagate into the terms (docs/fgd.md, "Validation").
    border: how boxes across the map's border paint ("clip" or "wrap",
    docs/fgd.md, "Masks from boxes").
    """
    names = [f"[{k}]" if len(S) > 1 else "" for k in range(len(S))]
    device = S[0].device
    masks = rasterize_boxes(gt_bboxes, img_shapes, [tuple(s.shape[-2:]) for s in S],
                            border=border, check_finite=check_finite)
    fg = [f.to(device) for f, _ in masks]
    bg = [b.to(device) for _, b in masks]
    impl = dispatch.resolve("fgd", backend, device, S[0].dtype)
    checking = check_finite and not _checks.is_compiling()
    if impl == "reference":
        if checking:
            for s, t, sfx in zip(S, T, names):
                _checks.check_finite(f"preds_S{sfx}", s)
                _checks.check_finite(f"preds_T{sfx}", t)
        return torch.stack([torch.stack(fgd_reference(*args))
                            for args in zip(S, T, fg, bg, gc_s, gc_t, temps)])
    check = names if checking else None
    with torch.autocast(device.type, enabled=False):
        if len({s.shape[1] for s in S}) == 1:
            return fgd_table(impl, S, T, fg, bg, gc_s, gc_t, temps, check)
        # the small math stacks the levels' channel rows: levels of different C one by one
        return torch.cat([fgd_table(impl, [S[l]], [T[l]], [fg[l]], [bg[l]], [gc_s[l]],
                                    [gc_t[l]], [temps[l]], check and [check[l]])
                          for l in range(len(S))])
