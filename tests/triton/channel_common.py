"""What the Triton tests of the channel passes (CWD, PKD) share: their inputs, and each
kernel's check against the PyTorch contract, fgdkern.reference.channel_passes, by the
harness's rule (float64 contract as the truth).

The gradient passes get realistic coefficient tables: the contract's own statistics
(log-sum-exps, means) of the same maps, and random factors k, a, b of order one.
"""
import torch

from fgdkern.reference import channel_passes as contract
from fgdkern.rows import CWD_CHAN, CWD_COEF, PKD_CHAN, PKD_COEF
from tests.harness import assert_matches_contract, with_layout
from tests.helpers import apply_kind
from tests.triton.common import DEVICE

# several blocks per image and HW a multiple of no block (63 px), C = 37 (no BLOCK_C
# divides it, not a power of 2), a 1x1 level
SIZES = [(9, 7), (4, 5), (1, 1)]


def make_maps(N, C, sizes, dtype=torch.float32, layout="contiguous", seed=0, scale=1.0,
              shift=0.0, kind="randn"):
    """S, T per level: T = S / 2 + noise, both times scale plus shift, in dtype and layout.
    kind: zeros as tests.helpers.apply_kind writes them."""
    g = torch.Generator().manual_seed(seed)
    S, T = [], []
    for k, (H, W) in enumerate(sizes):
        s = torch.randn(N, C, H, W, generator=g)
        t = 0.5 * s + torch.randn(N, C, H, W, generator=g)
        s, t = (with_layout(apply_kind((x * scale + shift).to(dtype), kind, role, seed + k),
                            layout).to(DEVICE) for role, x in enumerate((s, t)))
        S.append(s)
        T.append(t)
    return S, T


def cwd_coefs(S, T, inv_tau, seed=1):
    """coef (N, 3, C) per level: the contract's lse_s, lse_t and a random k."""
    g = torch.Generator().manual_seed(seed)
    coef = []
    for chan in contract.cwd_stats(S, T, inv_tau):
        rows = dict(lse_s=chan[:, CWD_CHAN.lse_s], lse_t=chan[:, CWD_CHAN.lse_t],
                    k=torch.randn(chan[:, 0].shape, generator=g).to(chan))
        coef.append(torch.stack([rows[r] for r in CWD_COEF], 1).contiguous())
    return coef


def pkd_coefs(S, T, seed=1):
    """coef (4, C) per level: random a, b and the contract's mean_s, mean_t."""
    g = torch.Generator().manual_seed(seed)
    coef = []
    for chan in contract.pkd_stats(S, T):
        a, b = (torch.randn(chan.shape[1], generator=g).to(chan) for _ in range(2))
        rows = dict(a=a, mean_s=chan[PKD_CHAN.mean_s], b=b, mean_t=chan[PKD_CHAN.mean_t])
        coef.append(torch.stack([rows[r] for r in PKD_COEF], 0).contiguous())
    return coef


def check_cwd(S, T, inv_tau, programs=None):
    """Both CWD kernels against the contract: the statistics, then dS with cwd_coefs."""
    from fgdkern.triton import cwd_grad, cwd_stats

    stats = cwd_stats(S, T, inv_tau, programs=programs)
    assert_matches_contract(stats, contract.cwd_stats, S, T, inv_tau)
    coef = cwd_coefs(S, T, inv_tau)
    dS = cwd_grad(S, T, coef, inv_tau, programs=programs)
    assert_matches_contract(dS, contract.cwd_grad, S, T, coef, inv_tau)
    return stats, dS


def _rows_as_tables(chans):
    """(5, C) tables as (1, 5, C): the harness then holds each row to its own scale."""
    return [chan[None] for chan in chans]


def check_pkd(S, T, programs=None):
    """Both PKD kernels against the contract: the statistics row by row, then dS with
    pkd_coefs."""
    from fgdkern.triton import pkd_grad, pkd_stats

    stats = pkd_stats(S, T, programs=programs)
    assert_matches_contract(_rows_as_tables(stats),
                            lambda S, T: _rows_as_tables(contract.pkd_stats(S, T)), S, T)
    coef = pkd_coefs(S, T)
    dS = pkd_grad(S, T, coef, programs=programs)
    assert_matches_contract(dS, contract.pkd_grad, S, T, coef)
    return stats, dS
