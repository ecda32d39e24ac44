"""Inputs of FGD's small math (the terms from the statistics, and their backward), and the
check of a kernel's backward against its contract (fgdkern.reference.fgd_small_math), shared
by tests/reference/test_fgd_small_math.py and the kernels' tests
(tests/cpu/test_fgd_terms_cpp.py, tests/triton/test_fgd_terms.py)."""
import functools

import torch

from fgdkern.reference import fgd_small_math
from fgdkern.rows import FGD_CHAN, FGD_CHAN_COEF, FGD_PIX, GC_MLP
from tests.harness import assert_exact_list, to_float64
from tests.helpers import make_loss

SIZES = [(9, 6), (5, 3), (1, 2)]
TEMPS = [[0.5, 0.5, 0.5], [0.5, 0.8, 1.3]]


def statistics(N, C, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    pix = [torch.randn(N, len(FGD_PIX), H * W, generator=g) for H, W in sizes]
    chan = [torch.randn(N, len(FGD_CHAN), C, generator=g) for _ in sizes]
    return pix, chan


def modules(C, L, eps=None, trained=True, seed=0):
    """One FGDLoss per level; trained: the last convs away from their zero initialisation."""
    mods = [make_loss(C, C, seed=seed + k) for k in range(L)]
    for k, m in enumerate(mods):
        for mlp in (m.channel_add_conv_s, m.channel_add_conv_t):
            if trained:
                torch.nn.init.normal_(mlp[3].weight, std=0.3)
            if eps is not None:
                mlp[1].eps = eps[k]
    return mods


def mlp_args(mods) -> tuple[list, list, list, list]:
    """mlp_s, mlp_t (fgd_small_math.flat), eps_s, eps_t of the terms' contract."""
    gc_s, gc_t = [m.gc_block("s") for m in mods], [m.gc_block("t") for m in mods]
    return (fgd_small_math.flat(gc_s), fgd_small_math.flat(gc_t), [g.norm_eps for g in gc_s],
            [g.norm_eps for g in gc_t])


def masks_and_weights(N, C, sizes, seed=2):
    """fg, bg (N, H, W) and w_s, w_t (C,) per level, as terms_grad takes them."""
    g = torch.Generator().manual_seed(seed)
    fg = [torch.rand(N, H, W, generator=g) * (torch.rand(N, H, W, generator=g) < 0.5)
          for H, W in sizes]
    bg = [(f == 0).float() / f.numel() for f in fg]
    w = [[torch.randn(C, generator=g) for _ in sizes] for _ in range(2)]
    return fg, bg, w[0], w[1]


def assert_terms_grad_matches(got, G, pix, chan, masks, mlp, temps):
    """A backend's terms_grad outputs got against the contract's (autograd) by the harness
    rule, the contract in float64 the truth: every table of the gradient pass, and every
    MLP parameter's gradient on one scale; K = sum_c g_ctx ctx, which may cancel, against
    the float64 sum of got's own products."""
    L, n = len(pix), max(p.numel() for p in pix + chan)
    want = fgd_small_math.terms_grad(G, pix, chan, [], *masks, *mlp, temps)
    truth = functools.cache(lambda: fgd_small_math.terms_grad(
        G.double(), *to_float64((pix, chan)), [], *to_float64((*masks, *mlp, temps))))
    K = slice(2 * L, 3 * L)
    assert_exact_list(got[:K.start], want[:K.start], lambda: truth()[:K.start], n)
    assert_exact_list(got[K.stop:], want[K.stop:], lambda: truth()[K.stop:], n,
                      scale=max(float(w.abs().max()) for w in want[K.stop:]))
    for k, c, cc in zip(got[K], chan, got[L:2 * L]):
        products = cc[:, [FGD_CHAN_COEF.g_ctx_s, FGD_CHAN_COEF.g_ctx_t]].double() * c[
            :, [FGD_CHAN.ctx_s, FGD_CHAN.ctx_t]].double()
        assert ((k.double() - products.sum(-1)).abs() <= 1e-6 * products.abs().sum(-1)).all()


def relu_cut_units(chan, mlp_s):
    """Per level, which hidden units of the student's MLP relu cuts (C/2,) in image 0."""
    P = len(GC_MLP)
    cut = []
    for l, c in enumerate(chan):
        W1, b1, gamma, beta = mlp_s[P * l:P * l + 4]
        h = torch.nn.functional.linear(c[0, FGD_CHAN.ctx_s], W1.flatten(1), b1)
        y = torch.nn.functional.layer_norm(h, h.shape, gamma.flatten(), beta.flatten(), 1e-5)
        cut.append(y <= 0)
    return cut
