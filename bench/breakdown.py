"""Where the time of a fused FGD training step goes: the two passes against everything else.

    python bench/breakdown.py [--case retinanet] [--impl cpp] [--reps 30] [--threads N]

Runs the fwd+bwd call of bench/cases.py (the module as users call it, the
same call report.py times) and, inside it, times each of the four steps of the
fused implementation: the statistics pass, the small math (terms) and its
backward (terms_grad), and the gradient pass (fgdkern.ops.fgd.kernels wrapped
with a clock; CUDA: synchronised around each step). Prints the median of the
whole call, of each step and of the rest (the whole minus the steps: masks,
checks, autograd), once with the gradient buffers recycled (the default,
docs/cpu.md, "Recycled gradient buffers") and once with FGDKERN_RECYCLE=0,
in turns.
"""
from __future__ import annotations

import collections
import os
import statistics
import time

import torch

import cases
from fgdkern.ops import fgd as fgd_op


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


STEPS = {"stats": "stats pass", "terms": "terms", "terms_grad": "terms grad",
         "grad": "grad pass"}


def clocked_kernels(clock: dict, device: torch.device):
    """fgd_op.kernels with each step's wall time appended to clock[its name]."""
    real = fgd_op.kernels

    def kernels(impl):
        def timed(name, fn):
            def call(*args):
                sync(device)
                start = time.perf_counter()
                out = fn(*args)
                sync(device)
                clock[name].append(time.perf_counter() - start)
                return out
            return call
        k = real(impl)
        return k._replace(**{field: timed(name, getattr(k, field))
                             for field, name in STEPS.items()})
    return kernels


def measure(case: cases.Case, impl: str, device: torch.device, reps: int) -> dict:
    runner = cases.make_runner(impl, case, device)
    call = runner.calls["fwd+bwd"]
    clocks = {mode: collections.defaultdict(list) for mode in ("recycled", "not recycled")}
    real = fgd_op.kernels
    try:
        for rep in range(reps + 2):  # two warm-up rounds, then the timed ones, in turns
            for mode, clock in clocks.items():
                os.environ["FGDKERN_RECYCLE"] = "1" if mode == "recycled" else "0"
                fgd_op.kernels = clocked_kernels(clock, device)
                sync(device)
                start = time.perf_counter()
                call()
                sync(device)
                clock["whole call"].append(time.perf_counter() - start)
                if rep < 2:
                    clock.clear()
    finally:
        fgd_op.kernels = real
        os.environ.pop("FGDKERN_RECYCLE", None)
    out = {}
    for mode, clock in clocks.items():
        rest = [whole - sum(steps) for whole, *steps in zip(
            clock["whole call"], *(clock[name] for name in STEPS.values()))]
        out[mode] = {name: 1e3 * statistics.median(v) for name, v in
                     [*clock.items(), ("rest", rest)]}
    return out


def main() -> None:
    p = cases.fgd_parser(__doc__)
    p.add_argument("--impl", default="cpp", choices=["cpp", "triton"])
    args = cases.parse(p)
    device = torch.device(args.device)
    result = measure(cases.CASES[args.case], args.impl, device, args.reps)
    print(f"{args.case}, {args.impl} on {device.type}, fwd+bwd, median of {args.reps} (ms)")
    names = ["whole call", *STEPS.values(), "rest"]
    print(f"{'':14}" + "".join(f"{n:>12}" for n in names))
    for mode, row in result.items():
        print(f"{mode:14}" + "".join(f"{row[n]:12.2f}" for n in names))


if __name__ == "__main__":
    main()
