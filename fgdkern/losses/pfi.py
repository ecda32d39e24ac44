"""PFILoss: Prediction-guided Feature Imitation over a feature pyramid (docs/pfi.md).

PFILoss.forward -> check the four pyramids (this file) -> align the student
features -> fgdkern.ops.pfi.pfi_loss (dispatch, fused imitation statistics or
the reference) -> loss_weight * Loss_PFI (paper eq. (10), beta = 1.5).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from fgdkern import _checks
from fgdkern.ops import dispatch
from fgdkern.ops.pfi import check_finite, pfi_loss
from fgdkern.reference.pfi import PFITerms

ARGS = ("feats_S", "feats_T", "probs_S", "probs_T")


def _levels(name: str, value) -> tuple[list, list | None]:
    """A list or tuple of per-level tensors, or a mapping (its keys kept, to compare)."""
    if isinstance(value, Tensor):
        raise TypeError(f"{name} must be a list or dict of per-level tensors, got a single Tensor")
    if isinstance(value, Mapping):
        return list(value.values()), list(value.keys())
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value), None
    raise TypeError(f"{name} must be a list or dict of per-level tensors, "
                    f"got {type(value).__name__}")


def level_lists(*pyramids) -> list[list]:
    """The four pyramids as lists of one length (and one set of keys where dicts are given)."""
    lists, keys = zip(*(_levels(n, v) for n, v in zip(ARGS, pyramids)))
    if len(lists[0]) == 0:
        raise ValueError("feats_S has no level: pass at least one (N, C, H, W) tensor")
    for name, levels, names in zip(ARGS[1:], lists[1:], keys[1:]):
        if len(levels) != len(lists[0]):
            raise ValueError(f"{name} has {len(levels)} levels but feats_S has {len(lists[0])}")
        if names is not None and keys[0] is not None and names != keys[0]:
            raise ValueError(f"{name} has the levels {names} but feats_S has {keys[0]}: "
                             "the dicts must have the same keys in the same order")
    return [list(v) for v in lists]


def _check_channels(k: int, F_s: Tensor, F_t: Tensor, P_s: Tensor, P_t: Tensor,
                    student_channels, teacher_channels) -> None:
    for name, x, want in ((f"feats_S[{k}]", F_s, student_channels),
                          (f"feats_T[{k}]", F_t, teacher_channels)):
        if want is not None and x.shape[1] != want:
            raise ValueError(f"{name} has {x.shape[1]} channels, the loss was built for {want}")
    if student_channels is None and F_s.shape[1] != F_t.shape[1]:
        raise ValueError(f"feats_S[{k}] has {F_s.shape[1]} channels but feats_T[{k}] has "
                         f"{F_t.shape[1]}: build PFILoss(student_channels, teacher_channels) "
                         "to map the student with an align conv")
    if P_s.shape[1] != P_t.shape[1]:
        raise ValueError(f"probs_S[{k}] has {P_s.shape[1]} classes but probs_T[{k}] has "
                         f"{P_t.shape[1]}: both must be (N, K, H, W) with the same K")


def check_level(k: int, maps: list[Tensor], first: Tensor, student_channels,
                teacher_channels) -> None:
    """Level k's four maps: tensors, one batch, one spatial size, one device, channels."""
    names = [f"{a}[{k}]" for a in ARGS]
    for name, x in zip(names, maps):
        _checks.check_map(name, x)
    F_s = maps[0]
    for name, x in zip(names, maps):
        if x.shape[0] != first.shape[0]:
            raise ValueError(f"{name} has batch size {x.shape[0]} but feats_S[0] has "
                             f"{first.shape[0]}: every map holds the same images")
        if x.shape[2:] != F_s.shape[2:]:
            raise ValueError(f"{name} is {tuple(x.shape[2:])} but feats_S[{k}] is "
                             f"{tuple(F_s.shape[2:])}: the maps of a level share H and W")
        if x.device != first.device:
            raise ValueError(f"{name} is on {x.device} but feats_S[0] on {first.device}: "
                             "every map must be on one device")
    _check_channels(k, *maps, student_channels, teacher_channels)


def _check_channel_arg(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


class PFILoss(nn.Module):
    """Prediction-guided Feature Imitation (docs/pfi.md), paper eqs. (7)-(9).

    forward(feats_S, feats_T, probs_S, probs_T) -> float32 scalar
    loss_weight * Loss_PFI. Each argument is a list (or dict, such as a
    torchvision FPN OrderedDict) of per-level tensors: features (N, C, H_l, W_l),
    probabilities (N, K, H_l, W_l) after the detector's sigmoid or softmax.
    Gradients flow into feats_S (and the align conv) only.

    student_channels / teacher_channels: when both are given and differ, a 1x1
    ``align`` conv, shared by every level, maps the student features; when
    given, the channel counts are checked. check_finite: raise ValueError on a
    NaN or Inf input (one host sync per call) instead of letting it propagate.
    """

    def __init__(self, student_channels: int | None = None, teacher_channels: int | None = None,
                 loss_weight: float = 1.5, backend: str = "auto", check_finite: bool = False):
        super().__init__()
        dispatch.check_backend("imitation", backend)
        _checks.check_flag("check_finite", check_finite)
        _check_channel_arg("student_channels", student_channels)
        _check_channel_arg("teacher_channels", teacher_channels)
        if student_channels is None or teacher_channels is None:
            student_channels = teacher_channels = student_channels or teacher_channels
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.loss_weight = float(loss_weight)
        self.backend, self.check_finite = backend, check_finite
        self.align = (nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
                      if student_channels != teacher_channels else None)

    def terms(self, feats_S, feats_T, probs_S, probs_T) -> PFITerms:
        """The unweighted loss: PFITerms(pfi_loss, level_losses)."""
        S, T, PS, PT = level_lists(feats_S, feats_T, probs_S, probs_T)
        if not _checks.is_compiling():
            for k, maps in enumerate(zip(S, T, PS, PT)):
                check_level(k, list(maps), S[0], self.student_channels, self.teacher_channels)
            if self.check_finite:
                check_finite({f"{a}[{k}]": x for a, xs in zip(ARGS, (S, T, PS, PT))
                              for k, x in enumerate(xs)})
        if self.align is not None:
            S = [self.align(s) for s in S]
        return pfi_loss(self.backend, S, T, PS, PT)

    def forward(self, feats_S, feats_T, probs_S, probs_T) -> Tensor:
        return self.loss_weight * self.terms(feats_S, feats_T, probs_S, probs_T).pfi_loss

    def extra_repr(self) -> str:
        return (f"student_channels={self.student_channels}, teacher_channels="
                f"{self.teacher_channels}, loss_weight={self.loss_weight}, "
                f"backend={self.backend!r}, check_finite={self.check_finite}")
