"""The C++ FGD passes as the CPU tests call them, and inputs they share."""
import pytest
import torch

from fgdkern.ops import dispatch
from tests.helpers import make_coefs, make_inputs  # noqa: F401  (make_coefs: re-exported)

# Every test module of the C++ passes is skipped when the extension was not built
# (dispatch.available asks the dispatcher only when the extension loaded: without it
# the op does not exist and asking would raise at collection).
needs_cpp = pytest.mark.skipif(not dispatch.available("fgd", "cpp"), reason="C++ kernels not built")

FLOAT_MIN = torch.finfo(torch.float32).tiny  # below it, the kernels flush denormals to zero


def stats(*args):
    return torch.ops.fgdkern.fgd_stats_cpp(*args)


def grad(*args):
    return torch.ops.fgdkern.fgd_grad_cpp(*args)


def valid_args():
    """Stats inputs of two small levels (temperatures not included)."""
    return make_inputs(2, 6, [(3, 4), (2, 2)])


