"""The C++ FGD passes as the CPU tests call them, and inputs they share."""
import pytest
import torch

from fgdkern.ops import dispatch
from fgdkern.rows import FGD_CHAN_COEF
from tests import helpers
from tests.helpers import make_inputs

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


def make_coefs(S, seed=1):
    """tests.helpers.make_coefs, with a random chan_coef row for every row of FGD_CHAN_COEF."""
    pix, chan, K = helpers.make_coefs(S, seed)
    g = torch.Generator().manual_seed(seed + 1)
    chan = [torch.cat([c, torch.randn(c.shape[0], len(FGD_CHAN_COEF) - c.shape[1], c.shape[2],
                                      generator=g).to(c.device)], 1) for c in chan]
    return pix, chan, K
