"""Inputs of FKD's small math (the code variant's terms from the imitation statistics, and
their backward), shared by tests/reference/test_fkd_small_math.py and the kernels' tests
(tests/triton/test_fkd_terms.py): the tables of real maps, so that they are consistent
(sums of absolute values and of squares are not negative)."""
import torch

from fgdkern.reference import imitation_passes
from fgdkern.reference.fkd import conv1x1

# (H, W, Ct, Cs) per level: channels over a tile of 16 and of 128, pixels over a
# sweep of 128, a map of one row and one of one column
LEVELS = [(9, 15, 6, 4), (3, 4, 17, 130), (1, 5, 3, 3), (4, 1, 5, 2)]
TEMPS = [0.5, 0.8, 1.3, 0.5]


def maps(N, levels, seed=0):
    """Per level S (N, Cs, H, W), T (N, Ct, H, W) and the mimic parameters (FKD_MIMIC
    order), adapt weight and bias: random, away from initialisation."""
    g = torch.Generator().manual_seed(seed)
    S, T, mimic, adapt = [], [], [], []
    for H, W, Ct, Cs in levels:
        S.append(torch.randn(N, Cs, H, W, generator=g))
        T.append(torch.randn(N, Ct, H, W, generator=g) * 1.5 + 0.3)
        mimic += [torch.randn(Ct, Cs, generator=g) * 0.3, torch.randn(Ct, generator=g) * 0.3,
                  torch.randn(1, 1, 3, 3, generator=g) * 0.3, torch.randn(1, generator=g) * 0.3]
        adapt.append((torch.randn(Ct, Cs, 1, 1, generator=g) * 0.3,
                      torch.randn(Ct, generator=g) * 0.3))
    return S, T, mimic, adapt


def adapted(S, adapt):
    """f(S), the 1x1 adaptation of every level."""
    return [conv1x1(s, w, b) for s, (w, b) in zip(S, adapt)]


def tables(S, fS, T):
    """pix_t, pix_s, chan_t, chan_s: the statistics of (T, f(S)) and of S."""
    L = len(S)
    X = [*T, *S]
    out = imitation_passes.imitation_stats(X, [*fS, *S],
                                           [torch.ones(x.shape[:2], dtype=x.dtype) for x in X])
    return [out[k * L:(k + 1) * L] for k in range(4)]


def case(N=2, levels=LEVELS, seed=0):
    """(pix_t, pix_s, chan_t, chan_s, mimic, widths) of the contract, float32 on the CPU."""
    S, T, mimic, adapt = maps(N, levels, seed)
    return (*tables(S, adapted(S, adapt), T), mimic, [lv[1] for lv in levels])


def paper_tables(Sa, T, temps):
    """pix, chan of X = [S'..., T...], M_c (the contract's paper_masks) and pix_d, the pair
    (S', T) weighted by M_c."""
    from fgdkern.reference import fkd_small_math
    X = [*Sa, *T]
    out = imitation_passes.imitation_stats(X, X, [torch.ones(x.shape[:2], dtype=x.dtype)
                                                  for x in X])
    pix, chan = out[:len(X)], out[len(X):]
    M_c = fkd_small_math.paper_masks(pix, chan, temps)
    return pix, chan, imitation_passes.imitation_stats(Sa, T, M_c)[:len(Sa)], M_c
