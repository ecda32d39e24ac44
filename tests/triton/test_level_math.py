"""The small math between the channel passes on the GPU (fgdkern/triton/level_math.py with
the bodies of cwd_stats.py, cwd_grad.py, pkd_stats.py, pkd_grad.py) against the PyTorch
contract, fgdkern.reference.channel_passes (cwd_levels, cwd_coef, pkd_levels, pkd_coef):
levels of different sizes in one launch, more items than one program takes, the level
gradient as given or expanded from a scalar (what autograd passes for a sum)."""
import pytest
import torch

from fgdkern.reference import channel_passes as contract
from tests.harness import assert_matches_contract
from tests.triton.channel_common import make_maps
from tests.triton.common import DEVICE, needs_kernels

pytestmark = needs_kernels

# 3 x 130 items per CWD level: two map_items programs, the second part full
SIZES = [(5, 4), (3, 2), (1, 1)]
INV_TAU = [1.0, 0.25, 2.0]


def dlevels(expanded: bool, levels: int = len(SIZES)):
    if expanded:
        return torch.full((), 0.7, device=DEVICE).expand(levels)
    return torch.linspace(-1.5, 2.0, levels, device=DEVICE)


def as_list(fn):
    return lambda *args: [fn(*args)]


def test_cwd_levels():
    from fgdkern.triton import cwd_levels

    S, T = make_maps(3, 130, SIZES)
    chan = contract.cwd_stats(S, T, INV_TAU)
    assert_matches_contract([cwd_levels(chan, INV_TAU)], as_list(contract.cwd_levels), chan,
                            INV_TAU)


@pytest.mark.parametrize("expanded", [False, True])
def test_cwd_coef(expanded):
    from fgdkern.triton import cwd_coef

    S, T = make_maps(3, 130, SIZES)
    chan, g = contract.cwd_stats(S, T, INV_TAU), dlevels(expanded)
    assert_matches_contract(cwd_coef(chan, g, INV_TAU), contract.cwd_coef, chan, g, INV_TAU)


def test_pkd_levels():
    from fgdkern.triton import pkd_levels

    S, T = make_maps(2, 300, SIZES, seed=1)
    chan, pixels = contract.pkd_stats(S, T), [2 * H * W for H, W in SIZES]
    assert_matches_contract([pkd_levels(chan, pixels)], as_list(contract.pkd_levels), chan,
                            pixels)


@pytest.mark.parametrize("expanded", [False, True])
def test_pkd_coef(expanded):
    from fgdkern.triton import pkd_coef

    S, T = make_maps(2, 300, SIZES[:2], seed=2)
    chan, pixels, g = contract.pkd_stats(S, T), [2 * H * W for H, W in SIZES[:2]], dlevels(expanded, 2)
    assert_matches_contract(pkd_coef(chan, g, pixels), contract.pkd_coef, chan, g, pixels)
