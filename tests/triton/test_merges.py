"""Exact merges of partial reductions (fgdkern/triton/merges.py), through the passes:
softmax logits far from zero (online-softmax rescaling) and a D with a large mean
(Chan's second moment), split into one run per image and into one block per run."""
import pytest

from fgdkern.reference import fgd_passes as contract
from tests.harness import assert_exact, to_float64
from tests.helpers import make_inputs
from tests.triton.common import DEVICE, check_both_passes, needs_kernels

pytestmark = needs_kernels


@pytest.mark.parametrize("programs", [1, 10_000])
def test_softmax_logits_far_from_zero(programs):
    """Block maxima differ by tens: the online softmaxes must rescale, not overflow.

    Logits of ~100 carry rounding errors of ~1e-5 whatever the summation order; the
    float64 truth tells the kernels' share of that from the contract's.
    """
    S, T, fg, bg, w_s, w_t = make_inputs(2, 33, [(11, 12), (3, 4)], device=DEVICE)
    w_s = [w * 40 for w in w_s]
    w_t = [w * 40 for w in w_t]
    check_both_passes((S, T, fg, bg, w_s, w_t), temps=[0.02, 0.02], programs=programs)


@pytest.mark.parametrize("programs", [1, 10_000])
def test_second_moment_of_shifted_d(programs):
    """D with a mean 1e3 times its spread: the centred moment must not cancel."""
    from fgdkern.rows import FGD_CHAN
    from fgdkern.triton import fgd_stats

    S, T, *rest = make_inputs(2, 7, [(10, 13)], device=DEVICE)
    S = [t + 100.0 + 0.1 * s for s, t in zip(S, T)]
    got = fgd_stats(S, T, *rest, [0.5], programs=programs)
    def m2_d(stats):
        return stats[1][:, FGD_CHAN.m2_d].cpu()

    assert_exact("m2_d", m2_d(got), m2_d(contract.fgd_stats(S, T, *rest, [0.5])),
                 lambda: m2_d(contract.fgd_stats(*to_float64((S, T, *rest)), [0.5])),
                 S[0].numel())
