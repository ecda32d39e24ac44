"""The C++ kernels index the FGD tables by the rows fgdkern.rows names, in its order."""
import torch

from fgdkern import rows
from tests.cpu.cpp_ops import needs_cpp

pytestmark = needs_cpp

TABLES = ["FGD_PIX", "FGD_CHAN", "FGD_PIX_COEF", "FGD_CHAN_COEF"]


def test_cpp_row_names_are_those_of_fgdkern_rows():
    want = [f"{table}.{name}" for table in TABLES for name in getattr(rows, table)]
    assert list(torch.ops.fgdkern.fgd_rows_cpp()) == want
