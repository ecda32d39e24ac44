"""Before an implementation is timed, its output is compared with the reference's.

A call's outputs (bench/cases.py, Runner) are named: ``loss`` for fwd; for
fwd+bwd also ``dS[k]`` per level and ``d<parameter name>`` per parameter. The
tolerance is the project's (tests/harness.py) for float32: the loss within
1e-5 relative (1e-7 absolute floor); each gradient within 1e-5 relative per
element, with an absolute floor of 1e-6 times its largest magnitude (a
gradient that is zero up to round-off, such as conv_mask's bias, meets the
floor). An implementation that disagrees is not timed.
"""
from __future__ import annotations

import torch
from torch import Tensor

LOSS_TOL = dict(rtol=1e-5, atol=1e-7)
GRAD_RTOL, GRAD_ATOL, GRAD_FLOOR = 1e-5, 1e-9, 1e-6


class Disagrees(AssertionError):
    """An implementation's output differs from the reference's beyond the tolerance."""


def named_outputs(mode: str, out, grad_names: list[str]) -> dict[str, Tensor]:
    """A call's return value -> {name: tensor}, detached (fwd: the loss; fwd+bwd:
    (loss, gradients in the order of ``grad_names``))."""
    if mode == "fwd":
        return {"loss": out.detach()}
    loss, grads = out
    if len(grads) != len(grad_names):
        raise Disagrees(f"{len(grads)} gradients returned, {len(grad_names)} expected")
    return {"loss": loss.detach(), **{n: g.detach() for n, g in zip(grad_names, grads)}}


def _tolerance(name: str, want: Tensor) -> dict:
    if name == "loss":
        return LOSS_TOL
    scale = float(want.abs().max()) if want.numel() else 0.0
    return dict(rtol=GRAD_RTOL, atol=max(GRAD_ATOL, GRAD_FLOOR * scale))


def _mismatch(name: str, got: Tensor | None, want: Tensor) -> str | None:
    """Why ``got`` is not ``want`` within the tolerance of ``name``, or None."""
    if got is None:
        return f"{name}: missing (not computed)"
    if got.shape != want.shape or got.dtype != want.dtype:
        return (f"{name}: {tuple(got.shape)} {got.dtype}, the reference's is "
                f"{tuple(want.shape)} {want.dtype}")
    tol = _tolerance(name, want)
    try:
        torch.testing.assert_close(got, want, **tol)
    except AssertionError as exc:
        detail = " ".join(str(exc).split())
        return f"{name} (rtol={tol['rtol']:g}, atol={tol['atol']:.3g}): {detail}"
    return None


def check_outputs(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    """Raise Disagrees naming every output of ``want`` that ``got`` misses or differs in."""
    if set(got) - set(want):
        raise Disagrees(f"outputs the reference has not: {sorted(set(got) - set(want))}")
    problems = [p for name in want if (p := _mismatch(name, got.get(name), want[name]))]
    if problems:
        raise Disagrees("; ".join(problems))
