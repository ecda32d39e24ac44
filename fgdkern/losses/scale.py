"""A one-time warning when a distillation loss dwarfs the task loss (docs/fgd.md, "Loss scale").

The weights of a distillation loss (alpha..lambda for FGD) are set per detector
and input size; with other features they can make the distillation loss orders
of magnitude larger than the detector's own loss, which then trains the student
to imitate and little else. ``check_loss_scale`` compares the two once.
"""
from __future__ import annotations

import math
import warnings

import torch

_warned: set = set()


def _value(name: str, x) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a scalar loss, got shape {tuple(x.shape)}")
        return float(x.detach())
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    raise TypeError(f"{name} must be a scalar tensor or a number, got {type(x).__name__}")


def check_loss_scale(distill_loss, task_loss, factor: float = 100.0,
                     name: str = "distillation") -> float:
    """distill_loss / task_loss; warns once per ``name`` when it exceeds ``factor``.

    A tensor argument costs one host sync: call it on the first steps, not every step.
    Non-finite values are not judged (nan is returned, no warning).
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    d, t = _value("distill_loss", distill_loss), _value("task_loss", task_loss)
    if not (math.isfinite(d) and math.isfinite(t)):
        return math.nan
    ratio = 0.0 if d == 0 else abs(d) / abs(t) if t != 0 else math.inf
    if ratio > factor and name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"the {name} loss ({d:.4g}) is {ratio:.3g} times the task loss ({t:.4g}): the "
            "student will mostly imitate; lower the loss weights (for FGD alpha_fgd.."
            "lambda_fgd) until the two are of the same order (docs/fgd.md, \"Loss scale\")",
            UserWarning, stacklevel=2)
    return ratio
