"""The PKD op: one moments pass over every level, O(C) torch, one gradient pass.

``pkd_loss`` is what PKDLoss calls; it takes tensors only. For a fused
implementation (docs/pkd.md, "How it is computed"):
forward:  pkd_stats gives per channel the means and the centred moments m2_s,
          m2_t, m_st over (N, H, W); with sigma = sqrt(m2 / (M - 1)) + 1e-6,
          M = N*H*W, each level's loss is
          sum_c [m2_s / sigma_s^2 + m2_t / sigma_t^2 - 2 m_st / (sigma_s sigma_t)] / (2 N C H W);
backward: autograd of that O(C) math gives the gradients of m2_s and m_st, and
          pkd_grad writes dS = 2 g_m2_s (S - mean_s) + g_m_st (T - mean_t) in one sweep.
The contract of the passes is fgdkern/reference/channel_passes.py.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from fgdkern.ops import dispatch
from fgdkern.reference import channel_passes
from fgdkern.reference.pfi import accumulation_dtype
from fgdkern.reference.pkd import EPS, PKDTerms, pkd_reference
from fgdkern.rows import PKD_CHAN, PKD_COEF


# ---------------------------------------------------------------- op registry
def _stats_fake(S, T):
    return [s.new_empty((len(PKD_CHAN), s.shape[1]), dtype=torch.float32) for s in S]


def _grad_fake(S, T, coef):
    return [torch.empty_like(s) for s in S]


if dispatch.AVAILABLE[("pkd", "cpp")]:
    torch.library.register_fake("fgdkern::pkd_stats_cpp")(_stats_fake)
    torch.library.register_fake("fgdkern::pkd_grad_cpp")(_grad_fake)


@torch.library.custom_op("fgdkern::pkd_stats_triton", mutates_args=())
def _pkd_stats_triton(S: list[Tensor], T: list[Tensor]) -> list[Tensor]:
    from fgdkern.triton import pkd_stats
    return pkd_stats(S, T)


@torch.library.custom_op("fgdkern::pkd_grad_triton", mutates_args=())
def _pkd_grad_triton(S: list[Tensor], T: list[Tensor], coef: list[Tensor]) -> list[Tensor]:
    from fgdkern.triton import pkd_grad
    return pkd_grad(S, T, coef)


_pkd_stats_triton.register_fake(_stats_fake)
_pkd_grad_triton.register_fake(_grad_fake)


def passes(impl: str) -> tuple[Callable, Callable]:
    """(pkd_stats, pkd_grad) of a fused implementation: 'cpp', 'triton' or 'torch'."""
    if impl == "cpp":
        return torch.ops.fgdkern.pkd_stats_cpp, torch.ops.fgdkern.pkd_grad_cpp
    if impl == "triton":
        return torch.ops.fgdkern.pkd_stats_triton, torch.ops.fgdkern.pkd_grad_triton
    if impl == "torch":
        return channel_passes.pkd_stats, channel_passes.pkd_grad
    raise ValueError(f"unknown fused implementation {impl!r}")


# ------------------------------------------------------------------ autograd
MOMENTS = ("m2_s", "m2_t", "m_st")


class _PKDMoments(torch.autograd.Function):
    """Per level the (3, C) table of m2_s, m2_t, m_st. Inputs: S*L, T*L (T gets no gradient).

    The means are saved for the gradient pass, not returned: no loss term reads them
    (m2 and m_st are centred, so their gradients already hold the means' share)."""

    @staticmethod
    def forward(ctx, impl: str, L: int, *tensors):
        S, T = list(tensors[:L]), list(tensors[L:])
        stats = passes(impl)[0](S, T)
        ctx.impl, ctx.L = impl, L
        ctx.save_for_backward(*S, *T, *stats)
        return tuple(st[[getattr(PKD_CHAN, r) for r in MOMENTS]] for st in stats)

    @staticmethod
    def backward(ctx, *grads):
        L, saved = ctx.L, ctx.saved_tensors
        S, T, stats = list(saved[:L]), list(saved[L:2 * L]), list(saved[2 * L:])
        dS = [None] * L
        if any(ctx.needs_input_grad[2:2 + L]):
            coef = []
            for st, g in zip(stats, grads):
                g = g.to(st.dtype)
                rows = dict(a=2 * g[MOMENTS.index("m2_s")], mean_s=st[PKD_CHAN.mean_s],
                            b=g[MOMENTS.index("m_st")], mean_t=st[PKD_CHAN.mean_t])
                coef.append(torch.stack([rows[r] for r in PKD_COEF], 0))
            dS = passes(ctx.impl)[1](S, T, coef)
        return (None, None, *dS, *([None] * L))


def level_from_moments(moments: Tensor, shape) -> Tensor:
    """One level's loss from its (3, C) moments: the squared distance of the standardised
    maps summed per channel, over 2 N C H W (docs/pkd.md, "How it is computed")."""
    m2_s, m2_t, m_st = moments.unbind(0)
    N, C, H, W = shape
    M = N * H * W
    sigma_s = (m2_s / (M - 1)).sqrt() + EPS
    sigma_t = (m2_t / (M - 1)).sqrt() + EPS
    per_channel = m2_s / sigma_s ** 2 + m2_t / sigma_t ** 2 - 2 * m_st / (sigma_s * sigma_t)
    return per_channel.sum() / (2 * N * C * H * W)


def pkd_fused(impl: str, S: list[Tensor], T: list[Tensor]) -> PKDTerms:
    """PKD from the channel-moment passes of ``impl`` ('cpp', 'triton' or 'torch')."""
    pairs = [(s, t.detach()) if s.dtype == t.dtype else
             (s.to(accumulation_dtype(s, t)), t.detach().to(accumulation_dtype(s, t)))
             for s, t in zip(S, T)]
    S, T = [s for s, _ in pairs], [t for _, t in pairs]
    with torch.autocast(S[0].device.type, enabled=False):
        moments = _PKDMoments.apply(impl, len(S), *S, *T)
        levels = torch.stack([level_from_moments(m, s.shape) for m, s in zip(moments, S)])
    return PKDTerms(levels.sum(), levels)


def pkd_loss(backend: str, S: list[Tensor], T: list[Tensor]) -> PKDTerms:
    """The unweighted PKD loss (docs/pkd.md) of per level (N, C, H_l, W_l) maps of equal
    shapes (resized before, where the spatial sizes differed).

    The implementation is ``dispatch.resolve("pkd", backend, ...)`` for the accumulation
    dtype of the inputs: float64 anywhere runs the reference under "auto"."""
    dtype = accumulation_dtype(*S, *T)
    impl = dispatch.resolve("pkd", backend, S[0].device, dtype)
    if impl == "reference":
        return pkd_reference(S, T)
    return pkd_fused(impl, S, T)
