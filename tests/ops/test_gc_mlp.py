"""The GcBlock channel_add MLPs of all levels (fgdkern.ops.gc_mlp): the forward against
the module itself (nn.Sequential of conv, LayerNorm, ReLU, conv) level by level, and the
hand-written backward against autograd through that module, both by the tolerance rule."""
import copy
import functools

import pytest
import torch

from fgdkern.ops import gc_mlp
from tests.harness import assert_exact_list
from tests.helpers import make_loss


def levels(C, eps, seed=0):
    """One FGDLoss per level with random parameters (the last conv is not left at zero)."""
    mods = [make_loss(C, C, seed=seed + k) for k, _ in enumerate(eps)]
    for m, e in zip(mods, eps):
        m.channel_add_conv_s[1].eps = e
    return [m.channel_add_conv_s for m in mods]


def module_outputs(mlps, x):
    """out (L, N, C) of each level's nn.Sequential on its (N, C, 1, 1) context."""
    return torch.stack([mlp(c[..., None, None]).flatten(1) for mlp, c in zip(mlps, x)])


def params_of(mlps):
    names = {"add1_weight": "0.weight", "add1_bias": "0.bias", "norm_weight": "1.weight",
             "norm_bias": "1.bias", "add2_weight": "3.weight", "add2_bias": "3.bias"}
    return [dict(m.named_parameters())[names[n]] for m in mlps for n in gc_mlp.PARAMS]


def module_gradients(mlps, x, g_out):
    """out of the modules and the gradients of sum(g_out * out) w.r.t. x and every parameter
    by autograd through them (the float64 copies of the same make the truth)."""
    x = x.detach().requires_grad_()
    out = module_outputs(mlps, x)
    return [out, *torch.autograd.grad(out, [x, *params_of(mlps)], g_out.to(out.dtype))]


@pytest.mark.parametrize("C,N", [(8, 2), (6, 1), (32, 3)])
@pytest.mark.parametrize("eps", [[1e-5] * 3, [1e-5, 1e-2, 0.3]])
def test_forward_and_backward_match_the_module(C, N, eps):
    """Both as exact as autograd through the modules, against the same in float64
    (harness.assert_exact_list): in float32 the two differ by rounding alone, and by how
    much depends on the CPU (a LayerNorm over C/2 = 3 units cancels to near nothing)."""
    mlps = levels(C, eps)
    params = params_of(mlps)
    x = torch.randn(len(eps), N, C)
    g_out = torch.randn(len(eps), N, C)
    got, saved = gc_mlp.forward(params, torch.tensor(eps).view(-1, 1, 1), x)
    g_x, grads = gc_mlp.backward(saved, g_out, params)
    want = module_gradients(mlps, x, g_out)
    mlps64 = [copy.deepcopy(m).double() for m in mlps]
    truth = functools.cache(lambda: module_gradients(mlps64, x.double(), g_out.double()))
    assert_exact_list([got], want[:1], lambda: truth()[:1], C * N)
    # The gradients share one scale, as the parameters' do in assert_matches_reference: all
    # are products of the same upstream values, which the LayerNorm's backward cancels.
    assert_exact_list([g_x, *grads], want[1:], lambda: truth()[1:], C * N,
                      scale=max(float(w.abs().max()) for w in want[1:]))
    for g, p in zip(grads, params):
        assert g.shape == p.shape and g.dtype == p.dtype


def test_zero_last_layer_and_units_cut_by_relu():
    """The initial state (last conv zero) passes nothing back to x, and a unit that relu
    cuts gets no gradient in W2's column."""
    mlps = levels(8, [1e-5, 1e-5])
    for m in mlps:
        torch.nn.init.zeros_(m[3].weight)
        torch.nn.init.zeros_(m[3].bias)
    params = params_of(mlps)
    x = torch.randn(2, 1, 8)
    out, saved = gc_mlp.forward(params, torch.full((2, 1, 1), 1e-5), x)
    assert (out == 0).all()
    g_x, grads = gc_mlp.backward(saved, torch.randn_like(out), params)
    assert (g_x == 0).all()
    relu = saved[-1][0, 0]                       # level 0, image 0: relu(y), (C/2,)
    cut = relu == 0
    assert cut.any() and not cut.all()
    g_W2 = grads[gc_mlp.PARAMS.index("add2_weight")].flatten(1)   # level 0: (C, C/2)
    assert (g_W2[:, cut] == 0).all() and (g_W2[:, ~cut] != 0).any()
