"""The FGD statistics kernels (fgdkern/triton/fgd_stats.py) beyond the shared pass tests:
one temperature per level, and the launcher's argument checks. Compared with the
PyTorch contract, fgdkern.reference.fgd_passes.fgd_stats."""
import pytest
import torch

from fgdkern.reference import fgd_passes as contract
from fgdkern.rows import FGD_CHAN
from tests.harness import assert_matches_contract
from tests.helpers import make_inputs
from tests.triton.common import DEVICE, needs_kernels

pytestmark = needs_kernels


def fgd_stats(*args, **kwargs):
    from fgdkern.triton import fgd_stats as kernel

    return kernel(*args, **kwargs)


def sharp_inputs():
    """Two levels in one launch whose teacher attention is far from uniform."""
    S, T, *rest = make_inputs(2, 11, [(7, 9), (4, 5)], device=DEVICE)
    T = [t * (1 + 3 * torch.rand(t.shape[0], 1, *t.shape[2:], device=DEVICE)) for t in T]
    return (S, T, *rest)


@pytest.mark.parametrize("programs", [1, 10_000])
def test_each_level_its_own_temperature(programs):
    """Row by row, each level matches the contract at its own temperature."""
    args = sharp_inputs()
    temps = [0.25, 2.0]
    got = fgd_stats(*args, temps, programs=programs)
    assert_matches_contract(got, contract.fgd_stats, *args, temps)   # row by row
    want = contract.fgd_stats(*args, temps)
    swapped = contract.fgd_stats(*args, temps[::-1])
    L = len(temps)
    for k in range(L):
        # the test would see a kernel that used the other level's temperature
        x_fg = FGD_CHAN.x_fg
        assert not torch.allclose(swapped[L + k][:, x_fg], want[L + k][:, x_fg], rtol=1e-3)


@pytest.mark.parametrize("temps", [0.5, [0.5], [0.5, 1.0, 2.0], [0.5, 0.0], [-1.0, 0.5],
                                   [0.5, float("inf")], [float("nan"), 0.5], [0.5, "warm"]])
def test_bad_temps(temps):
    args = make_inputs(1, 4, [(3, 3), (2, 2)], device=DEVICE)
    with pytest.raises(ValueError, match="temps"):
        fgd_stats(*args, temps)


def _bad(args, k, value):
    return tuple(value if i == k else a for i, a in enumerate(args))


@pytest.mark.parametrize("case,error,name", [
    ("T dtype", TypeError, r"T\[0\]"),
    ("float64", TypeError, r"S\[0\]"),
    ("fg shape", ValueError, r"fg\[0\]"),
    ("w_s dtype", TypeError, r"w_s\[0\]"),
    ("no levels", ValueError, "S and T"),
    ("T shape", ValueError, r"T\[0\]"),
])
def test_argument_checks(case, error, name):
    args = make_inputs(1, 4, [(3, 3)], device=DEVICE)
    S, T, fg, bg, w_s, w_t = args
    bad = {
        "T dtype": _bad(args, 1, [T[0].half()]),
        "float64": _bad(_bad(args, 0, [S[0].double()]), 1, [T[0].double()]),
        "fg shape": _bad(args, 2, [fg[0][:, :2]]),
        "w_s dtype": _bad(args, 4, [w_s[0].half()]),
        "no levels": ([], [], [], [], [], []),
        "T shape": _bad(args, 1, [T[0][..., :2]]),
    }[case]
    with pytest.raises(error, match=name):
        fgd_stats(*bad, [0.5] * len(bad[0]))
