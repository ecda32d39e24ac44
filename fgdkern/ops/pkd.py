"""The PKD op: one moments pass over every level, its small math, one gradient pass.

``pkd_loss`` is what PKDLoss calls; it takes tensors only. For a fused
implementation (docs/pkd.md, "How it is computed"; the order: ops/two_pass.py):
forward:  pkd_stats gives per channel the means and the centred moments m2_s,
          m2_t, m_st over (N, H, W); with sigma = sqrt(m2 / (M - 1)) + 1e-6,
          M = N*H*W, pkd_levels each level's loss
          sum_c [m2_s / sigma_s^2 + m2_t / sigma_t^2 - 2 m_st / (sigma_s sigma_t)] / (2 N C H W);
backward: pkd_coef gives the derivatives of that in m2_s and m_st times the level's
          gradient, and pkd_grad writes dS = 2 g_m2_s (S - mean_s) + g_m_st (T - mean_t)
          in one sweep.
The contract of the passes is fgdkern/reference/channel_passes.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.ops import dispatch
from fgdkern.ops.two_pass import PASSES, Passes, level_losses, triton_small_math
from fgdkern.reference import channel_passes
from fgdkern.reference.pfi import accumulation_dtype
from fgdkern.reference.pkd import PKDTerms, pkd_reference
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
triton_small_math("pkd", "int", len(PKD_COEF))


def passes(impl: str) -> Passes:
    """The passes of a fused implementation: 'cpp', 'triton' or 'torch'. The C++ passes
    take their small math from the contract: on a CPU its few ops cost no launches."""
    cp, ops = channel_passes, torch.ops.fgdkern
    if impl == "cpp":
        stats, levels, coef, grad = ops.pkd_stats_cpp, cp.pkd_levels, cp.pkd_coef, ops.pkd_grad_cpp
    elif impl == "triton":
        stats, levels, coef, grad = (ops.pkd_stats_triton, ops.pkd_levels_triton,
                                     ops.pkd_coef_triton, ops.pkd_grad_triton)
    elif impl == "torch":
        stats, levels, coef, grad = cp.pkd_stats, cp.pkd_levels, cp.pkd_coef, cp.pkd_grad
    else:
        raise ValueError(f"unknown fused implementation {impl!r}")
    return Passes(lambda S, T, pixels: stats(S, T), levels, coef,
                  lambda S, T, coef, pixels: grad(S, T, coef))


PASSES["pkd"] = passes


def pkd_fused(impl: str, S: list[Tensor], T: list[Tensor]) -> PKDTerms:
    """PKD from the channel-moment passes of ``impl`` ('cpp', 'triton' or 'torch')."""
    levels = level_losses("pkd", impl, S, T, [s.shape[0] * s.shape[2] * s.shape[3] for s in S])
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
