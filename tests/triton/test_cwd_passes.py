"""The CWD kernels (fgdkern/triton/cwd_stats.py, cwd_grad.py) against the PyTorch contract,
fgdkern.reference.channel_passes (cwd_stats, cwd_grad): levels of different sizes and
temperatures in one launch split into runs, C not a multiple of any tile, 1x1 maps, N = 1
and 3, dtypes and layouts (dS in those of S), logits far from zero (the online maxima),
zeros, determinism, the custom ops' schema and fake, and the launchers' argument checks."""
import importlib

import pytest
import torch

from tests.harness import LAYOUTS, LOW_PRECISION
from tests.triton.channel_common import SIZES, check_cwd, cwd_coefs, make_maps
from tests.triton.common import DEVICE, needs_kernels

pytestmark = needs_kernels

INV_TAU = [1.0, 0.25, 2.0]  # one per level of SIZES: the level table's column


def cwd_stats(*args, **kwargs):
    from fgdkern.triton import cwd_stats as kernel

    return kernel(*args, **kwargs)


def cwd_grad(*args, **kwargs):
    from fgdkern.triton import cwd_grad as kernel

    return kernel(*args, **kwargs)


@pytest.mark.parametrize("programs", [1, 5, 10_000])  # one run per image .. one block per run
def test_levels_in_one_launch(programs):
    check_cwd(*make_maps(2, 37, SIZES), INV_TAU, programs=programs)


@pytest.mark.parametrize("N", [1, 3])
def test_images(N):
    check_cwd(*make_maps(N, 5, [(6, 11), (2, 3)], seed=N), [0.5, 1.0], programs=4)


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_and_layouts(dtype, layout):
    """Low-precision maps are read as they are and reduced in float32; dS in S's dtype, a
    dense S's memory format kept, a strided view's dS dense."""
    S, T = make_maps(3, 19, [(5, 6), (3, 2)], dtype=dtype, layout=layout)
    _, dS = check_cwd(S, T, [1.0, 0.5], programs=3)
    for ds, s in zip(dS, S):
        assert ds.dtype == s.dtype
        dense = s.is_contiguous() or s.is_contiguous(memory_format=torch.channels_last)
        assert ds.stride() == s.stride() if dense else ds.is_contiguous()


def test_channels_last_more_channels_than_a_tile():
    check_cwd(*make_maps(1, 130, [(3, 2), (1, 1)], layout="channels_last"), [1.0, 1.0],
              programs=3)


def test_layouts_and_dtypes_differ_across_levels():
    """channels_last, a strided view, an expanded (stride 0) T and a float16 level at once."""
    (s0, s1, s2), (t0, t1, t2) = make_maps(2, 6, [(5, 4), (3, 3), (2, 3)])
    s0, t0 = (x.contiguous(memory_format=torch.channels_last) for x in (s0, t0))
    s1 = torch.randn(2, 12, 3, 3, device=DEVICE)[:, 1::2]
    t2 = t2[:1].expand(2, -1, -1, -1)
    S16, T16 = make_maps(2, 6, [(4, 4)], dtype=torch.float16, seed=2)
    check_cwd([s0, s1, s2] + S16, [t0, t1, t2] + T16, [1.0, 0.5, 2.0, 1.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("programs", [1, 10_000])
def test_logits_far_from_zero(dtype, programs):
    """Values of +-80 at tau = 1: exp overflows float32 at 88, so only the online maxima keep
    the sums finite, and the blocks' maxima differ by tens (the rescaling matters)."""
    S, T = make_maps(2, 9, [(12, 11), (3, 5)], dtype=dtype, scale=30.0, seed=5)
    S = [s.clamp(-80, 80) for s in S]
    T = [t.clamp(-80, 80) for t in T]
    assert max(float(s.abs().max()) for s in S) >= 79
    stats, _ = check_cwd(S, T, [1.0, 1.0], programs=programs)
    assert all(bool(torch.isfinite(st).all()) for st in stats)


@pytest.mark.parametrize("kind", ["relu", "zero_channels", "zero_image"])
def test_zeros(kind):
    """Whole channels of 0: a uniform softmax, lse = log HW and kl of 0 where both are."""
    check_cwd(*make_maps(2, 7, [(5, 6), (1, 3)], seed=3, kind=kind), [1.0, 0.5], programs=3)


def test_repeatable_bit_for_bit():
    S, T = make_maps(2, 20, [(6, 6), (2, 3)])
    coef = cwd_coefs(S, T, [1.0, 0.5])
    for programs in (1, 5):
        for run in (lambda: cwd_stats(S, T, [1.0, 0.5], programs=programs),
                    lambda: cwd_grad(S, T, coef, [1.0, 0.5], programs=programs)):
            assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_opcheck():
    importlib.import_module("fgdkern.ops.cwd")  # registers the ops

    S, T = make_maps(2, 3, [(2, 3), (1, 1)])
    inv_tau = [1.0, 0.5]
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.fgdkern.cwd_stats_triton.default, (S, T, inv_tau),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.fgdkern.cwd_grad_triton.default,
                          (S, T, cwd_coefs(S, T, inv_tau), inv_tau), test_utils=utils)


@pytest.mark.parametrize("case,error,match", [
    ("no levels", ValueError, "S and T"),
    ("T dtype", TypeError, r"T\[0\]"),
    ("float64", TypeError, r"S\[0\]"),
    ("inv_tau levels", ValueError, "inv_tau"),
    ("inv_tau zero", ValueError, "inv_tau"),
    ("coef shape", ValueError, r"coef\[0\]"),
    ("coef dtype", TypeError, r"coef\[0\]"),
])
def test_argument_checks(case, error, match):
    S, T = make_maps(2, 4, [(3, 3)])
    coef = cwd_coefs(S, T, [1.0])
    bad = {
        "no levels": ("stats", [], [], []),
        "T dtype": ("stats", S, [T[0].half()], [1.0]),
        "float64": ("stats", [S[0].double()], [T[0].double()], [1.0]),
        "inv_tau levels": ("stats", S, T, [1.0, 1.0]),
        "inv_tau zero": ("grad", S, T, coef, [0.0]),
        "coef shape": ("grad", S, T, [coef[0][:, :2]], [1.0]),
        "coef dtype": ("grad", S, T, [coef[0].double()], [1.0]),
    }[case]
    with pytest.raises(error, match=match):
        (cwd_stats if bad[0] == "stats" else cwd_grad)(*bad[1:])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "contiguous"),
                                          (torch.bfloat16, "channels_last")])
def test_detector_pyramid(dtype, layout):
    """A RetinaNet-sized pyramid: many runs per image, over every SM of the device."""
    sizes = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    check_cwd(*make_maps(2, 256, sizes, dtype=dtype, layout=layout), [1.0] * len(sizes))
