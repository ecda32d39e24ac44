"""The small math between two passes on the GPU (fgdkern/triton/level_math.py with the
bodies of cwd_stats.py, cwd_grad.py, pkd_stats.py, pkd_grad.py, pfi_math.py) against the
PyTorch contracts, fgdkern.reference.channel_passes (cwd_levels, cwd_coef, pkd_levels,
pkd_coef) and imitation_passes (pfi_levels, pfi_coef, on a second table, aux):
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


def test_opcheck():
    import importlib

    importlib.import_module("fgdkern.ops.cwd")  # registers the ops
    importlib.import_module("fgdkern.ops.pkd")
    importlib.import_module("fgdkern.ops.pfi")
    S, T = make_maps(2, 3, [(2, 3), (1, 1)])
    ops, utils = torch.ops.fgdkern, ("test_schema", "test_faketensor")
    cwd, pkd, g, pixels = contract.cwd_stats(S, T, [1.0, 0.5]), contract.pkd_stats(S, T), dlevels(False, 2), [12, 2]
    for op, args in [(ops.cwd_levels_triton, (cwd, [1.0, 0.5])),
                     (ops.cwd_coef_triton, (cwd, g, [1.0, 0.5])),
                     (ops.pkd_levels_triton, (pkd, pixels)),
                     (ops.pkd_coef_triton, (pkd, g, pixels)),
                     (ops.pfi_levels_triton, (cwd[:1] * 2, [6])),
                     (ops.pfi_coef_triton, (cwd[:1] * 2, g[:1], [6]))]:
        torch.library.opcheck(op.default, args, test_utils=utils)


@pytest.mark.parametrize("case,error,match", [
    ("no levels", ValueError, "chan must hold"),
    ("dtype", TypeError, r"chan\[1\] must be float32"),
    ("rows", ValueError, r"chan\[0\] must be a contiguous \(\.\.\., 3, C\)"),
    ("strided", ValueError, r"chan\[0\] must be a contiguous"),
    ("dlevels length", ValueError, "dlevels must be 2 float32"),
    ("dlevels dtype", ValueError, "dlevels must be 2 float32"),
])
def test_bad_tables(case, error, match):
    from fgdkern.triton import cwd_coef

    S, T = make_maps(2, 3, [(2, 3), (1, 1)])
    chan, g = contract.cwd_stats(S, T, [1.0, 1.0]), dlevels(False, 2)
    if case == "no levels":
        chan = []
    elif case == "dtype":
        chan[1] = chan[1].double()
    elif case == "rows":
        chan[0] = chan[0][:, :2].contiguous()
    elif case == "strided":
        chan[0] = chan[0].transpose(0, 2).contiguous().transpose(0, 2)
    elif case == "dlevels length":
        g = g[:1]
    else:
        g = g.double()
    with pytest.raises(error, match=match):
        cwd_coef(chan, g, [1.0] * len(chan))


@pytest.mark.parametrize("expanded", [False, True])
def test_pfi_levels_and_coef(expanded):
    """Pixel tables of the features' pairs and the probabilities' (aux), 130 pixels a level."""
    from fgdkern.reference import imitation_passes as imitation
    from fgdkern.triton import pfi_coef, pfi_levels

    sizes = [(13, 10), (2, 3)]
    F_s, F_t = make_maps(2, 6, sizes, seed=3)
    P_s, P_t = make_maps(2, 4, sizes, seed=4)
    ones = [torch.ones(2, c, device=DEVICE) for c in (6, 6, 4, 4)]
    stats = imitation.imitation_stats(F_s + P_s, F_t + P_t, ones)
    pix, widths, g = stats[:4], [24, 24], dlevels(expanded, 2)
    assert_matches_contract([pfi_levels(pix, widths)], as_list(imitation.pfi_levels), pix, widths)
    assert_matches_contract(pfi_coef(pix, g, widths), imitation.pfi_coef, pix, g, widths)
