"""The autograd op fgdkern.ops.imitation on the C++ passes against the same op on the
PyTorch contract: loss and the gradient of every input, by the harness's exactness rule
against float64, for Y given or not, weights or not, maps of mean 0 and 1e3."""
import functools

import pytest
import torch

from fgdkern.ops import dispatch
from fgdkern.ops import imitation as op
from fgdkern.rows import IMIT_CHAN, IMIT_PIX
from tests.cpu.imitation_cpp import make_maps, same_format
from tests.harness import assert_exact

pytestmark = pytest.mark.skipif(not dispatch.available("imitation", "cpp"),
                                reason="C++ imitation kernels not built")


def loss_of(pix, chan, seed=11):
    """A scalar of every row, through softmaxes like FKD's attention masks (temperature
    0.5 on the means of |X|) and fixed random weights, in the tables' dtype."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for p, c in zip(pix, chan):
        C, HW = c.shape[2], p.shape[2]
        r = torch.randn(4, max(C, HW), generator=g, dtype=torch.float64).to(p.dtype)
        spatial = torch.softmax(p[:, IMIT_PIX.abs_x] / (0.5 * C), -1)
        channel = torch.softmax(c[:, IMIT_CHAN.abs_x] / (0.5 * HW), -1)
        total = (total + (spatial * p[:, IMIT_PIX.sq_d]).sum()
                 + (p[:, IMIT_PIX.sum_x] * r[0, :HW]).sum() + (channel * r[1, :C]).sum()
                 + (c[:, IMIT_CHAN.sum_x] * r[2, :C]).sum() / HW
                 + (p[:, IMIT_PIX.abs_x] * r[3, :HW]).sum() / C)
    return total


def run_op(impl, X, Y, w):
    """Loss and the gradients of every X[l] (and Y[l] when given) through the op."""
    X = [x.detach().requires_grad_() for x in X]
    Y = None if Y is None else [y.detach().requires_grad_() for y in Y]
    pix, chan = op.imitation_stats(impl, X, Y, w)
    loss = loss_of(pix, chan)
    inputs = X + (Y or [])
    grads = torch.autograd.grad(loss, inputs)
    names = [f"X[{l}]" for l in range(len(X))] + [f"Y[{l}]" for l in range(len(Y or []))]
    return loss, dict(zip(names, grads))


@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["mean0", "mean1e3"])
@pytest.mark.parametrize("has_y,has_w", [(True, True), (False, True), (True, False)],
                         ids=["Y,w", "no Y", "no w"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_gradients_match_the_torch_passes(dtype, layout, has_y, has_w, offset):
    """imitation_stats("cpp", ...) and imitation_stats("torch", ...): loss and the gradient
    of every input as exact as the PyTorch passes' against float64 (harness.assert_exact)."""
    X, Y, w = make_maps(2, 40, [(13, 17), (5, 6), (1, 1)], dtype, layout, seed=9, offset=offset)
    Y = Y if has_y else None
    w = w if has_w else None
    loss, got = run_op("cpp", X, Y, w)
    want_loss, want = run_op("torch", X, Y, w)
    truth = functools.cache(lambda: run_op("torch", [x.double() for x in X],
                                           None if Y is None else [y.double() for y in Y], w))

    n = sum(x.numel() for x in X)
    assert_exact("loss", loss, want_loss, lambda: truth()[0], n)
    assert set(got) == set(want)
    for name in want:
        assert_exact(f"gradient of {name}", got[name], want[name],
                     lambda name=name: truth()[1][name], n, dtype)
        assert same_format(got[name], want[name]), name
