"""FGD's small math three ways, side by side: the kernels, its contract, the contract compiled.

    python bench/small_math.py [--case retinanet] [--reps 30] [--threads N] [--device cpu]

Times terms + terms_grad (fgdkern.ops.fgd.kernels) on statistics of the case's
shapes: the kernels of the device ("cpp" on CPU, "triton" on a GPU), the
contract fgdkern/reference/fgd_small_math.py as it is ("torch"), and the same
contract's terms and terms_grad under torch.compile (Inductor: C++ on CPU, Triton
on a GPU; terms_grad's vjp traces). Prints each one's
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
from fgdkern import FGDLoss
from fgdkern.ops.fgd import kernels
from fgdkern.reference import fgd_small_math
from fgdkern.rows import FGD_CHAN, FGD_PIX


def small_math_inputs(case: cases.Case, device: torch.device):
    """Random statistics and masks of the case's levels, and the conv_mask weights and
    GcBlock MLPs of one FGDLoss per level."""
    g = torch.Generator().manual_seed(0)
    sizes, N, C = case.sizes, case.N, case.channels
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    pix = [rand(N, len(FGD_PIX), h * w) for h, w in sizes]
    chan = [rand(N, len(FGD_CHAN), C) for _ in sizes]
    fg = [(rand(N, h, w) > 1).float() for h, w in sizes]
    bg = [(1 - f) / f[0].numel() for f in fg]
    torch.manual_seed(0)
    gcs = [[FGDLoss(C, C).to(device).gc_block(side) for _ in sizes] for side in "st"]
    w = [[gc.mask_weight.detach().flatten() for gc in side] for side in gcs]
    mlp = [[p.detach() for p in fgd_small_math.flat(side)] for side in gcs]
    eps = [[gc.norm_eps for gc in side] for side in gcs]
    return (pix, chan, fg, bg, *w, *mlp, *eps, [0.5] * len(sizes))


def step(k, args) -> None:
    """One terms + terms_grad call of the steps k, as the FGD op makes them."""
    pix, chan, fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t, temps = args
    out = k.terms(pix, chan, mlp_s, mlp_t, eps_s, eps_t, temps)
    G = torch.ones_like(out[0])
    k.terms_grad(G, pix, chan, out[1:], fg, bg, w_s, w_t, mlp_s, mlp_t, eps_s, eps_t, temps)


def main() -> None:
    args = cases.parse(cases.fgd_parser(__doc__))
    device = torch.device(args.device)
    inputs = small_math_inputs(cases.CASES[args.case], device)
    impl = "cpp" if device.type == "cpu" else "triton"
    contract = kernels("torch")
    ways = {impl: kernels(impl), "contract": contract, "contract compiled": contract._replace(
        terms=torch.compile(contract.terms), terms_grad=torch.compile(contract.terms_grad))}
    calls = {name: functools.partial(step, k, inputs) for name, k in ways.items()}
    first = {name: timing.first_call(call, device)[1] for name, call in calls.items()}
    times = timing.interleaved_ms(calls, device, args.reps)
    print(f"{args.case}: FGD small math, terms + terms_grad on {device.type}, "
          f"{torch.get_num_threads()} threads (ms)")
    print(f"{'':20}{'first call':>12}{'median':>10}")
    for name in ways:
        print(f"{name:20}{first[name]:12.1f}{statistics.median(times[name]):10.3f}")


if __name__ == "__main__":
    main()
