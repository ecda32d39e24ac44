"""Channel-wise distillation in plain PyTorch, written as docs/cwd.md reads.

Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021:
each channel of each image becomes a distribution over its pixels, the softmax
of eq. (3) at temperature tau, and the student's is pulled to the teacher's by
the KL divergence of eq. (4), scaled by tau^2 and averaged over the channels
(and, as the published code does, over the images). Dense and direct on purpose:
the fused path (fgdkern/ops/cwd.py) is tested against this function.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fgdkern.reference.pfi import accumulation_dtype


class CWDTerms(NamedTuple):
    """The unweighted CWD loss (docs/cwd.md, "What it computes"), float32 (float64 for float64)."""
    cwd_loss: Tensor       # scalar: sum over levels of level_losses
    level_losses: Tensor   # (L,): tau^2 * sum_{n,c} KL / (N C) per level


def cwd_level(S: Tensor, T: Tensor, tau: float) -> Tensor:
    """One level's loss: a scalar. Gradient into S only."""
    dtype = accumulation_dtype(S, T)
    N, C = S.shape[:2]
    s = S.to(dtype).reshape(N, C, -1) / tau             # eq. (3): a softmax over the H*W pixels
    t = T.detach().to(dtype).reshape(N, C, -1) / tau
    log_p_s, log_p_t = s.log_softmax(2), t.log_softmax(2)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(2)    # eq. (4), one (n, c) each
    return tau ** 2 * kl.sum() / (N * C)


def cwd_reference(S: list[Tensor], T: list[Tensor], tau: float) -> CWDTerms:
    """The unweighted CWD loss of a pyramid of per level (N, C, H_l, W_l) maps."""
    with torch.autocast(S[0].device.type, enabled=False):
        levels = torch.stack([cwd_level(s, t, tau) for s, t in zip(S, T)])
    return CWDTerms(levels.sum(), levels)
