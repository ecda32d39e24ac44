"""Benchmark runners of FKD, PFI and RM: the same Runner as FGD's (bench/cases.py), so
report.py times, checks and tabulates them alike.

Inputs per loss (deterministic for the case's seed):
* fkd: the case's pyramid of student and teacher features (MultiLevelFKDLoss, code
  variant, one-stage preset; ``non_local`` from the case name: the non-local blocks
  are plain PyTorch in every implementation, so cases without them show the part the
  fused passes compute);
* pfi: the pyramid plus probability maps of K = A * classes channels per level
  (RetinaNet's 9 anchors x 80 classes: 720), sigmoids of random logits;
* rm: P positive anchors, ``boxes_per_image`` instances per image with ANCHORS_PER
  anchors each, random logits.
What fwd+bwd differentiates: the student features (fkd, pfi) or scores (rm), and
every parameter of the loss.
"""
from __future__ import annotations

import torch
from torch import Tensor

import fgdkern
from baselines import compiled_reference
from cases import CHECK_FINITE, COMPILE_MODE, Case, Runner, Unavailable, check_timed_here
from fgdkern.ops import dispatch
from seed_baselines import EagerLoopFKD, EagerLoopPFI, EagerLoopRM

PFI_CLASSES = 720       # RetinaNet head: 9 anchors x 80 classes per position
ANCHORS_PER = 40        # positive anchors per instance
OP = {"fkd": "imitation", "pfi": "imitation", "rm": "rm"}


def _module(case: Case, backend: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(case.seed)
    C = case.channels
    if case.loss == "fkd":
        m = fgdkern.MultiLevelFKDLoss.for_detector(
            "one_stage", len(case.strides), C, C, non_local="no NL" not in case.name,
            backend=backend, check_finite=CHECK_FINITE)
    elif case.loss == "pfi":
        m = fgdkern.PFILoss(C, C, backend=backend, check_finite=CHECK_FINITE)
    else:
        m = fgdkern.RankMimickingLoss(backend=backend, check_finite=CHECK_FINITE)
    return m.to(device)


def _inputs(case: Case, device: torch.device) -> tuple[list, list]:
    """(student inputs, other inputs): what fwd+bwd differentiates, and the rest."""
    g = torch.Generator().manual_seed(case.seed)
    if case.loss == "rm":
        instances = case.N * case.boxes_per_image
        ids = torch.arange(instances).repeat_interleave(ANCHORS_PER)
        s, t = (torch.randn(ids.numel(), generator=g) * 2 for _ in range(2))
        return [s.to(device)], [t.to(device), ids.to(device)]
    shape = [(case.N, case.channels, H, W) for H, W in case.sizes]
    S = [torch.randn(s, generator=g).to(device) for s in shape]
    T = [(torch.randn(s, generator=g) * 1.5 + 0.3).to(device) for s in shape]
    if case.loss == "fkd":
        return S, [T]
    probs = [[torch.randn((case.N, PFI_CLASSES, H, W), generator=g).sigmoid().to(device)
              for H, W in case.sizes] for _ in range(2)]
    return S, [T, *probs]


def _call(case: Case, loss, student: list, rest: list):
    if case.loss == "rm":
        return loss(student[0], *rest)
    return loss(student, *rest)


def build(impl: str, case: Case, device: torch.device) -> torch.nn.Module:
    if impl == "eager_loop":
        base = {"fkd": EagerLoopFKD, "pfi": EagerLoopPFI, "rm": EagerLoopRM}[case.loss]
        return base.like(_module(case, "reference", device))
    if impl == "compile":
        return compiled_reference(_module(case, "reference", device))
    if impl in ("cpp", "triton") and not dispatch.available(OP[case.loss], impl):
        raise Unavailable(f"{case.loss} has no {impl} implementation here")
    check_timed_here(impl, device)
    return _module(case, impl, device)


def implementation(impl: str, loss: torch.nn.Module, case: Case, device: torch.device) -> dict:
    """What a column runs: the op implementation dispatch picks, compiled or not."""
    if impl == "eager_loop":
        return dict(op=f"eager_loop (bench/seed_baselines.py, {case.loss})", compiled=None,
                    check_finite=False)
    module = getattr(loss, "_orig_mod", loss)
    return dict(op=dispatch.resolve(OP[case.loss], module.backend, device, torch.float32),
                compiled=COMPILE_MODE if impl == "compile" else None, check_finite=False)


def make_runner(impl: str, case: Case, device: torch.device) -> Runner:
    loss = build(impl, case, device)
    student, rest = _inputs(case, device)
    grad_in = [x.detach().requires_grad_() for x in student]
    params = list(loss.parameters())

    def forward() -> Tensor:
        with torch.no_grad():
            return _call(case, loss, student, rest)

    def forward_backward():
        value = _call(case, loss, grad_in, rest)
        return value, torch.autograd.grad(value, grad_in + params)

    names = [f"d{'scores_S' if case.loss == 'rm' else 'S'}[{k}]" for k in range(len(grad_in))]
    names += ["d" + n.removeprefix("_orig_mod.") for n, _ in loss.named_parameters()]
    return Runner(impl, case, {"fwd": forward, "fwd+bwd": forward_backward}, names,
                  implementation(impl, loss, case, device))


def feature_bytes(case: Case, mode: str) -> int:
    """Minimum bytes the fused path moves (float32): FKD reads S, T and the adapted S
    forward, then T and the adapted S again and writes both gradients; PFI reads the four
    maps of each level forward, then the two features again and writes one gradient; RM
    reads and writes P-vectors."""
    if case.loss == "rm":
        P = case.N * case.boxes_per_image * ANCHORS_PER
        return 4 * P * {"fwd": 3, "fwd+bwd": 6}[mode]
    maps = case.elements * 4
    if case.loss == "fkd":
        return maps * {"fwd": 3, "fwd+bwd": 7}[mode]
    probs = maps // case.channels * PFI_CLASSES
    return {"fwd": 2 * maps + 2 * probs, "fwd+bwd": 5 * maps + 2 * probs}[mode]


def describe(case: Case) -> str:
    if case.loss == "rm":
        return (f"N={case.N} images, {case.boxes_per_image} instances each, {ANCHORS_PER} "
                f"positive anchors per instance (P={case.N * case.boxes_per_image * ANCHORS_PER})")
    maps = ", ".join(f"{H}x{W}" for H, W in case.sizes)
    extra = {"fkd": "" if "no NL" in case.name else ", with non-local blocks",
             "pfi": f", probabilities of K={PFI_CLASSES}"}[case.loss]
    return f"N={case.N} C={case.channels} maps {maps}{extra}"
