"""Benchmark cases and the implementations timed on them, shared by
test_bench_fgd.py (pytest-benchmark) and report.py.

A Case is a batch of FPN features with boxes (deterministic for its seed). An
implementation name ("eager_loop", "reference", "compile", "cpp", "triton")
and a case make a Runner: two zero-argument callables, ``fwd`` (the loss under
torch.no_grad(), no autograd graph; returns the loss) and ``fwd+bwd`` (the loss
with the student features and every loss parameter requiring grad, then
torch.autograd.grad of the loss w.r.t. them; the teacher is detached; returns
(loss, gradients)). Every input is built before; a call does nothing else.

No implementation runs the finite check of the features: every loss module is
built with check_finite=False (CHECK_FINITE), the eager loop has none.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

import fgdkern
from baselines import EagerLoopMultiLevelFGD, compile_works, compiled_reference
from checks import named_outputs
from fgdkern.ops import dispatch

IMPLEMENTATIONS = ("eager_loop", "reference", "compile", "cpp", "triton")
# Implementations whose time on CPU is dominated by unfused passes over the features.
SLOW_ON_CPU = frozenset({"eager_loop", "reference", "compile"})
MODES = ("fwd", "fwd+bwd")
REASON_CHARS = 160
# The opt-in NaN/Inf check of the features (a pass over S and T and a host sync):
# off for every implementation, so that all of them do the same work.
CHECK_FINITE = False
COMPILE_MODE = "torch.compile(backend='inductor', dynamic=False)"
# Box sides are log-uniform between these fractions of the image side.
MIN_BOX_SIDE, MAX_BOX_SIDE = 0.03, 0.6


@dataclass(frozen=True)
class Case:
    """N images of size ``image`` (h, w), one FPN level per stride, C channels."""
    name: str
    N: int
    channels: int
    image: tuple[int, int]
    strides: tuple[int, ...]
    boxes_per_image: int
    heavy: bool = False  # seconds per call for the slow implementations on CPU
    seed: int = 0
    loss: str = "fgd"    # fgd, or fkd / pfi / rm (bench/seed_cases.py), cwd / pkd / mgd
    widths: tuple[int, ...] = ()          # per level, cwd / pkd / mgd (bench/channel_cases.py)
    student_widths: tuple[int, ...] = ()  # mgd's student, aligned to ``widths``

    @property
    def sizes(self) -> list[tuple[int, int]]:
        h, w = self.image
        return [(math.ceil(h / s), math.ceil(w / s)) for s in self.strides]

    @property
    def elements(self) -> int:
        """Elements of one feature pyramid (S or T): sum over levels of N*C*H*W."""
        widths = self.widths or (self.channels,) * len(self.sizes)
        return sum(self.N * c * H * W for c, (H, W) in zip(widths, self.sizes))

    def describe(self) -> str:
        if self.loss != "fgd":
            return other_cases(self).describe(self)
        maps = ", ".join(f"{H}x{W}" for H, W in self.sizes)
        return f"N={self.N} C={self.channels} maps {maps}, {self.boxes_per_image} boxes/image"


CASES = {
    "small": Case("small", 2, 64, (256, 384), (8, 16, 32), 5),
    "retinanet": Case("retinanet", 2, 256, (800, 1216), (8, 16, 32, 64, 128), 7),
    "faster_rcnn": Case("faster_rcnn", 2, 256, (800, 1216), (4, 8, 16, 32, 64), 7, heavy=True),
    # The other losses (bench/seed_cases.py). FKD's non-local blocks are PyTorch in every
    # implementation and cost seconds per call at RetinaNet's P3 on a CPU: timed with them
    # on the small pyramid, without them ("no NL") at RetinaNet shapes.
    "fkd small": Case("fkd small", 2, 64, (256, 384), (8, 16, 32), 0, loss="fkd"),
    "fkd retinanet no NL": Case("fkd retinanet no NL", 2, 256, (800, 1216),
                                (8, 16, 32, 64, 128), 0, loss="fkd"),
    "pfi retinanet": Case("pfi retinanet", 2, 256, (800, 1216), (8, 16, 32, 64, 128), 0,
                          loss="pfi"),
    "rm 16 images": Case("rm 16 images", 16, 1, (800, 1216), (8,), 7, loss="rm"),
    # CWD, PKD, MGD (bench/channel_cases.py): RetinaNet's FPN, and a YOLO neck of N=8
    # 640x640 images whose widths grow with the stride (CWD and PKD at the teacher's).
    **{f"{loss} {name}": Case(f"{loss} {name}", N, widths[-1], image, strides, 0, loss=loss,
                              widths=widths, student_widths=student)
       for loss in ("cwd", "pkd", "mgd")
       for name, N, image, strides, widths, student in (
           ("retinanet", 2, (800, 1216), (8, 16, 32, 64, 128), (256,) * 5, (256,) * 5),
           ("yolo neck", 8, (640, 640), (8, 16, 32), (128, 256, 512), (64, 128, 256)))},
}
# A case small enough to find out in a second whether an implementation runs at all.
PROBE = Case("probe", 2, 8, (64, 96), (8, 16), 3)


@dataclass(frozen=True)
class Sweep:
    """Cases that differ in one quantity: ``points`` are (x, case), ``axis`` names x."""
    axis: str
    points: list[tuple[int, Case]]


# Channels of the boxes sweep: features light enough that what the boxes cost shows.
BOXES_SWEEP_CHANNELS = 32


def sweeps(quick: bool) -> dict[str, Sweep]:
    """How the cost grows with H*W, with C and with the boxes per image."""
    base = CASES["retinanet"]
    one_level = replace(base, strides=(8,))
    maps = [(13, 19), (25, 38), (50, 76), (100, 152)] + ([] if quick else [(200, 304)])
    at_50x76 = replace(one_level, image=(400, 608))
    channels = [32, 64, 128, 256] + ([] if quick else [512])
    pyramid = replace(base, channels=BOXES_SWEEP_CHANNELS)
    return {
        "H*W": Sweep(f"H*W of one level (N={base.N}, C={base.channels})", [
            (H * W, replace(one_level, name=f"map {H}x{W}", image=(8 * H, 8 * W)))
            for H, W in maps]),
        "C": Sweep(f"channels C (one {at_50x76.sizes[0][0]}x{at_50x76.sizes[0][1]} level, "
                   f"N={base.N})", [(C, replace(at_50x76, name=f"C={C}", channels=C))
                                    for C in channels]),
        "boxes per image": Sweep(
            f"boxes per image ({len(base.strides)}-level pyramid, N={base.N}, "
            f"C={BOXES_SWEEP_CHANNELS})", [(K, replace(pyramid, name=f"{K} boxes",
                                                         boxes_per_image=K))
                                           for K in (1, 3, 10, 30, 100)]),
    }


def random_boxes(case: Case, generator: torch.Generator) -> list[Tensor]:
    """Per image (K, 4) xyxy pixel boxes inside the image, log-uniform sides."""
    h, w = case.image
    K = case.boxes_per_image
    out = []
    for _ in range(case.N):
        log_side = torch.empty(K, 2).uniform_(math.log(MIN_BOX_SIDE), math.log(MAX_BOX_SIDE),
                                              generator=generator)
        side = log_side.exp() * torch.tensor([w, h])
        corner = torch.rand(K, 2, generator=generator) * (torch.tensor([w, h]) - side)
        out.append(torch.cat([corner, corner + side], 1).floor())
    return out


def make_inputs(case: Case, device: torch.device, dtype=torch.float32):
    """(feats_S, feats_T, gt_bboxes, img_shapes) of a case, on ``device``."""
    g = torch.Generator().manual_seed(case.seed)
    shape = [(case.N, case.channels, H, W) for H, W in case.sizes]
    feats_S = [torch.randn(s, generator=g).to(device, dtype) for s in shape]
    feats_T = [(torch.randn(s, generator=g) * 1.5 + 0.3).to(device, dtype) for s in shape]
    gt_bboxes = [b.to(device) for b in random_boxes(case, g)]
    return feats_S, feats_T, gt_bboxes, [case.image] * case.N


def loss_module(case: Case, backend: str, device: torch.device) -> torch.nn.Module:
    """MultiLevelFGDLoss (class defaults) with parameters fixed by the case's seed."""
    torch.manual_seed(case.seed)
    ms = fgdkern.MultiLevelFGDLoss(len(case.strides), case.channels, case.channels,
                                   backend=backend, check_finite=CHECK_FINITE)
    return ms.to(device)


class Unavailable(RuntimeError):
    """The implementation cannot run on this device (the message says why)."""


def build_loss(impl: str, case: Case, device: torch.device) -> torch.nn.Module:
    """The loss module of ``impl``: all built from the same parameter values."""
    if impl == "eager_loop":
        return EagerLoopMultiLevelFGD.like(loss_module(case, "reference", device))
    if impl == "compile":
        return compiled_reference(loss_module(case, "reference", device))
    check_timed_here(impl, device)
    return loss_module(case, impl, device)


def check_timed_here(impl: str, device: torch.device) -> None:
    """Unavailable when ``impl`` (reference, cpp or triton) is not timed on ``device``;
    ValueError for a name outside IMPLEMENTATIONS."""
    if impl == "triton" and (device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        raise Unavailable("triton is timed on CUDA only, never in the interpreter "
                          "(TRITON_INTERPRET=1)")
    if impl == "cpp" and device.type != "cpu":
        raise Unavailable("cpp runs on CPU tensors only")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; one of {IMPLEMENTATIONS}")


def implementation(impl: str, loss: torch.nn.Module, device: torch.device,
                   dtype=torch.float32) -> dict:
    """What a column runs: the FGD implementation and the box rasterizer that
    fgdkern.ops.dispatch.resolve picks for the module's backend on ``device`` (the
    loss rasterizes with backend "auto"), whether it is compiled, and whether the
    finite check is on."""
    if impl == "eager_loop":
        return dict(fgd="eager_loop (bench/baselines.py)",
                    rasterize="Python loop of slice assignments (baselines.paint_masks)",
                    compiled=None, check_finite=False)
    module = getattr(loss, "_orig_mod", loss)  # under torch.compile
    checking = any(getattr(m, "check_finite", False) for m in module.modules())
    return dict(fgd=dispatch.resolve("fgd", module.backend, device, dtype),
                rasterize=dispatch.resolve("rasterize", "auto", device),
                compiled=COMPILE_MODE if impl == "compile" else None, check_finite=checking)


@dataclass
class Runner:
    impl: str
    case: Case
    calls: dict[str, Callable[[], object]]  # mode -> zero-argument call
    grad_names: list[str]                    # what fwd+bwd differentiates, in order
    implementation: dict                     # implementation(): what actually runs

    def outputs(self, mode: str, out) -> dict[str, Tensor]:
        """A call's return value as named tensors (bench/checks.py)."""
        return named_outputs(mode, out, self.grad_names)


def _param_names(loss: torch.nn.Module) -> list[str]:
    return ["d" + name.removeprefix("_orig_mod.") for name, _ in loss.named_parameters()]


def other_cases(case: Case):
    """The module of the runners of a loss other than FGD."""
    if case.loss in ("cwd", "pkd", "mgd"):
        import channel_cases
        return channel_cases
    import seed_cases
    return seed_cases


def make_runner(impl: str, case: Case, device: torch.device) -> Runner:
    if case.loss != "fgd":
        return other_cases(case).make_runner(impl, case, device)
    loss = build_loss(impl, case, device)
    feats_S, feats_T, gt_bboxes, img_shapes = make_inputs(case, device)
    S_grad = [S.detach().requires_grad_() for S in feats_S]
    params = list(loss.parameters())

    def forward() -> Tensor:
        with torch.no_grad():
            return loss(feats_S, feats_T, gt_bboxes, img_shapes)

    def forward_backward() -> tuple[Tensor, tuple[Tensor, ...]]:
        value = loss(S_grad, feats_T, gt_bboxes, img_shapes)
        return value, torch.autograd.grad(value, S_grad + params)

    names = [f"dS[{k}]" for k in range(len(S_grad))] + _param_names(loss)
    return Runner(impl, case, {"fwd": forward, "fwd+bwd": forward_backward}, names,
                  implementation(impl, loss, device))


def reference_outputs(case: Case, device: torch.device, modes=MODES) -> dict[str, dict]:
    """mode -> the named outputs of backend="reference" at ``case``: what every
    implementation is checked against before it is timed."""
    runner = make_runner("reference", case, device)
    return {mode: runner.outputs(mode, runner.calls[mode]()) for mode in modes}


@functools.cache
def unavailable_reason(impl: str, device_type: str) -> str | None:
    """None when ``impl`` runs both modes on the probe case on this device, else why not.

    torch.compile is probed on a tiny function instead (compiling the loss takes
    10-40 s per shape here); a failure at a real case is reported where it happens.
    """
    if impl == "compile":
        return compile_works()
    try:
        runner = make_runner(impl, PROBE, torch.device(device_type))
        for call in runner.calls.values():
            call()
    except Exception as exc:  # any failure means: skip it, say why
        return f"{type(exc).__name__}: {str(exc)[:REASON_CHARS]}".splitlines()[0]
    return None


def available(device: torch.device, impls=IMPLEMENTATIONS, report=print) -> list[str]:
    """The implementations that run here; ``report`` is told the reason for each skipped one."""
    out = []
    for impl in impls:
        reason = unavailable_reason(impl, device.type)
        if reason is None:
            out.append(impl)
        else:
            report(f"skipping {impl}: {reason}")
    return out


def synchronized(call: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``call`` followed by a device synchronisation on CUDA (so a timer sees the work)."""
    if device.type != "cuda":
        return call

    def run():
        out = call()
        torch.cuda.synchronize(device)
        return out
    return run


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fgd_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a script that times one FGD case: --case, --reps, --threads, --device."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--case", default="retinanet", choices=[k for k, c in CASES.items()
                                                           if c.loss == "fgd"])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=default_device().type)
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """p's arguments, with --threads applied."""
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def feature_bytes(case: Case, mode: str, dtype=torch.float32) -> int:
    """Minimum bytes moved: fwd reads S and T once; fwd+bwd reads them twice and writes dS
    (the other losses: seed_cases.feature_bytes)."""
    if case.loss != "fgd":
        return other_cases(case).feature_bytes(case, mode)
    passes = {"fwd": 2, "fwd+bwd": 5}[mode]
    return passes * case.elements * torch.tensor([], dtype=dtype).element_size()
