"""The small math of every FGD implementation (fgdkern.ops.fgd.kernels) where its backward
has exact zeros: with the GcBlocks' last convolutions at their zero initialisation nothing
flows back to the contexts, and a hidden unit that relu cuts gets no gradient in the last
convolution's weights."""
import pytest
import torch

from fgdkern.ops.fgd import kernels
from fgdkern.rows import FGD_CHAN_COEF, GC_MLP
from tests.harness import ALL_FUSED, backend_device
from tests.ops.small_math import (SIZES, TEMPS, masks_and_weights, mlp_args, modules,
                                  relu_cut_units, statistics)


@torch.no_grad()
@pytest.mark.parametrize("impl", ALL_FUSED)
def test_zero_last_layer_and_units_cut_by_relu(impl):
    device = backend_device(impl)
    on = lambda xs: [x.detach().to(device) for x in xs]  # noqa: E731
    pix, chan = statistics(1, 8, SIZES)
    mods = modules(8, len(SIZES))
    for m in mods:
        for mlp in (m.channel_add_conv_s, m.channel_add_conv_t):
            torch.nn.init.zeros_(mlp[3].weight)
            torch.nn.init.zeros_(mlp[3].bias)
    mlp_s, mlp_t, eps_s, eps_t = mlp_args(mods)
    mlp = (on(mlp_s), on(mlp_t), eps_s, eps_t)
    masks = [on(x) for x in masks_and_weights(1, 8, SIZES)]     # fg, bg, w_s, w_t
    k = kernels(impl)
    pix, chan = on(pix), on(chan)
    out = k.terms(pix, chan, *mlp, TEMPS[1])
    G = torch.randn(len(SIZES), 4).to(device)
    got = k.terms_grad(G, pix, chan, out[1:], *masks, *mlp, TEMPS[1])
    L, P = len(SIZES), len(GC_MLP)
    for chan_coef in got[L:2 * L]:
        assert (chan_coef[:, [FGD_CHAN_COEF.g_ctx_s, FGD_CHAN_COEF.g_ctx_t]] == 0).all()
    g_mlp_s = got[3 * L:3 * L + P * L]
    cuts = relu_cut_units([c.cpu() for c in chan], mlp_s)
    assert any(cut.any() and not cut.all() for cut in cuts)
    for l, cut in enumerate(cuts):
        g_W2 = g_mlp_s[P * l + GC_MLP.add2_weight].flatten(1).cpu()
        assert (g_W2[:, cut] == 0).all() and ((g_W2[:, ~cut] != 0).any() or cut.all())
