"""FGD's small math (fgdkern.reference.fgd_small_math), the contract of the kernels' terms
and terms_grad: the terms against the same math with the GcBlock modules themselves, their
backward against autograd through those modules, and the op's "torch" path on levels of
different C against the reference loss."""
import copy
import functools

import pytest
import torch

from fgdkern.reference import fgd_small_math
from fgdkern.rows import FGD_CHAN, FGD_PIX
from tests.harness import assert_exact_list, assert_matches_reference, to_float64
from tests.helpers import make_loss
from tests.ops.small_math import SIZES, TEMPS, masks_and_weights, mlp_args, modules, statistics


def oracle_terms(pix, chan, mods, temps):
    """The (L, 4) terms level by level with autograd through the GcBlock modules
    themselves (docs/fgd.md, "Loss terms"): what terms and terms_grad must match."""
    rows = []
    for p, ch, m, temp in zip(pix, chan, mods, temps):
        N, C, HW = ch.shape[0], ch.shape[2], p.shape[-1]
        c = dict(zip(FGD_CHAN, ch.unbind(1)))
        A_C_s, A_C_t = (C * torch.softmax(x / temp, -1) for x in (c["gc_s"], c["gc_t"].detach()))
        A_S_s, A_S_t = (HW * torch.softmax(x / temp, -1)
                        for x in (p[:, FGD_PIX.gs_s], p[:, FGD_PIX.gs_t].detach()))
        shift = (m.channel_add_conv_s(c["ctx_s"][..., None, None])
                 - m.channel_add_conv_t(c["ctx_t"][..., None, None])).flatten(1)
        rela = c["m2_d"].sum() + HW * (c["sum_d"] / HW + shift).square().sum()
        rows.append(torch.stack([(A_C_t * c["x_fg"]).sum(), (A_C_t * c["x_bg"]).sum(),
                                 (A_C_s - A_C_t).abs().sum() + (A_S_s - A_S_t).abs().sum(),
                                 rela]) / N)
    return torch.stack(rows)


def expected_backward(G, pix, chan, mods, temps, fg, bg, w_s, w_t):
    """terms_grad's outputs from autograd through oracle_terms: the statistics' gradients
    turned into fgd_grad's tables by grad_tables, and the MLP parameters' gradients."""
    pix = [p.detach().requires_grad_() for p in pix]
    chan = [c.detach().requires_grad_() for c in chan]
    mlp_s, mlp_t, _, _ = mlp_args(mods)
    grads = torch.autograd.grad((oracle_terms(pix, chan, mods, temps) * G).sum(),
                                pix + chan + mlp_s + mlp_t)
    L = len(pix)
    tables = [fgd_small_math.grad_tables(*level) for level in zip(
        fg, bg, w_s, w_t, pix, chan, grads[:L], grads[L:2 * L], temps)]
    return [t[k].detach() for k in range(3) for t in tables] + list(grads[2 * L:])


@pytest.mark.parametrize("temps", TEMPS)
@pytest.mark.parametrize("eps", [None, [1e-5, 1e-2, 0.3]])
@pytest.mark.parametrize("trained", [True, False])
def test_terms_and_their_backward_match_the_modules(temps, eps, trained):
    """terms against the oracle, and terms_grad against autograd of it: every table of
    the gradient pass and every GcBlock MLP parameter's gradient."""
    pix, chan = statistics(2, 6, SIZES)
    mods = modules(6, len(SIZES), eps, trained)
    fg, bg, w_s, w_t = masks_and_weights(2, 6, SIZES)
    mods64 = [copy.deepcopy(m).double() for m in mods]
    pix64, chan64 = to_float64((pix, chan))
    n = max(p.numel() for p in pix + chan)
    out = fgd_small_math.terms(pix, chan, *mlp_args(mods), temps)
    assert len(out) == 1
    assert_exact_list(list(out[0].T), list(oracle_terms(pix, chan, mods, temps).T),
                      lambda: list(oracle_terms(pix64, chan64, mods64, temps).T), n)
    G = torch.randn(len(SIZES), 4)
    got = fgd_small_math.terms_grad(G, pix, chan, [], fg, bg, w_s, w_t, *mlp_args(mods),
                                    temps)
    want = expected_backward(G, pix, chan, mods, temps, fg, bg, w_s, w_t)
    truth = functools.cache(lambda: expected_backward(G.double(), pix64, chan64, mods64, temps,
                                                      *to_float64((fg, bg, w_s, w_t))))
    tables = 3 * len(SIZES)   # then the MLP parameters' gradients, on one scale
    assert_exact_list(got[:tables], want[:tables], lambda: truth()[:tables], n)
    assert_exact_list(got[tables:], want[tables:], lambda: truth()[tables:], n,
                      scale=max(float(w.abs().max()) for w in want[tables:]))
    for g, p in zip(got[tables:], [*mlp_args(mods)[0], *mlp_args(mods)[1]]):
        assert g.shape == p.shape and g.dtype == p.dtype


def test_levels_of_different_channels_match_the_reference():
    """fgd_terms batches levels that share C; others run one by one, forward and backward."""
    from fgdkern.ops.fgd import fgd_terms
    from tests.helpers import random_boxes
    mods = [make_loss(4, 4, seed=0), make_loss(6, 6, seed=1)]
    S, T = [torch.randn(2, 4, 8, 6), torch.randn(2, 6, 4, 3)], [torch.randn(2, 4, 8, 6),
                                                                  torch.randn(2, 6, 4, 3)]
    boxes, shapes = random_boxes(2, (32, 24), seed=3, empty_images=()), [(32, 24)] * 2
    weights = torch.rand(2, 4)

    def run(backend, float64):
        ms = [copy.deepcopy(m).double() for m in mods] if float64 else mods
        S_ = [(s.double() if float64 else s).requires_grad_() for s in S]
        terms = fgd_terms(backend, S_, [t.double() if float64 else t for t in T], boxes, shapes,
                          [m.gc_block("s") for m in ms], [m.gc_block("t") for m in ms],
                          [0.5, 0.7])
        loss = (terms * weights.to(terms.dtype)).sum()
        grads = torch.autograd.grad(loss, S_)
        return list(terms), loss, {f"S[{l}]": g for l, g in enumerate(grads)}

    assert_matches_reference(run, "torch")
