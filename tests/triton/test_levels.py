"""Every level in one launch, split into runs (fgdkern/triton/levels.py).

How work is split (runs of pixel blocks per program, merged in-kernel and in
the combine kernel), levels that share one launch through element offsets,
mixed layouts and dtypes across levels, the per-level argument checks.
"""
import pytest
import torch

from tests.helpers import make_inputs
from tests.triton.common import DEVICE, check_both_passes, make_coefs, needs_kernels, same_temps

pytestmark = needs_kernels


# several blocks per image (143 px), C not a multiple of any BLOCK_C, a 1x1 level
@pytest.mark.parametrize("programs", [1, 5, 10_000])  # one run per image .. one block per run
def test_runs_of_blocks(programs):
    check_both_passes(make_inputs(2, 70, [(13, 11), (5, 7), (1, 1)], device=DEVICE),
                      programs=programs)


@pytest.mark.parametrize("programs,blocks_per_prog", [(1, 16), (5, 4), (10_000, 1)])
def test_programs_split_into_runs(programs, blocks_per_prog):
    """About `programs` runs of whole blocks, each within one (level, image)."""
    from fgdkern.triton.levels import Launch

    S = make_inputs(2, 70, [(13, 11), (5, 7), (1, 1)], device=DEVICE)[0]
    run = Launch(S, S, [], programs)
    blocks = [(s.shape[2] * s.shape[3] + run.block_hw - 1) // run.block_hw for s in S]
    assert run.blocks_per_prog == blocks_per_prog
    assert all(k * run.blocks_per_prog >= b > (k - 1) * run.blocks_per_prog
               for k, b in zip(run.nsplit, blocks))
    assert run.programs == sum(2 * k for k in run.nsplit)


def test_eight_levels_one_image():
    sizes = [(9, 8), (7, 5), (4, 6), (3, 3), (2, 5), (1, 3), (2, 1), (1, 1)]
    check_both_passes(make_inputs(1, 3, sizes, device=DEVICE))


def test_layouts_differ_across_levels():
    """channels_last, a strided view and an expanded (stride 0) teacher in one launch."""
    (s0, s1, s2), (t0, t1, t2), *rest = make_inputs(2, 6, [(5, 4), (3, 3), (2, 3)], device=DEVICE)
    s0, t0 = (x.contiguous(memory_format=torch.channels_last) for x in (s0, t0))
    s1 = torch.randn(2, 12, 3, 3, device=DEVICE)[:, 1::2]
    t2 = t2[:1].expand(2, -1, -1, -1)
    check_both_passes(([s0, s1, s2], [t0, t1, t2], *rest))


def test_levels_below_level_zero_in_memory():
    """Element offsets from level 0 are negative when a level lies before it."""
    N, C, sizes = 2, 5, [(4, 6), (3, 2)]
    S, T, *rest = make_inputs(N, C, sizes, device=DEVICE)
    n0, n1 = S[0].numel(), S[1].numel()
    buf = torch.empty(2 * (n0 + n1), device=DEVICE)  # [S1 | T1 | S0 | T0]
    views = [buf[2 * n1:2 * n1 + n0], buf[2 * n1 + n0:], buf[:n1], buf[n1:2 * n1]]
    S = [views[0].view_as(S[0]).copy_(S[0]), views[2].view_as(S[1]).copy_(S[1])]
    T = [views[1].view_as(T[0]).copy_(T[0]), views[3].view_as(T[1]).copy_(T[1])]
    check_both_passes((S, T, *rest))


def test_levels_of_different_dtypes():
    """One launch per dtype; outputs in level order."""
    a = make_inputs(2, 9, [(4, 5)], device=DEVICE, dtype=torch.float16)
    b = make_inputs(2, 9, [(3, 3)], device=DEVICE)
    args = tuple(x + y for x, y in zip(a, b))
    check_both_passes(args)


def test_levels_of_different_dtypes_keep_their_temperatures():
    """The temperatures of a dtype's launch are those of its own levels."""
    a = make_inputs(2, 9, [(4, 5)], device=DEVICE, dtype=torch.float16)
    b = make_inputs(2, 9, [(3, 3)], device=DEVICE)
    c = make_inputs(2, 9, [(2, 3)], device=DEVICE, dtype=torch.float16, seed=1)
    args = tuple(x + y + z for x, y, z in zip(a, b, c))
    check_both_passes(args, temps=[0.3, 1.0, 2.5])


def test_repeatable_bit_for_bit():
    from fgdkern.triton import fgd_grad, fgd_stats

    args = make_inputs(2, 40, [(9, 9), (2, 3)], device=DEVICE)
    coefs = make_coefs(args[0])
    def both(programs):
        return (fgd_stats(*args, same_temps(args), programs=programs)
                + fgd_grad(*args[:2], *coefs, programs=programs))

    for programs in (1, 5):
        assert all(torch.equal(x, y) for x, y in zip(both(programs), both(programs)))


@pytest.mark.parametrize("values", [[0.5, 2.0], (1, 3.0), torch.tensor([0.5, 2.0])])
def test_positive_levels_accepts(values):
    from fgdkern.triton.levels import positive_levels

    assert positive_levels("temps", values, 2) == [float(v) for v in values]


@pytest.mark.parametrize("values", [[0.5], [0.5, 2.0, 1.0], 0.5, [0.5, 0.0], [0.5, -1.0],
                                    [0.5, float("inf")], [float("nan"), 1.0], [1e39, 1.0],
                                    [1e-50, 1.0], [0.5, "hot"], None])
def test_positive_levels_rejects(values):
    from fgdkern.triton.levels import positive_levels

    with pytest.raises(ValueError, match="temps"):
        positive_levels("temps", values, 2)
