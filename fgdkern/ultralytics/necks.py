"""CWD, PKD and MGD as losses of a YOLO neck: built from (num_levels, widths of the
student, widths of the teacher, options), as fgdkern.ultralytics.losses builds every
selectable loss. Nothing here imports Ultralytics.

CWD and PKD compare channel c with channel c, so where a level's widths differ a 1x1
convolution without bias (``connector.<k>``) maps the student's map to the teacher's
width, as mmyolo's RTMDet distillation configs connect them; ``normalize`` adds their
parameter-free batch normalisation of both maps (docs/cwd.md, "Parameters").
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fgdkern import _checks
from fgdkern.losses.cwd import CWDLoss
from fgdkern.losses.mgd import MGDLoss
from fgdkern.losses.pkd import PKDLoss


def _standardised(x: Tensor) -> Tensor:
    """Batch normalisation without affine parameters or running statistics."""
    return F.batch_norm(x, None, None, training=True)


class _Connected(nn.Module):
    def __init__(self, num_levels, student_channels, teacher_channels, loss: nn.Module,
                 normalize: bool):
        super().__init__()
        _checks.check_flag("normalize", normalize)
        ws = _checks.level_widths("student_channels", student_channels, num_levels)
        wt = _checks.level_widths("teacher_channels", teacher_channels, num_levels)
        self.num_levels, self.normalize, self.loss = num_levels, normalize, loss
        self.connector = nn.ModuleList(
            nn.Conv2d(s, t, 1, bias=False) if s != t else nn.Identity() for s, t in zip(ws, wt))

    def forward(self, feats_S, feats_T) -> Tensor:
        S = [c(s) for c, s in zip(self.connector, feats_S)]
        T = list(feats_T)
        if self.normalize:
            S, T = [_standardised(s) for s in S], [_standardised(t.detach()) for t in T]
        return self.loss(S, T)


class NeckCWD(_Connected):
    def __init__(self, num_levels, student_channels, teacher_channels, tau: float = 1.0,
                 loss_weight: float = 1.0, normalize: bool = True, backend: str = "auto"):
        super().__init__(num_levels, student_channels, teacher_channels,
                         CWDLoss(tau, loss_weight, backend), normalize)


class NeckPKD(_Connected):
    def __init__(self, num_levels, student_channels, teacher_channels, loss_weight: float = 1.0,
                 normalize: bool = False, backend: str = "auto"):
        super().__init__(num_levels, student_channels, teacher_channels,
                         PKDLoss(loss_weight, backend=backend), normalize)


class NeckMGD(MGDLoss):
    """MGDLoss with one align and generation block per level."""

    def __init__(self, num_levels, student_channels, teacher_channels, alpha_mgd: float = 2e-5,
                 lambda_mgd: float = 0.65, backend: str = "auto"):
        super().__init__(_checks.level_widths("student_channels", student_channels, num_levels),
                         _checks.level_widths("teacher_channels", teacher_channels, num_levels),
                         alpha_mgd, lambda_mgd, backend)
        self.num_levels = num_levels
