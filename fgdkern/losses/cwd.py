"""CWDLoss: channel-wise distillation over one level or a pyramid (docs/cwd.md).

CWDLoss.forward -> check the maps (fgdkern/losses/pairs.py) -> fgdkern.ops.cwd.cwd_loss
(dispatch: the fused channel-softmax passes or the reference) -> loss_weight * the
sum over levels.
"""
from __future__ import annotations

from torch import Tensor, nn

from fgdkern import _checks
from fgdkern.losses.pairs import as_levels, check_levels, check_number
from fgdkern.ops import dispatch
from fgdkern.ops.cwd import cwd_loss
from fgdkern.ops.pfi import check_finite
from fgdkern.reference.cwd import CWDTerms


class CWDLoss(nn.Module):
    """Channel-wise distillation (docs/cwd.md), paper eqs. (3)-(4).

    forward(preds_S, preds_T) -> float32 scalar loss_weight * sum over levels of
    tau^2 * sum_{n,c} KL(softmax_ij(T_nc / tau) || softmax_ij(S_nc / tau)) / (N C).
    preds_S / preds_T: one level's (N, C, H, W) maps, or lists (tuples) of levels
    (widths may differ between levels, not between student and teacher). Gradients
    flow into preds_S only. check_finite: raise ValueError on a NaN or Inf input (one
    host sync per call) instead of letting it propagate.
    """

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0, backend: str = "auto",
                 check_finite: bool = False):
        super().__init__()
        dispatch.check_backend("cwd", backend)
        _checks.check_flag("check_finite", check_finite)
        self.tau = check_number("tau", tau, low=0.0)
        self.loss_weight = check_number("loss_weight", loss_weight)
        self.backend, self.check_finite = backend, check_finite

    def terms(self, preds_S, preds_T) -> CWDTerms:
        """The unweighted loss: CWDTerms(cwd_loss, level_losses)."""
        S, T, sfx = as_levels(preds_S, preds_T)
        if not _checks.is_compiling():
            check_levels(S, T, sfx)
            if self.check_finite:
                check_finite({f"{a}{x}": m for a, ms in (("preds_S", S), ("preds_T", T))
                              for x, m in zip(sfx, ms)})
        return cwd_loss(self.backend, S, T, self.tau)

    def forward(self, preds_S, preds_T) -> Tensor:
        return self.loss_weight * self.terms(preds_S, preds_T).cwd_loss

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, loss_weight={self.loss_weight}, backend={self.backend!r}, "
                f"check_finite={self.check_finite}")
