"""Prediction-guided Feature Imitation in plain PyTorch, written as docs/pfi.md reads.

Reads, per level, the student features F_s (after align), the teacher
features F_t and the two probability maps P_s, P_t; returns the unweighted
loss of every level and their mean (paper eqs. (7)-(9)). Dense and direct on
purpose: the fused path (fgdkern/ops/pfi.py) is tested against this function.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class PFITerms(NamedTuple):
    """The unweighted PFI loss (docs/pfi.md, "What it computes"), float32 (float64 for float64)."""
    pfi_loss: Tensor       # scalar: mean over levels of level_losses, eq. (9)
    level_losses: Tensor   # (L,): 1/(H_l W_l) sum_ij (P_dif F_dif)^2 per level, image mean


def accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for float16/bfloat16/float32 inputs, float64 when any input is float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def same_dtype(S: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
    """S and T in one dtype (a pass reads one per level): both upcast, exactly, to their
    accumulation dtype where they differ, a copy only then."""
    if S.dtype == T.dtype:
        return S, T
    dtype = accumulation_dtype(S, T)
    return S.to(dtype), T.to(dtype)


def pfi_level(F_s: Tensor, F_t: Tensor, P_s: Tensor, P_t: Tensor) -> Tensor:
    """One level's loss, averaged over the images: a scalar. Gradient into F_s only."""
    dtype = accumulation_dtype(F_s, F_t, P_s, P_t)
    fs, ft = F_s.to(dtype), F_t.detach().to(dtype)
    ps, pt = P_s.detach().to(dtype), P_t.detach().to(dtype)
    P_dif = (ps - pt).square().mean(1)                 # eq. (7): (N, H, W), a detached weight
    F_dif = (fs - ft).square().mean(1)                 # eq. (8): (N, H, W)
    N, H, W = F_dif.shape
    return (P_dif * F_dif).square().sum() / (N * H * W)  # eq. (9), one level, mean over images


def pfi_reference(feats_S: list[Tensor], feats_T: list[Tensor], probs_S: list[Tensor],
                  probs_T: list[Tensor]) -> PFITerms:
    """The unweighted PFI loss of a pyramid: per level (N, C, H_l, W_l) features and
    (N, K, H_l, W_l) probabilities. Accumulated in float32 (float64 stays float64)."""
    with torch.autocast(feats_S[0].device.type, enabled=False):
        levels = torch.stack([pfi_level(*args) for args in zip(feats_S, feats_T, probs_S, probs_T)])
    return PFITerms(levels.mean(), levels)
