"""What the Triton imitation-pass tests share: their inputs, and each kernel's check
against the PyTorch contract, fgdkern.reference.imitation_passes, output by output.

Subnormal floats: Triton leaves their reading to the platform (the interpreter reads
float32 subnormals as they are but flushes bfloat16 ones), so on "denormal" inputs
either reading of the contract is accepted, for all values alike.
"""
import torch

from fgdkern.reference import imitation_passes as contract
from fgdkern.rows import IMIT_CHAN_COEF, IMIT_PIX_COEF
from tests.harness import assert_matches_a_reading, with_layout
from tests.helpers import apply_kind, flush_denormals
from tests.triton.common import DEVICE


def make_maps(N, C, sizes, dtype=torch.float32, layout="contiguous", seed=0, kind="randn",
              same=False):
    """X, Y, w per level: Y = X / 2 + noise (X itself when same); w (N, C), in [0, 2) and
    different per image, with every fifth channel 0. kind: zeros as tests.helpers.apply_kind
    writes them (X and Y at partly different places)."""
    g = torch.Generator().manual_seed(seed)
    X, Y, w = [], [], []
    for k, (H, W) in enumerate(sizes):
        x = torch.randn(N, C, H, W, generator=g)
        y = 0.5 * x + torch.randn(N, C, H, W, generator=g)
        x, y = (with_layout(apply_kind(t.to(dtype), kind, role, seed + k), layout).to(DEVICE)
                for role, t in enumerate((x, y)))
        weights = 2 * torch.rand(N, C, generator=g)
        weights[:, ::5] = 0
        X.append(x)
        Y.append(x if same else y)
        w.append(weights.to(DEVICE))
    return X, Y, w


def make_coefs(X, seed=1):
    """Random pix_coef (N, 3, HW) and chan_coef (N, 3, C) tables of order one per level."""
    g = torch.Generator().manual_seed(seed)
    pix = [torch.randn(x.shape[0], len(IMIT_PIX_COEF), x.shape[2] * x.shape[3], generator=g)
           .to(DEVICE) for x in X]
    chan = [torch.randn(x.shape[0], len(IMIT_CHAN_COEF), x.shape[1], generator=g).to(DEVICE)
            for x in X]
    return pix, chan


def readings(X, Y, kind):
    """(X, Y) as the contract may read them: also flushed on "denormal" inputs."""
    if kind != "denormal":
        return [(X, Y)]
    return [(X, Y), ([flush_denormals(x) for x in X], [flush_denormals(y) for y in Y])]


def check_stats(X, Y, w, programs=None, kind="randn"):
    """The statistics kernel against the contract."""
    from fgdkern.triton import imitation_stats

    got = imitation_stats(X, Y, w, programs=programs)
    assert_matches_a_reading(got, contract.imitation_stats, readings(X, Y, kind), w)
    return got


def check_grad(X, Y, coefs=None, programs=None, kind="randn"):
    """The gradient kernel against the contract (random coefficients unless given)."""
    from fgdkern.triton import imitation_grad

    coefs = make_coefs(X) if coefs is None else coefs
    got = imitation_grad(X, Y, *coefs, programs=programs)
    assert_matches_a_reading(got, contract.imitation_grad, readings(X, Y, kind), *coefs)
    return got
