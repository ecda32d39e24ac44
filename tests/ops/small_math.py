"""Inputs of FGD's small math (the terms from the statistics, and their backward), shared
by tests/ops/test_fgd_levels.py (PyTorch) and tests/cpu/test_fgd_terms_cpp.py (the ops)."""
import torch

from fgdkern.ops import gc_mlp
from fgdkern.rows import FGD_CHAN, FGD_PIX
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
    """mlp_s, mlp_t (gc_mlp.flat), eps_s, eps_t of the terms' contract."""
    gc_s, gc_t = [m.gc_block("s") for m in mods], [m.gc_block("t") for m in mods]
    return (gc_mlp.flat(gc_s), gc_mlp.flat(gc_t), [g.norm_eps for g in gc_s],
            [g.norm_eps for g in gc_t])


def masks_and_weights(N, C, sizes, seed=2):
    """fg, bg (N, H, W) and w_s, w_t (C,) per level, as terms_grad takes them."""
    g = torch.Generator().manual_seed(seed)
    fg = [torch.rand(N, H, W, generator=g) * (torch.rand(N, H, W, generator=g) < 0.5)
          for H, W in sizes]
    bg = [(f == 0).float() / f.numel() for f in fg]
    w = [[torch.randn(C, generator=g) for _ in sizes] for _ in range(2)]
    return fg, bg, w[0], w[1]
