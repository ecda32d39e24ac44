"""The C++ statistics pass alone: one temperature per level, every output row
compared by name with the PyTorch contract, its input checks, and float16 /
bfloat16 reads against torch's own conversions, bit for bit."""
import pytest
import torch

from fgdkern.reference import fgd_passes as contract
from fgdkern.rows import FGD_CHAN, FGD_PIX
from tests.cpu.cpp_ops import FLOAT_MIN, needs_cpp, stats, valid_args
from tests.helpers import make_inputs

pytestmark = needs_cpp


def double(args):
    return [[x.double() for x in a] for a in args]


def test_each_named_row_matches_the_contract_at_its_own_temperature():
    """Two levels with different temperatures in one call; the rows of a table
    differ from each other, so a row out of place or a level given the other
    level's temperature would not match. As in test_fgd_cpp.py, each row is at
    most 2x less accurate than the contract in float32, both against float64."""
    args = make_inputs(2, 24, [(12, 10), (6, 5)], seed=9)
    temps = [0.1, 3.0]
    got, ref = stats(*args, temps), contract.fgd_stats(*args, temps)
    want = contract.fgd_stats(*double(args), temps)
    swapped = contract.fgd_stats(*double(args), temps[::-1])
    for l in range(2):
        for table, rows in [(0, FGD_PIX), (2, FGD_CHAN)]:
            g, r, w = got[table + l].double(), ref[table + l].double(), want[table + l]
            for name in rows:
                i = getattr(rows, name)
                bound = 2 * (r[:, i] - w[:, i]).abs().max() + 1e-6 * w[:, i].abs().max()
                assert (g[:, i] - w[:, i]).abs().max() <= bound, (l, name)
                others = [j for j in range(len(rows)) if j != i]
                assert all((g[:, i] - w[:, j]).abs().max() > 100 * bound for j in others), name
        for name in ("x_fg", "x_bg"):  # the rows that depend on the temperature
            i = getattr(FGD_CHAN, name)
            w, s = want[2 + l][:, i], swapped[2 + l][:, i]
            assert (w - s).abs().max() > 1e-3 * w.abs().max(), (l, name)


@pytest.mark.parametrize("edit,message", [
    (lambda a: a[1].pop(), "one tensor per level"),
    (lambda a: a[1].__setitem__(0, a[1][0][:, :5]), r"T\[0\] must have the shape of S\[0\]"),
    (lambda a: a[1].__setitem__(1, a[1][1].half()), r"T\[1\] must have the dtype of S\[1\]"),
    (lambda a: a[0].__setitem__(0, a[0][0].double()), "float32, float16 or bfloat16"),
    (lambda a: a[0].__setitem__(0, a[0][0][0]), r"must be \(N, C, H, W\)"),
    (lambda a: a[2].__setitem__(0, a[2][0][:, :2]), r"fg\[0\] must be a float32 CPU tensor"),
    (lambda a: a[5].__setitem__(1, a[5][1].double()), r"w_t\[1\] must be a float32 CPU tensor"),
])
def test_stats_rejects_bad_inputs(edit, message):
    args = valid_args()
    edit(args)
    with pytest.raises(RuntimeError, match=message):
        stats(*args, [0.5, 0.5])


@pytest.mark.parametrize("temp", [0.0, -1.0, float("nan"), float("inf")])
def test_stats_rejects_bad_temp(temp):
    with pytest.raises(RuntimeError, match="temp must be positive"):
        stats(*valid_args(), [0.5, temp])
    with pytest.raises(RuntimeError, match=r"temp\[0\] is"):
        stats(*valid_args(), [temp, 0.5])


@pytest.mark.parametrize("temps", [[], [0.5], [0.5, 0.5, 0.5]])
def test_stats_needs_one_temperature_per_level(temps):
    with pytest.raises(RuntimeError, match="temp must hold one value per level; S has 2 levels"):
        stats(*valid_args(), temps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_reads_are_exact(dtype):
    """Every 16-bit pattern (subnormals, inf, nan included) is read as its float value.

    bfloat16 subnormals are float denormals, which the kernels flush to zero.
    """
    bits = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)
    S = bits.view(dtype).reshape(1, 1, 256, 256)
    one = torch.ones(1)
    pix = stats([S], [torch.zeros_like(S)], [torch.zeros(1, 256, 256)], [torch.zeros(1, 256, 256)],
                [one], [one], [0.5])[0]
    value = S.float().flatten()
    value[value.abs() < FLOAT_MIN] = 0
    torch.testing.assert_close(pix[0, 0], value.abs(), rtol=0, atol=0, equal_nan=True)  # gs_s
    torch.testing.assert_close(pix[0, 2], value, rtol=0, atol=0, equal_nan=True)        # z_s
