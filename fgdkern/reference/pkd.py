"""PKD's feature imitation in plain PyTorch, written as docs/pkd.md reads.

Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022, Sec. 3: every channel of the student's and
of the teacher's map is standardised to zero mean and unit variance over the
images and pixels, and the student imitates the teacher with half the mean
squared error of the standardised maps, which is 1 - r with r the Pearson
correlation of the two channels. Standard deviations are unbiased, plus 1e-6, as
in the published code. Dense and direct on purpose: the fused path
(fgdkern/ops/pkd.py) is tested against this function.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fgdkern.reference.pfi import accumulation_dtype

EPS = 1e-6   # added to each channel's standard deviation (the published code's)


class PKDTerms(NamedTuple):
    """The unweighted PKD loss (docs/pkd.md, "What it computes"), float32 (float64 for float64)."""
    pkd_loss: Tensor       # scalar: sum over levels of level_losses
    level_losses: Tensor   # (L,): mean (norm S - norm T)^2 / 2 per level


def standardise(F: Tensor) -> Tensor:
    """Each channel of F (N, C, H, W) less its mean over (N, H, W), over its std + EPS."""
    mean = F.mean((0, 2, 3), keepdim=True)
    std = F.std((0, 2, 3), keepdim=True)                 # unbiased: N*H*W - 1
    return (F - mean) / (std + EPS)


def pkd_level(S: Tensor, T: Tensor) -> Tensor:
    """One level's loss: a scalar. Gradient into S only."""
    dtype = accumulation_dtype(S, T)
    return (standardise(S.to(dtype)) - standardise(T.detach().to(dtype))).square().mean() / 2


def pkd_reference(S: list[Tensor], T: list[Tensor]) -> PKDTerms:
    """The unweighted PKD loss of a pyramid of per level (N, C, H_l, W_l) maps (the
    student already resized to the teacher's size, or the other way round)."""
    with torch.autocast(S[0].device.type, enabled=False):
        levels = torch.stack([pkd_level(s, t) for s, t in zip(S, T)])
    return PKDTerms(levels.sum(), levels)
