"""MGDLoss: masked generative distillation over one level or a pyramid (docs/mgd.md).

MGDLoss.forward -> check the maps and masks (this file, fgdkern/losses/pairs.py) ->
draw the random masks unless given -> fgdkern.ops.mgd.mgd_loss (dispatch: align,
mask and generation in torch, eq. (4) by the fused imitation pass, or the
reference) -> alpha_mgd * the sum over levels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fgdkern import _checks
from fgdkern.losses.pairs import as_levels, check_levels, check_number
from fgdkern.ops import dispatch
from fgdkern.ops.mgd import mgd_loss
from fgdkern.ops.pfi import check_finite
from fgdkern.reference.mgd import MGDParams, MGDTerms


def _generation(channels: int) -> nn.Sequential:
    """conv 3x3, ReLU, conv 3x3, teacher width: parameters ``0.*`` and ``2.*``, eq. (3)."""
    return nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(channels, channels, kernel_size=3, padding=1))


def _align(student: int, teacher: int) -> nn.Module | None:
    return nn.Conv2d(student, teacher, kernel_size=1) if student != teacher else None


def _widths(name: str, value):
    """An int, or a list of ints for a sequence (one width per level)."""
    per_level = isinstance(value, Sequence) and not isinstance(value, str)
    widths = list(value) if per_level else [value]
    if len(widths) == 0 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                               for c in widths):
        raise ValueError(f"{name} must be a positive int or a non-empty sequence of them, "
                         f"got {value!r}")
    return widths if per_level else widths[0]


def draw_masks(S: list[Tensor], lambda_mgd: float) -> list[Tensor]:
    """Per level (N, 1, H, W): 0 where a uniform draw exceeds 1 - lambda_mgd, else 1 (a
    pixel is dropped with probability lambda_mgd), from torch's generator of the device."""
    return [(torch.rand((s.shape[0], 1, *s.shape[2:]), device=s.device) <= 1 - lambda_mgd)
            .to(s.dtype) for s in S]


def _check_masks(mask, S: list[Tensor], sfx: list[str]) -> list[Tensor]:
    masks = [mask] if sfx == [""] and isinstance(mask, Tensor) else mask
    if isinstance(masks, (str, bytes, Tensor)) or not isinstance(masks, Sequence):
        raise TypeError(f"mask must be a Tensor per level (a list for a list of levels), "
                        f"got {type(mask).__name__}")
    if len(masks) != len(S):
        raise ValueError(f"mask has {len(masks)} levels but preds_S has {len(S)}")
    for m, s, x in zip(masks, S, sfx):
        want = (s.shape[0], 1, *s.shape[2:])
        if not isinstance(m, Tensor):
            raise TypeError(f"mask{x} must be a torch.Tensor, got {type(m).__name__}")
        if not (m.is_floating_point() or m.dtype == torch.bool):
            raise TypeError(f"mask{x} must be a bool or floating-point tensor, got {m.dtype}")
        if tuple(m.shape) != want:
            raise ValueError(f"mask{x} must be (N, 1, H, W) = {want} like preds_S{x}, "
                             f"got shape {tuple(m.shape)}")
        if m.device != s.device:
            raise ValueError(f"mask{x} is on {m.device} but preds_S{x} on {s.device}")
    return list(masks)


class MGDLoss(nn.Module):
    """Masked generative distillation (docs/mgd.md), paper eqs. (2)-(5).

    forward(preds_S, preds_T, mask=None) -> float32 scalar alpha_mgd * sum over levels
    of sum (G(f_align(S) * M) - T)^2 / N. preds_S / preds_T: one level's maps
    (N, Cs, H, W) and (N, Ct, H, W), or lists (tuples) of levels. mask: per level
    (N, 1, H, W) ones and zeros (1 keeps a pixel); None draws them with drop rate
    lambda_mgd. Gradients flow into preds_S and the parameters, not preds_T.

    student_channels / teacher_channels: ints build one ``align`` (a 1x1 conv with
    bias, only when they differ) and one ``generation`` block, used for every level:
    the parameter names of the published code's per-level module. Sequences (one
    width per level) build one of each per level: ``align.<k>``, ``generation.<k>``.
    """

    def __init__(self, student_channels, teacher_channels, alpha_mgd: float = 2e-5,
                 lambda_mgd: float = 0.65, backend: str = "auto", check_finite: bool = False):
        super().__init__()
        dispatch.check_backend("imitation", backend)
        _checks.check_flag("check_finite", check_finite)
        ws = _widths("student_channels", student_channels)
        wt = _widths("teacher_channels", teacher_channels)
        if isinstance(ws, list) != isinstance(wt, list) or (
                isinstance(ws, list) and len(ws) != len(wt)):
            raise ValueError(f"student_channels {student_channels!r} and teacher_channels "
                             f"{teacher_channels!r} must both be ints or sequences of one length")
        self.alpha_mgd = check_number("alpha_mgd", alpha_mgd)
        self.lambda_mgd = check_number("lambda_mgd", lambda_mgd, 0.0, 1.0, low_open=False)
        self.student_channels, self.teacher_channels = ws, wt
        self.backend, self.check_finite = backend, check_finite
        self.per_level = isinstance(ws, list)
        if self.per_level:
            self.align = nn.ModuleList(_align(s, t) or nn.Identity() for s, t in zip(ws, wt))
            self.generation = nn.ModuleList(_generation(t) for t in wt)
        else:
            self.align = _align(ws, wt)
            self.generation = _generation(wt)

    def _level(self, k: int) -> tuple[nn.Module | None, nn.Sequential, int, int]:
        if not self.per_level:
            return self.align, self.generation, self.student_channels, self.teacher_channels
        align = self.align[k]
        return (None if isinstance(align, nn.Identity) else align, self.generation[k],
                self.student_channels[k], self.teacher_channels[k])

    def params(self, levels: int) -> list[MGDParams]:
        """The parameters of every level as the reference takes them."""
        out = []
        for k in range(levels):
            align, gen, _, _ = self._level(k)
            out.append(MGDParams(None if align is None else align.weight,
                                 None if align is None else align.bias,
                                 gen[0].weight, gen[0].bias, gen[2].weight, gen[2].bias))
        return out

    def _check(self, S, T, sfx) -> None:
        check_levels(S, T, sfx, same_channels=False)
        if self.per_level and len(S) != len(self.student_channels):
            raise ValueError(f"preds_S has {len(S)} levels but the loss was built for "
                             f"{len(self.student_channels)}")
        for k, (s, t, x) in enumerate(zip(S, T, sfx)):
            _, _, cs, ct = self._level(k)
            for name, m, want in ((f"preds_S{x}", s, cs), (f"preds_T{x}", t, ct)):
                if m.shape[1] != want:
                    raise ValueError(f"{name} has {m.shape[1]} channels, the loss was built "
                                     f"for {want}")

    def terms(self, preds_S, preds_T, mask=None) -> MGDTerms:
        """The unweighted loss: MGDTerms(mgd_loss, level_losses)."""
        S, T, sfx = as_levels(preds_S, preds_T)
        if not _checks.is_compiling():
            self._check(S, T, sfx)
            if mask is not None:
                _check_masks(mask, S, sfx)
            if self.check_finite:
                check_finite({f"{a}{x}": m for a, ms in (("preds_S", S), ("preds_T", T))
                              for x, m in zip(sfx, ms)})
        if mask is None:
            masks = draw_masks(S, self.lambda_mgd)
        else:
            masks = [mask] if isinstance(mask, Tensor) else list(mask)
        return mgd_loss(self.backend, S, T, masks, self.params(len(S)))

    def forward(self, preds_S, preds_T, mask=None) -> Tensor:
        return self.alpha_mgd * self.terms(preds_S, preds_T, mask).mgd_loss

    def extra_repr(self) -> str:
        return (f"student_channels={self.student_channels}, teacher_channels="
                f"{self.teacher_channels}, alpha_mgd={self.alpha_mgd}, lambda_mgd="
                f"{self.lambda_mgd}, backend={self.backend!r}, check_finite={self.check_finite}")
