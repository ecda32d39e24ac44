"""The PKD kernels (fgdkern/triton/pkd_stats.py, pkd_grad.py) against the PyTorch contract,
fgdkern.reference.channel_passes (pkd_stats, pkd_grad): levels of different sizes in one
launch split into runs, moments over every image of a level, C not a multiple of any
tile, 1x1 maps, N = 1 and 3, dtypes and layouts (dS in those of S), means large next to
the spread (Chan's merges), values of +-80, zeros, determinism, the custom ops' schema and
fake, and the launchers' argument checks. Each row of the statistics is held to its own
scale (channel_common.check_pkd)."""
import importlib

import pytest
import torch

from fgdkern.reference import channel_passes as contract
from fgdkern.rows import PKD_CHAN
from tests.harness import LAYOUTS, LOW_PRECISION
from tests.triton.channel_common import SIZES, check_pkd, make_maps, pkd_coefs
from tests.triton.common import DEVICE, needs_kernels

pytestmark = needs_kernels


def pkd_stats(*args, **kwargs):
    from fgdkern.triton import pkd_stats as kernel

    return kernel(*args, **kwargs)


def pkd_grad(*args, **kwargs):
    from fgdkern.triton import pkd_grad as kernel

    return kernel(*args, **kwargs)


@pytest.mark.parametrize("programs", [1, 5, 10_000])  # one run per image .. one block per run
def test_levels_in_one_launch(programs):
    check_pkd(*make_maps(2, 37, SIZES), programs=programs)


@pytest.mark.parametrize("N", [1, 3])
def test_images(N):
    check_pkd(*make_maps(N, 5, [(6, 11), (2, 3)], seed=N), programs=4)


def test_moments_are_over_every_image():
    """Images of different means: a per-image moment would miss the spread between them."""
    S, T = make_maps(3, 4, [(5, 7)], seed=6)
    shift = torch.tensor([-3.0, 0.0, 5.0], device=DEVICE)[:, None, None, None]
    S, T = [S[0] + shift], [T[0] - 2 * shift]
    stats, _ = check_pkd(S, T, programs=6)
    m2_s = stats[0][PKD_CHAN.m2_s].cpu()
    per_image = sum(contract.pkd_stats([s[None]], [t[None]])[0][PKD_CHAN.m2_s]
                    for s, t in zip(S[0].cpu(), T[0].cpu()))
    assert bool((m2_s > per_image + 100).all())


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_and_layouts(dtype, layout):
    """Low-precision maps are read as they are and reduced in float32; dS in S's dtype, a
    dense S's memory format kept, a strided view's dS dense."""
    S, T = make_maps(3, 19, [(5, 6), (3, 2)], dtype=dtype, layout=layout)
    _, dS = check_pkd(S, T, programs=3)
    for ds, s in zip(dS, S):
        assert ds.dtype == s.dtype
        dense = s.is_contiguous() or s.is_contiguous(memory_format=torch.channels_last)
        assert ds.stride() == s.stride() if dense else ds.is_contiguous()


def test_channels_last_more_channels_than_a_tile():
    check_pkd(*make_maps(1, 130, [(3, 2), (1, 1)], layout="channels_last"), programs=3)


def test_layouts_and_dtypes_differ_across_levels():
    """channels_last, a strided view, an expanded (stride 0) T and a bfloat16 level at once."""
    (s0, s1, s2), (t0, t1, t2) = make_maps(2, 6, [(5, 4), (3, 3), (2, 3)])
    s0, t0 = (x.contiguous(memory_format=torch.channels_last) for x in (s0, t0))
    s1 = torch.randn(2, 12, 3, 3, device=DEVICE)[:, 1::2]
    t2 = t2[:1].expand(2, -1, -1, -1)
    S16, T16 = make_maps(2, 6, [(4, 4)], dtype=torch.bfloat16, seed=2)
    check_pkd([s0, s1, s2] + S16, [t0, t1, t2] + T16)


@pytest.mark.parametrize("programs", [1, 10_000])
def test_means_large_next_to_the_spread(programs):
    """Means 1e3 times the spread: the centred moments must not cancel (Chan's merges)."""
    check_pkd(*make_maps(2, 7, [(10, 13), (3, 3)], scale=0.1, shift=100.0, seed=7),
              programs=programs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_of_80(dtype):
    S, T = make_maps(2, 9, [(12, 11), (3, 5)], dtype=dtype, scale=30.0, seed=5)
    check_pkd([s.clamp(-80, 80) for s in S], [t.clamp(-80, 80) for t in T], programs=5)


@pytest.mark.parametrize("kind", ["relu", "zero_channels", "zero_image"])
def test_zeros(kind):
    """Whole channels of 0: means and moments exactly 0 there."""
    check_pkd(*make_maps(2, 7, [(5, 6), (1, 3)], seed=3, kind=kind), programs=3)


def test_repeatable_bit_for_bit():
    S, T = make_maps(2, 20, [(6, 6), (2, 3)])
    coef = pkd_coefs(S, T)
    for programs in (1, 5):
        for run in (lambda: pkd_stats(S, T, programs=programs),
                    lambda: pkd_grad(S, T, coef, programs=programs)):
            assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_opcheck():
    importlib.import_module("fgdkern.ops.pkd")  # registers the ops

    S, T = make_maps(2, 3, [(2, 3), (1, 1)])
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.fgdkern.pkd_stats_triton.default, (S, T), test_utils=utils)
    torch.library.opcheck(torch.ops.fgdkern.pkd_grad_triton.default, (S, T, pkd_coefs(S, T)),
                          test_utils=utils)


@pytest.mark.parametrize("case,error,match", [
    ("no levels", ValueError, "S and T"),
    ("T shape", ValueError, r"T\[0\]"),
    ("float64", TypeError, r"S\[0\]"),
    ("coef levels", ValueError, "coef has 2 levels, S has 1"),
    ("coef shape", ValueError, r"coef\[0\]"),
    ("coef dtype", TypeError, r"coef\[0\]"),
])
def test_argument_checks(case, error, match):
    S, T = make_maps(2, 4, [(3, 3)])
    coef = pkd_coefs(S, T)
    bad = {
        "no levels": ("stats", [], []),
        "T shape": ("stats", S, [T[0][..., :2]]),
        "float64": ("stats", [S[0].double()], [T[0].double()]),
        "coef levels": ("grad", S, T, coef + coef),
        "coef shape": ("grad", S, T, [coef[0][:3]]),
        "coef dtype": ("grad", S, T, [coef[0].half()]),
    }[case]
    with pytest.raises(error, match=match):
        (pkd_stats if bad[0] == "stats" else pkd_grad)(*bad[1:])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"),
                                          (torch.bfloat16, "channels_last")])
def test_detector_pyramid(dtype, layout):
    """A RetinaNet-sized pyramid: many runs per level, over every SM of the device."""
    sizes = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    check_pkd(*make_maps(2, 256, sizes, dtype=dtype, layout=layout))
