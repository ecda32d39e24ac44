"""PKDLoss: Pearson-correlation feature imitation over one level or a pyramid (docs/pkd.md).

PKDLoss.forward -> check the maps (fgdkern/losses/pairs.py) -> bilinear resize where
student and teacher differ in size -> fgdkern.ops.pkd.pkd_loss (dispatch: the fused
channel-moment passes or the reference) -> loss_weight * the sum over levels.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fgdkern import _checks
from fgdkern.losses.pairs import as_levels, check_levels, check_number
from fgdkern.ops import dispatch
from fgdkern.ops.pfi import check_finite
from fgdkern.ops.pkd import pkd_loss
from fgdkern.reference.pkd import PKDTerms


def resized(S: Tensor, T: Tensor, resize_stu: bool) -> tuple[Tensor, Tensor]:
    """The pair at one size: the student resized to the teacher's (resize_stu) or the
    teacher to the student's, bilinearly, where they differ (docs/pkd.md, "Resizing")."""
    if S.shape[2:] == T.shape[2:]:
        return S, T
    if resize_stu:
        return F.interpolate(S, T.shape[2:], mode="bilinear"), T
    return S, F.interpolate(T, S.shape[2:], mode="bilinear")


class PKDLoss(nn.Module):
    """PKD's feature imitation (docs/pkd.md): 1 - Pearson correlation per channel.

    forward(preds_S, preds_T) -> float32 scalar loss_weight * sum over levels of
    mean((norm S - norm T)^2) / 2, each channel standardised over (N, H, W) with its
    mean and unbiased std + 1e-6. preds_S / preds_T: one level's (N, C, H, W) maps, or
    lists (tuples) of levels; student and teacher of a level have one width; where
    their H, W differ, the student is resized to the teacher's (resize_stu=True) or the
    teacher to the student's, bilinearly. Gradients flow into preds_S only.
    """

    def __init__(self, loss_weight: float = 1.0, resize_stu: bool = True, backend: str = "auto",
                 check_finite: bool = False):
        super().__init__()
        dispatch.check_backend("pkd", backend)
        _checks.check_flag("check_finite", check_finite)
        _checks.check_flag("resize_stu", resize_stu)
        self.loss_weight = check_number("loss_weight", loss_weight)
        self.resize_stu, self.backend, self.check_finite = resize_stu, backend, check_finite

    def terms(self, preds_S, preds_T) -> PKDTerms:
        """The unweighted loss: PKDTerms(pkd_loss, level_losses)."""
        S, T, sfx = as_levels(preds_S, preds_T)
        if not _checks.is_compiling():
            check_levels(S, T, sfx, same_size=False)
            if self.check_finite:
                check_finite({f"{a}{x}": m for a, ms in (("preds_S", S), ("preds_T", T))
                              for x, m in zip(sfx, ms)})
        pairs = [resized(s, t, self.resize_stu) for s, t in zip(S, T)]
        S, T = [s for s, _ in pairs], [t for _, t in pairs]
        if not _checks.is_compiling():
            for s, x in zip(S, sfx):
                if s.shape[0] * s.shape[2] * s.shape[3] < 2:
                    raise ValueError(f"preds_S{x} has N*H*W = 1 value per channel: a standard "
                                     "deviation needs at least 2")
        return pkd_loss(self.backend, S, T)

    def forward(self, preds_S, preds_T) -> Tensor:
        return self.loss_weight * self.terms(preds_S, preds_T).pkd_loss

    def extra_repr(self) -> str:
        return (f"loss_weight={self.loss_weight}, resize_stu={self.resize_stu}, "
                f"backend={self.backend!r}, check_finite={self.check_finite}")
