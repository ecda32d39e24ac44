"""Aligned levels (fgdkern/triton/tiles.py, "Aligned levels"; docs/gpu.md).

A launch runs each level either with ALIGN, the elements in 16 bytes (vector
loads and stores), or with an address per element. Which levels qualify is
decided on the host; a level flagged by mistake would have its extent and
offsets rounded down to multiples of ALIGN in the kernels, so the contract
checks of pyramids that mix both kinds fail on any wrong flag.
"""
import pytest
import torch

from tests.helpers import make_inputs
from tests.triton.common import DEVICE, check_both_passes, needs_kernels
from tests.triton.channel_common import check_cwd, check_pkd
from tests.triton.channel_common import make_maps as channel_maps
from tests.triton.imitation_common import check_grad, check_stats, make_maps

pytestmark = needs_kernels

# H * W = 48, 35, 20, 1: a multiple of 8 and of 4, neither, a multiple of 4 only, one pixel
SIZES = [(8, 6), (5, 7), (4, 5), (1, 1)]
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (dtype, layout, C, flags of SIZES): pixel-dense levels need H * W (and their channel
# stride) a multiple of ALIGN = 4 (float32) or 8 (16-bit); channel-dense ones need C.
CASES = [
    (F32, "contiguous", 6, [1, 0, 1, 0]),
    (F16, "contiguous", 6, [1, 0, 0, 0]),
    (BF16, "strided", 6, [1, 0, 0, 0]),
    (F32, "channels_last", 8, [1, 1, 1, 1]),
    (F16, "channels_last", 8, [1, 1, 1, 1]),
    (F32, "channels_last", 6, [0, 0, 0, 0]),
]


def flags(S, T, outputs=()):
    from fgdkern.triton.levels import Launch

    run = Launch(S, T, list(outputs), None)
    return [run.aligned(level) for level in range(len(S))]


@pytest.mark.parametrize("dtype,layout,C,want", CASES)
def test_which_levels_are_aligned(dtype, layout, C, want):
    S, T, *_ = make_inputs(2, C, SIZES, dtype=dtype, device=DEVICE, layout=layout)
    assert flags(S, T) == want
    assert flags(S, T, [[torch.empty_like(s) for s in S]]) == want  # an output like S


@pytest.mark.parametrize("dtype,layout,C,want", CASES)
def test_mixed_pyramid_matches_the_contracts(dtype, layout, C, want):
    args = make_inputs(2, C, SIZES, dtype=dtype, device=DEVICE, layout=layout)
    check_both_passes(args)
    X, Y, w = make_maps(2, C, SIZES, dtype, layout)
    check_stats(X, Y, w)
    check_grad(X, Y)


@pytest.mark.parametrize("dtype,layout,C,want", CASES)
def test_mixed_pyramid_matches_the_channel_contracts(dtype, layout, C, want):
    """The CWD and PKD passes (sweeps.py) on the same pyramids: their aligned levels too."""
    S, T = channel_maps(2, C, SIZES, dtype, layout)
    assert flags(S, T) == want
    check_cwd(S, T, [1.0, 0.5, 2.0, 1.0])
    check_pkd(S, T)


@pytest.mark.parametrize("programs", [1, 10_000])  # one run per image .. one block per run
def test_runs_of_several_blocks(programs):
    """Levels of many blocks, aligned (H * W = 160) or not (153), in runs of any length."""
    args = make_inputs(2, 36, [(16, 10), (9, 17)], device=DEVICE)
    assert flags(*args[:2]) == [1, 0]
    check_both_passes(args, programs=programs)


def test_level_one_element_off_runs_unaligned():
    """A level whose offset from level 0 is not a multiple of ALIGN runs element by element."""
    S, T, *rest = make_inputs(2, 4, [(4, 4), (4, 4)], device=DEVICE)
    buf = torch.empty(S[1].numel() + 1, device=DEVICE)
    S = [S[0], buf[1:].view_as(S[1]).copy_(S[1])]
    assert flags(S, T) == [1, 0]
    check_both_passes((S, T, *rest))
    check_cwd(S, T, [1.0, 1.0])
    check_pkd(S, T)


@pytest.mark.parametrize("shape,strides,layout,want", [
    ((2, 3, 4, 5), (60, 20, 5, 1), "pix", True),
    ((2, 3, 5, 5), (75, 25, 5, 1), "pix", False),      # H * W = 25
    ((2, 3, 4, 5), (61, 20, 5, 1), "pix", False),      # image stride
    ((1, 3, 4, 5), (61, 20, 5, 1), "pix", True),       # ... of the only image: never used
    ((2, 1, 4, 5), (20, 7, 5, 1), "pix", True),        # the only channel's stride
    ((2, 8, 3, 3), (72, 1, 24, 8), "channels", True),
    ((2, 6, 3, 3), (54, 1, 18, 6), "channels", False),  # C = 6
    ((2, 8, 1, 3), (24, 1, 7, 8), "channels", True),    # the only row's stride
    ((2, 8, 3, 3), (72, 1, 24, 8), "general", False),
])
def test_level_aligned_rule(shape, strides, layout, want):
    from fgdkern.triton.tiles import CHANNELS_DENSE, GENERAL, PIX_DENSE, level_aligned

    code = {"pix": PIX_DENSE, "channels": CHANNELS_DENSE, "general": GENERAL}[layout].value
    x = torch.empty(1000).as_strided(shape, strides)
    assert level_aligned([x], [0], code, 4) is want
    assert level_aligned([x], [2], code, 4) is False  # the level's offset
