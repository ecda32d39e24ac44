"""ScoreWeightedL2Loss: Ultralytics' built-in YOLO distillation loss as an fgdkern module.

forward -> check the three pyramids (this file) -> the projector of each level
-> fgdkern.reference.score_l2 (the loss as docs/score-l2.md states it) ->
weight * the sum over levels. Its parameters have the layout of Ultralytics'
DistillationModel.projector, so a run of either can be compared with the other.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fgdkern import _checks
from fgdkern.reference.score_l2 import score_l2_reference


def _projector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """conv 1x1 (Cs -> Ct), ReLU, conv 1x1 (Ct -> Ct): ``<k>.0`` and ``<k>.2`` hold the weights."""
    return nn.Sequential(nn.Conv2d(student_channels, teacher_channels, kernel_size=1),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1))


def _check_scores(k: int, w, T: Tensor) -> Tensor:
    """Level k's teacher scores as (N, H, W): given (N, H, W) or (N, 1, H, W)."""
    name = f"scores[{k}]"
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got {w.dtype}")
    if w.dim() == 4 and w.shape[1] == 1:
        w = w[:, 0]
    if w.shape != (T.shape[0], *T.shape[2:]):
        raise ValueError(f"{name} must be (N, H, W) = {(T.shape[0], *T.shape[2:])} like "
                         f"feats_T[{k}], got shape {tuple(w.shape)}")
    if w.device != T.device:
        raise ValueError(f"{name} is on {w.device} but feats_T[{k}] on {T.device}")
    return w


class ScoreWeightedL2Loss(nn.Module):
    """The score-weighted L2 loss of Ultralytics' YOLO distillation (docs/score-l2.md).

    forward(feats_S, feats_T, scores) -> weight * sum over levels of
    sum w (P_k(S_k) - T_k)^2 / (C_k sum w + 1e-9). feats_S / feats_T: lists (or
    dicts) of per-level (N, C, H_l, W_l) maps; scores: per level the teacher's
    highest class probability at each cell, (N, H_l, W_l) (or (N, 1, H_l, W_l)).
    student_channels / teacher_channels: one int for every level or one per level.
    Parameters: ``projector.<k>.0`` and ``projector.<k>.2``, the 1x1 convs of P_k.
    """

    def __init__(self, num_levels: int, student_channels: int | Sequence[int],
                 teacher_channels: int | Sequence[int], weight: float = 6.0):
        super().__init__()
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels must be a positive int, got {num_levels!r}")
        widths_S = _checks.level_widths("student_channels", student_channels, num_levels)
        widths_T = _checks.level_widths("teacher_channels", teacher_channels, num_levels)
        for name, widths in (("student_channels", widths_S), ("teacher_channels", widths_T)):
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in widths):
                raise ValueError(f"{name} must be ints >= 1, got {widths!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"weight must be a number, got {weight!r}")
        self.num_levels, self.weight = num_levels, float(weight)
        self.student_channels, self.teacher_channels = widths_S, widths_T
        self.projector = nn.ModuleList(_projector(cs, ct) for cs, ct in zip(widths_S, widths_T))

    def terms(self, feats_S, feats_T, scores) -> Tensor:
        """(L,) the unweighted loss of every level, float32 (float64 for float64 maps)."""
        S = _checks.as_level_list("feats_S", feats_S, self.num_levels)
        T = _checks.as_level_list("feats_T", feats_T, self.num_levels)
        W = _checks.as_level_list("scores", scores, self.num_levels)
        for k, (s, t) in enumerate(zip(S, T)):
            _checks.check_pair(s, t, self.student_channels[k], self.teacher_channels[k], f"[{k}]")
        W = [_check_scores(k, w, t) for k, (w, t) in enumerate(zip(W, T))]
        return score_l2_reference([p(s) for p, s in zip(self.projector, S)], T, W)

    def forward(self, feats_S, feats_T, scores) -> Tensor:
        return (self.terms(feats_S, feats_T, scores) * self.weight).sum()

    def extra_repr(self) -> str:
        return (f"num_levels={self.num_levels}, student_channels={self.student_channels}, "
                f"teacher_channels={self.teacher_channels}, weight={self.weight}")
