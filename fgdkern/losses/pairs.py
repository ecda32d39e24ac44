"""Checks shared by the losses that take a student and a teacher map per level (CWD,
PKD, MGD): one level's tensors or lists of levels, errors naming the argument."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fgdkern import _checks


def as_levels(preds_S, preds_T) -> tuple[list, list, list[str]]:
    """(S, T, suffixes): both as lists of levels, and how errors name each level ("" for
    one tensor, "[k]" for lists)."""
    if isinstance(preds_S, Tensor) or isinstance(preds_T, Tensor):
        for name, x in (("preds_S", preds_S), ("preds_T", preds_T)):
            if not isinstance(x, Tensor):
                raise TypeError(f"{name} must be a Tensor like the other argument, "
                                f"got {type(x).__name__}")
        return [preds_S], [preds_T], [""]
    for name, x in (("preds_S", preds_S), ("preds_T", preds_T)):
        if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
            raise TypeError(f"{name} must be a Tensor or a list or tuple of per-level "
                            f"tensors, got {type(x).__name__}")
    if len(preds_S) == 0:
        raise ValueError("preds_S has no level: pass a (N, C, H, W) tensor or a list of them")
    if len(preds_T) != len(preds_S):
        raise ValueError(f"preds_T has {len(preds_T)} levels but preds_S has {len(preds_S)}")
    return list(preds_S), list(preds_T), [f"[{k}]" for k in range(len(preds_S))]


def check_levels(S: list, T: list, sfx: list[str], same_channels: bool = True,
                 same_size: bool = True) -> None:
    """Every level: tensors, one batch size and one device for all, student and teacher
    of one spatial size (same_size) and width (same_channels)."""
    for k, (s, t, x) in enumerate(zip(S, T, sfx)):
        _checks.check_map(f"preds_S{x}", s)
        _checks.check_map(f"preds_T{x}", t)
        for name, m in ((f"preds_S{x}", s), (f"preds_T{x}", t)):
            if m.shape[0] != S[0].shape[0]:
                raise ValueError(f"{name} has batch size {m.shape[0]} but preds_S{sfx[0]} has "
                                 f"{S[0].shape[0]}: every map holds the same images")
            if m.device != S[0].device:
                raise ValueError(f"{name} is on {m.device} but preds_S{sfx[0]} on "
                                 f"{S[0].device}: every map must be on one device")
        if same_channels and t.shape[1] != s.shape[1]:
            raise ValueError(f"preds_T{x} has {t.shape[1]} channels but preds_S{x} has "
                             f"{s.shape[1]}: the loss compares channel c with channel c")
        if same_size and t.shape[2:] != s.shape[2:]:
            raise ValueError(f"preds_T{x} is {tuple(t.shape[2:])} but preds_S{x} is "
                             f"{tuple(s.shape[2:])}: student and teacher share H and W")


def check_number(name: str, value, low: float | None = None, high: float | None = None,
                 low_open: bool = True, high_open: bool = True) -> float:
    """A real number in (low, high) (ends open or closed as given), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above or value != value:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be {' and '.join(b for b in (lo, hi) if b)}, "
                         f"got {value!r}")
    return value
