"""What the ops of losses of two passes share (CWD, PKD, PFI): a fused implementation as
a statistics pass, a gradient pass and the small math between them, and the autograd
wrapper that runs them.

forward:  chan = stats(S, T)           one read of S and T (every level in one call)
          levels = levels(chan)        the (L,) level losses, O(N*C) or O(N*HW)
backward: coef = coef(chan, dlevels)   the gradient's coefficients, as small
          dS = grad(S, T, coef)        one elementwise sweep
Each piece takes the loss's per-level parameters (CWD: 1 / tau, PKD: N*H*W) last. grad
may return fewer maps than S has: the leading ones, the others get no gradient (PFI's
probabilities, read by the same statistics pass as its features). On a GPU each piece
is one custom op of a few launches, whatever the number of levels (docs/gpu.md,
"Launches on a GPU"); the contracts are in fgdkern/reference/ (channel_passes.py,
imitation_passes.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fgdkern.reference.pfi import same_dtype


class Passes(NamedTuple):
    """stats(S, T, p) -> chan, levels(chan, p) -> (L,), coef(chan, dlevels, p) -> coef,
    grad(S, T, coef, p) -> dS; p: one parameter per level."""
    stats: Callable
    levels: Callable
    coef: Callable
    grad: Callable


# Each loss's passes of an implementation ('cpp', 'triton' or 'torch'): PASSES[loss](impl).
PASSES: dict[str, Callable[[str], Passes]] = {}


class _TwoPassLoss(torch.autograd.Function):
    """The (L,) level losses. Inputs: S*L, T*L (T gets no gradient).

    The statistics are saved for the gradient pass, so the backward is exactly the
    gradient of what the forward computed from them."""

    @staticmethod
    def forward(ctx, loss: str, impl: str, params: list, L: int, *tensors):
        S, T = list(tensors[:L]), list(tensors[L:2 * L])
        p = PASSES[loss](impl)
        chan = p.stats(S, T, params)
        ctx.loss, ctx.impl, ctx.params, ctx.L = loss, impl, params, L
        ctx.save_for_backward(*S, *T, *chan)
        return p.levels(chan, params)

    @staticmethod
    def backward(ctx, dlevels):
        L, saved, p = ctx.L, ctx.saved_tensors, PASSES[ctx.loss](ctx.impl)
        S, T, chan = list(saved[:L]), list(saved[L:2 * L]), list(saved[2 * L:])
        dS = []
        if any(ctx.needs_input_grad[4:4 + L]):
            dS = p.grad(S, T, p.coef(chan, dlevels, ctx.params), ctx.params)
        return (None, None, None, None, *dS, *([None] * (2 * L - len(dS))))


def triton_small_math(loss: str, param: str, coef_rows: int) -> None:
    """Registers fgdkern::<loss>_levels_triton and fgdkern::<loss>_coef_triton: the loss's
    small math on a GPU (fgdkern.triton.<loss>_levels, <loss>_coef) as custom ops with
    fakes. param: the schema type of its per-level parameters ("float" or "int");
    coef_rows: the rows of its coefficient tables, each shaped otherwise as the statistic
    table of its level (one per parameter: the leading tables)."""
    def levels(chan, params):
        from fgdkern import triton as kernels
        return getattr(kernels, f"{loss}_levels")(chan, params)

    def coef(chan, dlevels, params):
        from fgdkern import triton as kernels
        return getattr(kernels, f"{loss}_coef")(chan, dlevels, params)

    levels_op = torch.library.custom_op(
        f"fgdkern::{loss}_levels_triton", levels, mutates_args=(),
        schema=f"(Tensor[] chan, {param}[] params) -> Tensor")
    coef_op = torch.library.custom_op(
        f"fgdkern::{loss}_coef_triton", coef, mutates_args=(),
        schema=f"(Tensor[] chan, Tensor dlevels, {param}[] params) -> Tensor[]")
    levels_op.register_fake(lambda chan, params: chan[0].new_empty(len(params)))
    coef_op.register_fake(lambda chan, dlevels, params: [
        c.new_empty((*c.shape[:-2], coef_rows, c.shape[-1])) for c in chan[:len(params)]])


def level_losses(loss: str, impl: str, S: list[Tensor], T: list[Tensor],
                 params: list) -> Tensor:
    """The (L,) level losses of the maps by PASSES[loss](impl), float32 (float64 for
    float64) whatever autocast says; the gradient flows into S only."""
    pairs = [same_dtype(s, t.detach()) for s, t in zip(S, T)]
    S, T = [s for s, _ in pairs], [t for _, t in pairs]
    with torch.autocast(S[0].device.type, enabled=False):
        return _TwoPassLoss.apply(loss, impl, params, len(S), *S, *T)
