"""RankMimickingLoss: the teacher's rank distribution over each instance's positive anchors.

RankMimickingLoss.forward -> check the inputs (this file) ->
fgdkern.ops.rm.rm_loss (the vectorised reference) -> loss_weight * Loss_RM
(paper eq. (10), alpha = 4). What the caller supplies: docs/rm.md.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fgdkern import _checks
from fgdkern.ops import dispatch
from fgdkern.ops.rm import rm_loss
from fgdkern.reference.rm import RMTerms

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_scores(name: str, x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64 logits, "
                        f"got {x.dtype}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D (P,), one logit per positive anchor, "
                         f"got shape {tuple(x.shape)}")


def _check_ids(ids, P: int, device: torch.device) -> None:
    if not isinstance(ids, Tensor):
        raise TypeError(f"instance_ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in INT_DTYPES:
        raise TypeError(f"instance_ids must be an integer tensor (int64), got {ids.dtype}")
    if ids.dim() != 1 or ids.shape[0] != P:
        raise ValueError(f"instance_ids must be 1-D with one id per anchor, shape ({P},) like "
                         f"scores_S, got shape {tuple(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"instance_ids is on {ids.device} but scores_S on {device}")


def check_inputs(scores_S, scores_T, instance_ids, check_values: bool) -> None:
    """Types, shapes and devices always; the id values where they are on the host (or
    with check_values: then also finite scores), docs/rm.md "Validation"."""
    _check_scores("scores_S", scores_S)
    _check_scores("scores_T", scores_T)
    if scores_T.shape != scores_S.shape:
        raise ValueError(f"scores_T has shape {tuple(scores_T.shape)} but scores_S has "
                         f"{tuple(scores_S.shape)}: one logit per positive anchor in both")
    if scores_T.device != scores_S.device:
        raise ValueError(f"scores_T is on {scores_T.device} but scores_S on {scores_S.device}")
    _check_ids(instance_ids, scores_S.shape[0], scores_S.device)
    if (check_values or instance_ids.device.type == "cpu") and bool((instance_ids < 0).any()):
        raise ValueError("instance_ids must be >= 0 (pass the positive anchors only, not -1 "
                         "for the others)")
    if check_values:
        for name, x in (("scores_S", scores_S), ("scores_T", scores_T)):
            _checks.check_finite(name, x)


class RankMimickingLoss(nn.Module):
    """Rank Mimicking (docs/rm.md), paper eqs. (5)-(6).

    forward(scores_S (P,), scores_T (P,), instance_ids (P,) int) -> float32 scalar
    loss_weight * Loss_RM. scores are the logits of each positive anchor for its
    instance's ground-truth class; instance_ids give the instance of each anchor
    (any non-negative integers, unique per instance across the batch). Gradients
    flow into scores_S only. check_finite: also check the id values of CUDA
    tensors and that the scores are finite (host syncs); by default only host ids
    are checked and non-finite scores propagate.
    """

    def __init__(self, loss_weight: float = 4.0, backend: str = "auto",
                 check_finite: bool = False):
        super().__init__()
        dispatch.check_backend("rm", backend)
        _checks.check_flag("check_finite", check_finite)
        self.loss_weight = float(loss_weight)
        self.backend, self.check_finite = backend, check_finite

    def terms(self, scores_S, scores_T, instance_ids) -> RMTerms:
        """The unweighted loss: RMTerms(rm_loss, num_instances)."""
        if not _checks.is_compiling():
            check_inputs(scores_S, scores_T, instance_ids, self.check_finite)
        return rm_loss(self.backend, scores_S, scores_T, instance_ids)

    def forward(self, scores_S, scores_T, instance_ids) -> Tensor:
        return self.loss_weight * self.terms(scores_S, scores_T, instance_ids).rm_loss

    def extra_repr(self) -> str:
        return (f"loss_weight={self.loss_weight}, backend={self.backend!r}, "
                f"check_finite={self.check_finite}")
