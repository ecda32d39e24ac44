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

import argparse
import statistics
import time

import torch

import cases
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


def step(k, args, device):
    """One terms + terms_grad call, as the FGD op makes them, synchronised."""
    pix, chan, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t, temps = args
    out = k.terms(pix, chan, mlp_s, mlp_t, eps_s, eps_t, temps)
    G = torch.ones_like(out[0])
    k.terms_grad(G, pix, chan, out[1:], fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t, temps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="retinanet", choices=[k for k, c in cases.CASES.items()
                                                           if c.loss == "fgd"])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=cases.default_device().type)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    inputs = small_math_inputs(cases.CASES[args.case], device)
    eager = fgd_small_math.terms
    compiled = torch.compile(eager)
    impl = "cpp" if device.type == "cpu" else "triton"
    ways = {impl: (kernels(impl), eager), "contract": (kernels("torch"), eager),
            "contract compiled": (kernels("torch"), compiled)}
    first, times = {}, {name: [] for name in ways}
    try:
        for rep in range(args.reps + 1):
            for name, (k, terms) in ways.items():
                fgd_small_math.terms = terms   # terms_grad differentiates this one
                start = time.perf_counter()
                step(k, inputs, device)
                (times[name] if rep else first.setdefault(name, [])).append(
                    time.perf_counter() - start)
    finally:
        fgd_small_math.terms = eager
    print(f"{args.case}: FGD small math, terms + terms_grad on {device.type}, "
          f"{torch.get_num_threads()} threads (ms)")
    print(f"{'':20}{'first call':>12}{'median':>10}")
    for name in ways:
        print(f"{name:20}{1e3 * first[name][0]:12.1f}{1e3 * statistics.median(times[name]):10.3f}")


if __name__ == "__main__":
    main()
