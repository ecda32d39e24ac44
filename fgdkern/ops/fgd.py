"""The FGD op: masks, the fused passes with autograd, and the terms from their statistics.

``fgd_terms`` is what the loss modules call; it takes tensors only (features,
boxes, GcBlock parameters, temperatures). For the fused implementations:
forward:  fgd_stats (one pass over S and T, per backend) -> small statistics;
          the terms are then O(N*(C+HW)) torch ops over all levels at once
          (``fgd_levels.terms_table``), so the GcBlock MLPs, softmaxes and L1
          terms get ordinary autograd.
backward: autograd delivers the gradients of the statistics; ``_FGDStats``
          turns them into per-pixel / per-channel coefficients
          (``fgd_levels.grad_coefficients``) and runs
          fgd_grad (one pass over S and T writing dS, dw_s, dw_t).
The math of both passes is fixed in ``fgdkern.reference.fgd_passes``; the
rows of their tables are named in ``fgdkern.rows`` (docs/kernels.md).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fgdkern import _checks
from fgdkern._ext import HAS_EXT
from fgdkern.ops import dispatch, fgd_levels
from fgdkern.ops.rasterize import rasterize_boxes
from fgdkern.reference import fgd_passes
from fgdkern.reference.fgd import GcBlockParams, fgd_reference
from fgdkern.rows import FGD_CHAN, FGD_PIX


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


if HAS_EXT:
    torch.library.register_fake("fgdkern::fgd_stats_cpp")(_stats_fake)
    torch.library.register_fake("fgdkern::fgd_grad_cpp")(_grad_fake)


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


_fgd_stats_triton.register_fake(_stats_fake)
_fgd_grad_triton.register_fake(_grad_fake)


def passes(impl: str) -> tuple[Callable, Callable]:
    """(fgd_stats, fgd_grad) of a fused implementation: 'cpp', 'triton' or 'torch'."""
    if impl == "cpp":
        return torch.ops.fgdkern.fgd_stats_cpp, torch.ops.fgdkern.fgd_grad_cpp
    if impl == "triton":
        return torch.ops.fgdkern.fgd_stats_triton, torch.ops.fgdkern.fgd_grad_triton
    if impl == "torch":
        return fgd_passes.fgd_stats, fgd_passes.fgd_grad
    raise ValueError(f"unknown fused implementation {impl!r}")


# ------------------------------------------------------------------ autograd
class _FGDStats(torch.autograd.Function):
    """Differentiable fgd_stats over L levels.

    Inputs: S*L, T*L, fg*L, bg*L, w_s*L, w_t*L, b_s*L, b_t*L. The conv_mask
    biases b_s, b_t do not change a softmax over pixels: their gradient is
    exactly zero, returned as zeros so that every parameter gets a gradient
    (as DistributedDataParallel expects).
    """

    @staticmethod
    def forward(ctx, impl: str, temps: list, L: int, *tensors):
        S, T, fg, bg, w_s, w_t = (list(tensors[i * L:(i + 1) * L]) for i in range(6))
        out = passes(impl)[0](S, T, fg, bg, w_s, w_t, temps)
        ctx.impl, ctx.temps, ctx.L = impl, temps, L
        ctx.save_for_backward(*tensors[:6 * L], *out)
        ctx.bias_like = [(b.shape, b.dtype, b.device) for b in tensors[6 * L:]]
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        L = ctx.L
        saved = ctx.saved_tensors
        S, T, fg, bg, w_s, w_t, pix, chan = (saved[i * L:(i + 1) * L] for i in range(8))
        # float32 whatever autocast region the backward is called from, as in the forward
        with torch.autocast(S[0].device.type, enabled=False):
            pix_coef, chan_coef, K = fgd_levels.grad_coefficients(
                fg, bg, w_s, w_t, pix, chan, [g.float() for g in grads[:L]],
                [g.float() for g in grads[L:]], ctx.temps)
            out = passes(ctx.impl)[1](list(S), list(T), pix_coef, chan_coef, K)
        dS, dw_s, dw_t = out[:L], out[L:2 * L], out[2 * L:]
        zero_b = [torch.zeros(shape, dtype=dtype, device=dev) for shape, dtype, dev in ctx.bias_like]
        return (None, None, None, *dS, *([None] * 3 * L), *dw_s, *dw_t, *zero_b)


def fgd_stats(impl: str, S, T, fg, bg, gc_s, gc_t, temps) -> tuple[list[Tensor], list[Tensor]]:
    """The statistics pass of ``impl`` with autograd: (pix per level, chan per level)."""
    L = len(S)
    w_s = [g.mask_weight.reshape(-1).float() for g in gc_s]
    w_t = [g.mask_weight.reshape(-1).float() for g in gc_t]
    b_s, b_t = [g.mask_bias for g in gc_s], [g.mask_bias for g in gc_t]
    out = _FGDStats.apply(impl, [float(t) for t in temps], L,
                          *S, *T, *fg, *bg, *w_s, *w_t, *b_s, *b_t)
    return list(out[:L]), list(out[L:])


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
    with torch.autocast(device.type, enabled=False):
        pix, chan = fgd_stats(impl, S, T, fg, bg, gc_s, gc_t, temps)
        if checking:
            _check_stats_finite(pix, names)
        return fgd_levels.terms_table(pix, chan, gc_s, gc_t, temps)
