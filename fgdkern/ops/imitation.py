"""The imitation passes as differentiable ops, shared by FKD and PFI.

``imitation_stats(impl, X, Y, w)`` runs the statistics pass of a fused
implementation over every level at once and returns, per level, the pixel
table (N, 3, HW) and the channel table (N, 2, C) of
``fgdkern.reference.imitation_passes`` (rows in ``fgdkern.rows``). Autograd
flows into X and Y; the backward turns the gradients of the tables into the
gradient pass's coefficients and runs that pass once for X and, when Y needs
a gradient, once for Y with the roles swapped (d sq_d / dY = -d sq_d / dX).
The channel weights w are constants of the loss (detached masks).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from fgdkern._device import constant_rows
from fgdkern.ops import dispatch
from fgdkern.reference import imitation_passes
from fgdkern.rows import IMIT_CHAN, IMIT_PIX


# ---------------------------------------------------------------- op registry
def _stats_fake(X, Y, w):
    pix = [x.new_empty((x.shape[0], len(IMIT_PIX), x.shape[2] * x.shape[3]),
                       dtype=torch.float32) for x in X]
    chan = [x.new_empty((x.shape[0], len(IMIT_CHAN), x.shape[1]), dtype=torch.float32)
            for x in X]
    return pix + chan


def _grad_fake(X, Y, pix_coef, chan_coef):
    return [torch.empty_like(x) for x in X]


if dispatch.AVAILABLE[("imitation", "cpp")]:
    torch.library.register_fake("fgdkern::imitation_stats_cpp")(_stats_fake)
    torch.library.register_fake("fgdkern::imitation_grad_cpp")(_grad_fake)


@torch.library.custom_op("fgdkern::imitation_stats_triton", mutates_args=())
def _imitation_stats_triton(X: list[Tensor], Y: list[Tensor], w: list[Tensor]) -> list[Tensor]:
    from fgdkern.triton import imitation_stats
    return imitation_stats(X, Y, w)


@torch.library.custom_op("fgdkern::imitation_grad_triton", mutates_args=())
def _imitation_grad_triton(X: list[Tensor], Y: list[Tensor], pix_coef: list[Tensor],
                           chan_coef: list[Tensor]) -> list[Tensor]:
    from fgdkern.triton import imitation_grad
    return imitation_grad(X, Y, pix_coef, chan_coef)


_imitation_stats_triton.register_fake(_stats_fake)
_imitation_grad_triton.register_fake(_grad_fake)


def passes(impl: str) -> tuple[Callable, Callable]:
    """(imitation_stats, imitation_grad) of a fused implementation: 'cpp', 'triton' or 'torch'."""
    if impl == "cpp":
        return torch.ops.fgdkern.imitation_stats_cpp, torch.ops.fgdkern.imitation_grad_cpp
    if impl == "triton":
        return torch.ops.fgdkern.imitation_stats_triton, torch.ops.fgdkern.imitation_grad_triton
    if impl == "torch":
        return imitation_passes.imitation_stats, imitation_passes.imitation_grad
    raise ValueError(f"unknown fused implementation {impl!r}")


def constant_tables(X: list[Tensor], values: tuple) -> list[Tensor]:
    """Per map x (N, C, H, W) of X a float32 (N, len(values), C) table whose row r holds
    values[r], made once and read-only: the unit weights and coefficients of the passes."""
    return [constant_rows((x.shape[0],), values, x.shape[1], x.device) for x in X]


# ------------------------------------------------------------------ autograd
def _acc(x: Tensor) -> Tensor:
    """x in the accumulation dtype: float32, or float64 for float64 (gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _ImitationStats(torch.autograd.Function):
    """Differentiable imitation_stats over L levels. Inputs: X*L, Y*L, w*L.

    has_y False: Y is X itself (no difference wanted), and gets no second pass; the
    inputs are then X*L, w*L (torch.compile cannot trace one tensor passed twice).
    """

    @staticmethod
    def _split(L: int, has_y: bool, tensors) -> tuple[list, list, list]:
        X = list(tensors[:L])
        Y = list(tensors[L:2 * L]) if has_y else X
        return X, Y, list(tensors[(2 if has_y else 1) * L:])

    @staticmethod
    def forward(ctx, impl: str, L: int, has_y: bool, *tensors):
        X, Y, w = _ImitationStats._split(L, has_y, tensors)
        out = passes(impl)[0](X, Y, w)
        ctx.impl, ctx.L, ctx.has_y = impl, L, has_y
        ctx.save_for_backward(*tensors)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        L, run = ctx.L, passes(ctx.impl)[1]
        saved = ctx.saved_tensors
        X, Y, w = _ImitationStats._split(L, ctx.has_y, saved)
        with torch.autocast(X[0].device.type, enabled=False):
            coefs = [imitation_passes.coefficients(_acc(gp), _acc(gc), wl)
                     for gp, gc, wl in zip(grads[:L], grads[L:], w)]
            need_x = ctx.needs_input_grad[3]
            dX = run(X, Y, [c[0] for c in coefs], [c[1] for c in coefs]) if need_x else [None] * L
            need_y = ctx.has_y and ctx.needs_input_grad[3 + L]
            dY = run(Y, X, [c[2] for c in coefs], [c[3] for c in coefs]) if need_y else [None] * L
        return (None, None, None, *dX, *(dY if ctx.has_y else []), *([None] * L))


def imitation_stats(impl: str, X: list[Tensor], Y: list[Tensor] | None = None,
                    w: list[Tensor] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """The statistics pass of ``impl`` with autograd: (pix per level, chan per level).

    impl: 'cpp', 'triton' or 'torch' (see ``dispatch.resolve("imitation", ...)``).
    X, Y: per level (N, C, H, W) maps of one dtype per level; Y None: no
    difference (sq_d = 0). w: per level (N, C) (or (C,)) channel weights of
    sq_d, None for ones; detached, read in float32 (float64 for float64 maps,
    which only the 'torch' implementation takes).
    """
    L = len(X)
    has_y = Y is not None
    if w is None:
        w = [x.new_ones((x.shape[0], x.shape[1]), dtype=_acc(x).dtype) for x in X]
    else:
        w = [_acc(wl.detach()).to(_acc(x).dtype).expand(x.shape[0], x.shape[1]).contiguous()
             for wl, x in zip(w, X)]
    out = _ImitationStats.apply(impl, L, has_y, *X, *(Y if has_y else []), *w)
    return list(out[:L]), list(out[L:])
