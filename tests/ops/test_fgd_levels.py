"""FGD's small math over all levels at once (fgdkern.ops.fgd_levels) against the
same math done level by level: the terms, the gradient tables, the GcBlock
MLPs, and levels that cannot be batched (different C, different LayerNorm eps)."""
import pytest
import torch

from fgdkern.ops import fgd_levels
from fgdkern.rows import FGD_CHAN, FGD_PIX
from tests.helpers import make_inputs, make_loss

SIZES = [(9, 6), (5, 3), (1, 2)]
TEMPS = [[0.5, 0.5, 0.5], [0.5, 0.8, 1.3]]


def statistics(N, C, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    pix = [torch.randn(N, len(FGD_PIX), H * W, generator=g) for H, W in sizes]
    chan = [torch.randn(N, len(FGD_CHAN), C, generator=g) for _ in sizes]
    return pix, chan


def blocks(C, L, seed=0, eps=None):
    mods = [make_loss(C, C, seed=seed + k) for k in range(L)]
    if eps is not None:
        for m, e in zip(mods, eps):
            m.channel_add_conv_s[1].eps = m.channel_add_conv_t[1].eps = e
    return [m.gc_block("s") for m in mods], [m.gc_block("t") for m in mods]


def one_by_one(fn, *per_level):
    return [fn(*([x] for x in level)) for level in zip(*per_level)]


@pytest.mark.parametrize("temps", TEMPS)
def test_terms_match_level_by_level(temps):
    pix, chan = statistics(2, 6, SIZES)
    gc_s, gc_t = blocks(6, len(SIZES))
    batched = fgd_levels.terms_table(pix, chan, gc_s, gc_t, temps)
    alone = torch.cat(one_by_one(fgd_levels.terms_table, pix, chan, gc_s, gc_t, temps))
    torch.testing.assert_close(batched, alone, rtol=1e-6, atol=0)


@pytest.mark.parametrize("temps", TEMPS)
def test_gradient_tables_match_level_by_level(temps):
    S, T, fg, bg, w_s, w_t = make_inputs(2, 6, SIZES)
    pix, chan = statistics(2, 6, SIZES)
    g_pix, g_chan = statistics(2, 6, SIZES, seed=1)
    batched = fgd_levels.grad_coefficients(fg, bg, w_s, w_t, pix, chan, g_pix, g_chan, temps)
    alone = one_by_one(fgd_levels.grad_coefficients, fg, bg, w_s, w_t, pix, chan, g_pix,
                       g_chan, temps)
    for k, table in enumerate(batched):  # pix_coef, chan_coef, K per level
        for level, got in enumerate(table):
            assert got.is_contiguous()
            torch.testing.assert_close(got, alone[level][k][0], rtol=1e-6, atol=1e-7)


def test_channel_add_with_different_eps_per_level():
    gc_s, _ = blocks(8, 3, eps=[1e-5, 1e-2, 1e-5])
    ctx = torch.randn(3, 2, 8)
    batched = fgd_levels.channel_add_levels(gc_s, ctx)
    alone = torch.cat([fgd_levels.channel_add_levels([g], c) for g, c in zip(gc_s, ctx.split(1))])
    torch.testing.assert_close(batched, alone, rtol=0, atol=0)
    mixed = torch.cat([fgd_levels.channel_add_levels(gc_s[1:2], ctx[1:2]),
                       fgd_levels.channel_add_levels([gc_s[0], gc_s[2]], ctx[[0, 2]])])
    torch.testing.assert_close(mixed[0], batched[1], rtol=1e-6, atol=1e-7)


def test_levels_of_different_channels_match_the_reference():
    """fgd_terms batches levels that share C; others run one by one, forward and backward."""
    from fgdkern.ops.fgd import fgd_terms
    from tests.helpers import random_boxes
    mods = [make_loss(4, 4, seed=0), make_loss(6, 6, seed=1)]
    S, T = [torch.randn(2, 4, 8, 6), torch.randn(2, 6, 4, 3)], [torch.randn(2, 4, 8, 6),
                                                                  torch.randn(2, 6, 4, 3)]
    boxes, shapes = random_boxes(2, (32, 24), seed=3, empty_images=()), [(32, 24)] * 2
    args = (S, T, boxes, shapes, [m.gc_block("s") for m in mods],
            [m.gc_block("t") for m in mods], [0.5, 0.7])
    S = [s.requires_grad_() for s in S]
    got = fgd_terms("torch", *args)
    want = fgd_terms("reference", *args)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    weights = torch.rand(2, 4)
    for g, w in zip(torch.autograd.grad((got * weights).sum(), S),
                    torch.autograd.grad((want * weights).sum(), S)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
