"""The score-weighted L2 feature loss in plain PyTorch, written as docs/score-l2.md reads.

Reads, per level, the projected student features P(S) and the teacher features
T, both (N, C, H, W), and the teacher's class-score map w (N, H, W) in [0, 1];
returns every level's sum_{n,c,i,j} w (P(S) - T)^2 / (C sum_{n,i,j} w + eps).
This is the loss of Ultralytics' built-in YOLO distillation; the module
(fgdkern/losses/score_l2.py) runs it as it is: there is no fused path.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.reference.pfi import accumulation_dtype

# docs/score-l2.md, "What it computes": keeps a batch whose teacher sees nothing finite
EPS = 1e-9


def score_l2_level(S: Tensor, T: Tensor, w: Tensor) -> Tensor:
    """One level: S, T (N, C, H, W), w (N, H, W). Gradient into S only."""
    dtype = accumulation_dtype(S, T, w)
    s, t = S.to(dtype), T.detach().to(dtype)
    weight = w.detach().to(dtype).unsqueeze(1)                    # (N, 1, H, W)
    return ((s - t).square() * weight).sum() / (weight.sum() * s.shape[1] + EPS)


def score_l2_reference(feats_S: list[Tensor], feats_T: list[Tensor],
                       scores: list[Tensor]) -> Tensor:
    """(L,) the unweighted loss of every level, accumulated in float32 (float64 stays)."""
    with torch.autocast(feats_S[0].device.type, enabled=False):
        return torch.stack([score_l2_level(*level) for level in zip(feats_S, feats_T, scores)])
