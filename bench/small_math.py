"""FGD's small math three ways, side by side: the kernels, its contract, the contract compiled.

    python bench/small_math.py [--case retinanet] [--reps 30] [--threads N] [--device cpu]

Times terms + terms_grad (fgdkern.ops.fgd.kernels) on statistics of the case's
shapes: the kernels of the device ("cpp" on CPU, "triton" on a GPU), the
contract fgdkern/reference/fgd_small_math.py as it is ("torch"), and the same
contract with its terms under torch.compile (Inductor: C++ on CPU, Triton on a
GPU; its backward is Inductor's too, through autograd). Prints each one's
first call (the compile, for the last) and the median of the calls after it,
timed in turns. This is why the kernels are written by hand rather than
generated from the contract: bench/README.md, "FGD's small math".
"""
from __future__ import annotations

import functools
import statistics

import torch

import cases
import timing
from fgdkern.ops.fgd import kernels
from fgdkern.reference import fgd_small_math
from fgdkern.rows import FGD_CHAN, FGD_PIX


def small_math_inputs(case: cases.Case, device: torch.device):
    """Random statistics, masks, conv_mask weights and GcBlock MLPs of the case's levels."""
    g = torch.Generator().manual_seed(0)
    sizes, N, C = case.sizes, case.N, case.channels
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    pix = [rand(N, len(FGD_PIX), h * w) for h, w in sizes]
    chan = [rand(N, len(FGD_CHAN), C) for _ in sizes]
    fg = [(rand(N, h, w) > 1).float() for h, w in sizes]
    bg = [(1 - f) / f[0].numel() for f in fg]
    shapes = [(C // 2, C, 1, 1), (C // 2,), (C // 2, 1, 1), (C // 2, 1, 1), (C, C // 2, 1, 1),
              (C,)]
    mlp = [[0.1 * rand(*s) for _ in sizes for s in shapes] for _ in range(2)]
    L = len(sizes)
    return (pix, chan, fg, bg, [rand(C) for _ in sizes], [rand(C) for _ in sizes], *mlp,
            [1e-5] * L, [1e-5] * L, [0.5] * L)


def step(k, terms, args) -> None:
    """One terms + terms_grad call as the FGD op makes them, terms_grad differentiating
    ``terms`` (the contract's own, or it compiled)."""
    pix, chan, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t, temps = args
    fgd_small_math.terms = terms
    out = k.terms(pix, chan, mlp_s, mlp_t, eps_s, eps_t, temps)
    G = torch.ones_like(out[0])
    k.terms_grad(G, pix, chan, out[1:], fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t, temps)


def main() -> None:
    args = cases.parse(cases.fgd_parser(__doc__))
    device = torch.device(args.device)
    inputs = small_math_inputs(cases.CASES[args.case], device)
    impl = "cpp" if device.type == "cpu" else "triton"
    eager = fgd_small_math.terms
    ways = {impl: (kernels(impl), eager), "contract": (kernels("torch"), eager),
            "contract compiled": (kernels("torch"), torch.compile(eager))}
    calls = {name: functools.partial(step, k, terms, inputs) for name, (k, terms) in ways.items()}
    try:
        first = {name: timing.first_call(call, device)[1] for name, call in calls.items()}
        times = timing.interleaved_ms(calls, device, args.reps)
    finally:
        fgd_small_math.terms = eager
    print(f"{args.case}: FGD small math, terms + terms_grad on {device.type}, "
          f"{torch.get_num_threads()} threads (ms)")
    print(f"{'':20}{'first call':>12}{'median':>10}")
    for name in ways:
        print(f"{name:20}{first[name]:12.1f}{statistics.median(times[name]):10.3f}")


if __name__ == "__main__":
    main()
