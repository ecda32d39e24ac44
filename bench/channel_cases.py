"""Benchmark runners of CWD, PKD and MGD: the same Runner as FGD's (bench/cases.py), so
report.py times, checks and tabulates them alike.

Inputs per case (deterministic for the case's seed): a pyramid of student and teacher
maps, one width per level (``Case.widths``, the teacher's). CWD and PKD compare
channel c with channel c, so their student has the teacher's widths (as after a
connector that maps it, which is the model's and is not timed); MGD's student has
``Case.student_widths`` and the loss's align convs map it. MGD's masks are inputs
drawn once, so that every implementation computes the same value.
What fwd+bwd differentiates: the student maps and every parameter of the loss.
"""
from __future__ import annotations

import torch
from torch import Tensor

import fgdkern
from baselines import compiled
from cases import CHECK_FINITE, COMPILE_MODE, Case, Runner, Unavailable, check_timed_here
from channel_baselines import EagerCWD, EagerMGD, EagerPKD
from fgdkern.ops import dispatch

OP = {"cwd": "cwd", "pkd": "pkd", "mgd": "imitation"}
LAMBDA_MGD = 0.65


def _student_widths(case: Case) -> tuple[int, ...]:
    return case.student_widths if case.loss == "mgd" else case.widths


def _module(case: Case, backend: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(case.seed)
    if case.loss == "cwd":
        m = fgdkern.CWDLoss(tau=1.0, loss_weight=10.0, backend=backend, check_finite=CHECK_FINITE)
    elif case.loss == "pkd":
        m = fgdkern.PKDLoss(loss_weight=10.0, backend=backend, check_finite=CHECK_FINITE)
    else:
        m = fgdkern.MGDLoss(list(case.student_widths), list(case.widths), backend=backend,
                            check_finite=CHECK_FINITE)
    return m.to(device)


def _inputs(case: Case, device: torch.device) -> tuple[list, list]:
    """(student maps, other inputs): what fwd+bwd differentiates, and the rest."""
    g = torch.Generator().manual_seed(case.seed)
    S = [torch.randn((case.N, c, H, W), generator=g).to(device)
         for c, (H, W) in zip(_student_widths(case), case.sizes)]
    T = [(torch.randn((case.N, c, H, W), generator=g) * 1.5 + 0.3).to(device)
         for c, (H, W) in zip(case.widths, case.sizes)]
    if case.loss != "mgd":
        return S, [T]
    masks = [(torch.rand((case.N, 1, H, W), generator=g) <= 1 - LAMBDA_MGD).float().to(device)
             for H, W in case.sizes]
    return S, [T, masks]


def build(impl: str, case: Case, device: torch.device) -> torch.nn.Module:
    """The module a column times; compile: torch.compile of the eager baseline."""
    if impl in ("eager_loop", "compile"):
        base = {"cwd": EagerCWD, "pkd": EagerPKD, "mgd": EagerMGD}[case.loss]
        eager = base.like(_module(case, "reference", device))
        return compiled(eager) if impl == "compile" else eager
    if impl in ("cpp", "triton") and not dispatch.available(OP[case.loss], impl):
        raise Unavailable(f"{case.loss} has no {impl} implementation here")
    check_timed_here(impl, device)
    return _module(case, impl, device)


def implementation(impl: str, loss: torch.nn.Module, case: Case, device: torch.device) -> dict:
    """What a column runs: the op implementation dispatch picks, compiled or not."""
    if impl in ("eager_loop", "compile"):
        return dict(op=f"eager_loop (bench/channel_baselines.py, {case.loss})",
                    compiled=COMPILE_MODE if impl == "compile" else None, check_finite=False)
    module = getattr(loss, "_orig_mod", loss)
    return dict(op=dispatch.resolve(OP[case.loss], module.backend, device, torch.float32),
                compiled=None, check_finite=False)


def make_runner(impl: str, case: Case, device: torch.device) -> Runner:
    loss = build(impl, case, device)
    student, rest = _inputs(case, device)
    grad_in = [x.detach().requires_grad_() for x in student]
    params = list(loss.parameters())

    def forward() -> Tensor:
        with torch.no_grad():
            return loss(student, *rest)

    def forward_backward():
        value = loss(grad_in, *rest)
        return value, torch.autograd.grad(value, grad_in + params)

    names = [f"dS[{k}]" for k in range(len(grad_in))]
    names += ["d" + n.removeprefix("_orig_mod.").removeprefix("loss.")
              for n, _ in loss.named_parameters()]
    return Runner(impl, case, {"fwd": forward, "fwd+bwd": forward_backward}, names,
                  implementation(impl, loss, case, device))


def feature_bytes(case: Case, mode: str) -> int:
    """Minimum bytes the fused path moves (float32): CWD and PKD read S and T forward,
    again backward, and write dS; MGD reads the generated map G and T for eq. (4)
    forward and backward and writes dG (the convolutions' traffic is not counted)."""
    maps = 4 * sum(case.N * c * H * W for c, (H, W) in zip(case.widths, case.sizes))
    return maps * {"fwd": 2, "fwd+bwd": 5}[mode]


def describe(case: Case) -> str:
    maps = ", ".join(f"{c}x{H}x{W}" for c, (H, W) in zip(case.widths, case.sizes))
    extra = (f", student widths {list(case.student_widths)} aligned"
             if case.loss == "mgd" and case.student_widths != case.widths else "")
    return f"N={case.N} maps (C x H x W) {maps}{extra}"
