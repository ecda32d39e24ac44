"""Inputs and calls shared by the C++ imitation pass tests (tests/cpu/test_imitation_*cpp.py)."""
import torch

from fgdkern.rows import IMIT_CHAN_COEF, IMIT_PIX_COEF
from tests.harness import with_layout
from tests.helpers import apply_kind, flush_denormals


def stats(*args):
    return torch.ops.fgdkern.imitation_stats_cpp(*args)


def grad(*args):
    return torch.ops.fgdkern.imitation_grad_cpp(*args)


def make_maps(N, C, sizes, dtype=torch.float32, layout="contiguous", seed=0, kind="randn",
              offset=0.0):
    """X, Y (N, C, H, W) per level in ``dtype`` and ``layout``, with the zeros or subnormals
    of ``kind`` (tests.helpers.apply_kind), and non-uniform channel weights w (N, C)."""
    g = torch.Generator().manual_seed(seed)
    X, Y, w = [], [], []
    for k, (H, W) in enumerate(sizes):
        x = torch.randn(N, C, H, W, generator=g) + offset
        y = 0.5 * x + torch.randn(N, C, H, W, generator=g) + 0.5 * offset
        X.append(with_layout(apply_kind(x.to(dtype), kind, 0, seed + k), layout))
        Y.append(with_layout(apply_kind(y.to(dtype), kind, 1, seed + k), layout))
        w.append(torch.rand(N, C, generator=g) * 2)
    return X, Y, w


def make_coefs(X, seed=1):
    """Random coefficient tables of imitation_grad, one row per name of IMIT_*_COEF."""
    g = torch.Generator().manual_seed(seed)
    pix = [torch.randn(x.shape[0], len(IMIT_PIX_COEF), x.shape[2] * x.shape[3], generator=g)
           for x in X]
    chan = [torch.randn(x.shape[0], len(IMIT_CHAN_COEF), x.shape[1], generator=g) for x in X]
    return pix, chan


def flushed(maps):
    return [flush_denormals(x) for x in maps]


def same_format(a, b):
    """a and b are laid out alike (dims of size 1 aside)."""
    return all(a.is_contiguous(memory_format=f) == b.is_contiguous(memory_format=f)
               for f in (torch.contiguous_format, torch.channels_last))
