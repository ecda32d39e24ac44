"""The CWD op: one statistics pass over every level, its small math, one gradient pass.

``cwd_loss`` is what CWDLoss calls; it takes tensors only. For a fused
implementation (docs/cwd.md, "How it is computed"; the order: ops/two_pass.py):
forward:  cwd_stats gives per (n, c) the log-sum-exps of S / tau and T / tau and
          KL(p_t || p_s); cwd_levels each level's loss tau^2 * sum kl / (N * C);
backward: cwd_coef gives k = dlevel * tau / (N * C) per (n, c) (d level / d kl times
          inv_tau), and cwd_grad writes dS = k * (p_s - p_t) from the saved
          log-sum-exps in one sweep.
The contract of the passes is fgdkern/reference/channel_passes.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.ops import dispatch
from fgdkern.ops.two_pass import PASSES, Passes, level_losses, triton_small_math
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
triton_small_math("cwd", "float", len(CWD_COEF))


def passes(impl: str) -> Passes:
    """The passes of a fused implementation: 'cpp', 'triton' or 'torch'. The C++ passes
    take their small math from the contract: on a CPU its few ops cost no launches."""
    cp = channel_passes
    if impl == "cpp":
        ops = torch.ops.fgdkern
        return Passes(ops.cwd_stats_cpp, cp.cwd_levels, cp.cwd_coef, ops.cwd_grad_cpp)
    if impl == "triton":
        ops = torch.ops.fgdkern
        return Passes(ops.cwd_stats_triton, ops.cwd_levels_triton, ops.cwd_coef_triton,
                      ops.cwd_grad_triton)
    if impl == "torch":
        return Passes(cp.cwd_stats, cp.cwd_levels, cp.cwd_coef, cp.cwd_grad)
    raise ValueError(f"unknown fused implementation {impl!r}")


PASSES["cwd"] = passes


def cwd_fused(impl: str, S: list[Tensor], T: list[Tensor], tau: float) -> CWDTerms:
    """CWD from the channel-softmax passes of ``impl`` ('cpp', 'triton' or 'torch')."""
    levels = level_losses("cwd", impl, S, T, [1.0 / tau] * len(S))
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
