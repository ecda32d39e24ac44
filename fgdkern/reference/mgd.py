"""Masked generative distillation in plain PyTorch, written as docs/mgd.md reads.

Yang et al., "Masked Generative Distillation", ECCV 2022: pixels of the student's
aligned map are dropped by a random mask (eq. (2)), a generation block of two
3x3 convolutions with a ReLU between them regenerates the teacher's map from
what is left (eq. (3)), and the loss is the squared distance of the generated map
to the teacher's (eq. (4)), divided by the batch size as in the published code.
Takes tensors (the masks, the parameters as MGDParams), never modules. Dense and
direct on purpose: the fused path (fgdkern/ops/mgd.py) is tested against it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fgdkern.reference.pfi import accumulation_dtype


class MGDParams(NamedTuple):
    """One level's parameters: the optional 1x1 align conv and the generation block."""
    align_weight: Optional[Tensor]   # (Ct, Cs, 1, 1), None when the widths are equal
    align_bias: Optional[Tensor]     # (Ct,)
    weight1: Tensor                  # (Ct, Ct, 3, 3): generation.0
    bias1: Tensor
    weight2: Tensor                  # (Ct, Ct, 3, 3): generation.2
    bias2: Tensor


class MGDTerms(NamedTuple):
    """The unweighted MGD loss (docs/mgd.md, "What it computes"), float32 (float64 for float64)."""
    mgd_loss: Tensor       # scalar: sum over levels of level_losses
    level_losses: Tensor   # (L,): sum (G(f_align(S) * M) - T)^2 / N per level


def generate(S: Tensor, mask: Tensor, p: MGDParams, dtype: torch.dtype) -> Tensor:
    """G(f_align(S) * M), eqs. (2)-(3), computed in ``dtype``."""
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    s = S.to(dtype)
    if p.align_weight is not None:
        s = F.conv2d(s, cast(p.align_weight), cast(p.align_bias))
    hidden = F.conv2d(s * mask.to(dtype), cast(p.weight1), cast(p.bias1), padding=1).relu()
    return F.conv2d(hidden, cast(p.weight2), cast(p.bias2), padding=1)


def mgd_level(S: Tensor, T: Tensor, mask: Tensor, p: MGDParams) -> Tensor:
    """One level's loss: a scalar. Gradient into S and the parameters, not into T."""
    dtype = accumulation_dtype(S, T)
    G = generate(S, mask, p, dtype)
    return (G - T.detach().to(dtype)).square().sum() / S.shape[0]    # eq. (4), over N


def mgd_reference(S: list[Tensor], T: list[Tensor], masks: list[Tensor],
                  params: list[MGDParams]) -> MGDTerms:
    """The unweighted MGD loss of a pyramid: per level the student (N, Cs, H, W), the
    teacher (N, Ct, H, W), the mask (N, 1, H, W) of ones and zeros, the parameters."""
    with torch.autocast(S[0].device.type, enabled=False):
        levels = torch.stack([mgd_level(*args) for args in zip(S, T, masks, params)])
    return MGDTerms(levels.sum(), levels)
