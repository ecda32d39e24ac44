"""The CWD op: one statistics pass over every level, O(N*C) torch, one gradient pass.

``cwd_loss`` is what CWDLoss calls; it takes tensors only. For a fused
implementation (docs/cwd.md, "How it is computed"):
forward:  cwd_stats gives per (n, c) the log-sum-exps of S / tau and T / tau and
          KL(p_t || p_s); each level's loss is tau^2 * sum kl / (N * C);
backward: the gradient of kl is k = g * inv_tau per (n, c), and cwd_grad writes
          dS = k * (p_s - p_t) from the saved log-sum-exps in one sweep.
The contract of the passes is fgdkern/reference/channel_passes.py.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from fgdkern.ops import dispatch
from fgdkern.reference import channel_passes
from fgdkern.reference.cwd import CWDTerms, cwd_reference
from fgdkern.reference.pfi import accumulation_dtype
from fgdkern.rows import CWD_CHAN, CWD_COEF


# ---------------------------------------------------------------- op registry
def _stats_fake(S, T, inv_tau):
    return [s.new_empty((s.shape[0], len(CWD_CHAN), s.shape[1]), dtype=torch.float32)
            for s in S]


def _grad_fake(S, T, coef, inv_tau):
    return [torch.empty_like(s) for s in S]


if dispatch.AVAILABLE[("cwd", "cpp")]:
    torch.library.register_fake("fgdkern::cwd_stats_cpp")(_stats_fake)
    torch.library.register_fake("fgdkern::cwd_grad_cpp")(_grad_fake)


@torch.library.custom_op("fgdkern::cwd_stats_triton", mutates_args=())
def _cwd_stats_triton(S: list[Tensor], T: list[Tensor], inv_tau: list[float]) -> list[Tensor]:
    from fgdkern.triton import cwd_stats
    return cwd_stats(S, T, inv_tau)


@torch.library.custom_op("fgdkern::cwd_grad_triton", mutates_args=())
def _cwd_grad_triton(S: list[Tensor], T: list[Tensor], coef: list[Tensor],
                     inv_tau: list[float]) -> list[Tensor]:
    from fgdkern.triton import cwd_grad
    return cwd_grad(S, T, coef, inv_tau)


_cwd_stats_triton.register_fake(_stats_fake)
_cwd_grad_triton.register_fake(_grad_fake)


def passes(impl: str) -> tuple[Callable, Callable]:
    """(cwd_stats, cwd_grad) of a fused implementation: 'cpp', 'triton' or 'torch'."""
    if impl == "cpp":
        return torch.ops.fgdkern.cwd_stats_cpp, torch.ops.fgdkern.cwd_grad_cpp
    if impl == "triton":
        return torch.ops.fgdkern.cwd_stats_triton, torch.ops.fgdkern.cwd_grad_triton
    if impl == "torch":
        return channel_passes.cwd_stats, channel_passes.cwd_grad
    raise ValueError(f"unknown fused implementation {impl!r}")


# ------------------------------------------------------------------ autograd
class _CWD(torch.autograd.Function):
    """Per level the (N, C) table of KL(p_t || p_s). Inputs: S*L, T*L (T gets no gradient).

    Only kl is an output: the log-sum-exps are saved for the gradient pass, so that
    the backward is exactly the gradient of what the loss uses."""

    @staticmethod
    def forward(ctx, impl: str, inv_tau: list, L: int, *tensors):
        S, T = list(tensors[:L]), list(tensors[L:])
        stats = passes(impl)[0](S, T, inv_tau)
        ctx.impl, ctx.inv_tau, ctx.L = impl, inv_tau, L
        ctx.save_for_backward(*S, *T, *stats)
        return tuple(st[:, CWD_CHAN.kl] for st in stats)

    @staticmethod
    def backward(ctx, *grads):
        L, saved = ctx.L, ctx.saved_tensors
        S, T, stats = list(saved[:L]), list(saved[L:2 * L]), list(saved[2 * L:])
        dS = [None] * L
        if any(ctx.needs_input_grad[3:3 + L]):
            coef = []
            for st, g, inv_tau in zip(stats, grads, ctx.inv_tau):
                rows = dict(lse_s=st[:, CWD_CHAN.lse_s], lse_t=st[:, CWD_CHAN.lse_t],
                            k=g.to(st.dtype) * inv_tau)     # d kl / dS = inv_tau (p_s - p_t)
                coef.append(torch.stack([rows[r] for r in CWD_COEF], 1))
            dS = passes(ctx.impl)[1](S, T, coef, ctx.inv_tau)
        return (None, None, None, *dS, *([None] * L))


def _same_dtype(S: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
    """S and T in one dtype (a pass reads one per level): both upcast where they differ."""
    if S.dtype == T.dtype:
        return S, T
    dtype = accumulation_dtype(S, T)
    return S.to(dtype), T.to(dtype)


def cwd_fused(impl: str, S: list[Tensor], T: list[Tensor], tau: float) -> CWDTerms:
    """CWD from the channel-softmax passes of ``impl`` ('cpp', 'triton' or 'torch')."""
    pairs = [_same_dtype(s, t.detach()) for s, t in zip(S, T)]
    S, T = [s for s, _ in pairs], [t for _, t in pairs]
    inv_tau = [1.0 / tau] * len(S)
    with torch.autocast(S[0].device.type, enabled=False):
        kl = _CWD.apply(impl, inv_tau, len(S), *S, *T)
        levels = torch.stack([tau ** 2 * k.sum() / k.numel() for k in kl])  # sum / (N C)
    return CWDTerms(levels.sum(), levels)


def cwd_loss(backend: str, S: list[Tensor], T: list[Tensor], tau: float) -> CWDTerms:
    """The unweighted CWD loss (docs/cwd.md) of per level (N, C, H_l, W_l) maps.

    The implementation is ``dispatch.resolve("cwd", backend, ...)`` for the accumulation
    dtype of the inputs: float64 anywhere runs the reference under "auto"."""
    dtype = accumulation_dtype(*S, *T)
    impl = dispatch.resolve("cwd", backend, S[0].device, dtype)
    if impl == "reference":
        return cwd_reference(S, T, tau)
    return cwd_fused(impl, S, T, float(tau))
