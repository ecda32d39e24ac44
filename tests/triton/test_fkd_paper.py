"""FKD's paper-variant small math as Triton kernels (fgdkern.triton.fkd_paper) against its
contract (fgdkern.reference.fkd_small_math: paper_masks, paper_terms, paper_terms_grad,
checked against the reference loss in tests/reference/test_fkd_small_math.py), by the
harness rule: M_c, the terms and every coefficient table; several images, channels and
pixels over several sweeps, maps of one pixel, row or column; the custom ops' schemas and
fake implementations; bad arguments."""
import functools

import pytest
import torch

from fgdkern.reference import fkd_small_math
from tests.harness import assert_exact_list, to_float64
from tests.ops.fkd_small_math import LEVELS, TEMPS, adapted, maps, paper_tables
from tests.triton.common import DEVICE, needs_kernels

pytestmark = needs_kernels

# (H, W, Ct, Cs) of tests/ops/fkd_small_math.py: the paper variant reads S' (Ct channels)
PAPER_LEVELS = LEVELS + [(1, 1, 4, 4), (150, 1, 3, 3)]
PAPER_TEMPS = TEMPS + [0.4, 2.0]


def case(N, levels, seed=0):
    """pix, chan, pix_d, M_c on DEVICE."""
    S, T, _, align = maps(N, levels, seed)
    tables = paper_tables(adapted(S, align), T, PAPER_TEMPS[:len(levels)])
    return [[x.to(DEVICE) for x in xs] for xs in tables]


@torch.no_grad()
@pytest.mark.parametrize("N,levels", [(1, PAPER_LEVELS), (3, PAPER_LEVELS[:2]),
                                      (2, [(20, 13, 140, 9)])])
def test_matches_the_pytorch_small_math(N, levels):
    from fgdkern.triton import fkd_paper_masks, fkd_paper_terms, fkd_paper_terms_grad

    L, temps = len(levels), PAPER_TEMPS[:len(levels)]
    pix, chan, pix_d, M_c = case(N, levels)
    n = max(p.numel() for p in pix) * max(lv[2] for lv in levels)
    assert_exact_list(fkd_paper_masks(pix, chan, temps), fkd_small_math.paper_masks(
        pix, chan, temps), lambda: fkd_small_math.paper_masks(*to_float64((pix, chan)), temps),
        n)
    want = fkd_small_math.paper_terms(pix, chan, pix_d, temps)
    got = fkd_paper_terms(pix, chan, pix_d, temps)
    assert len(got) == 1
    assert_exact_list(list(got[0].T), list(want[0].T), lambda: list(fkd_small_math.paper_terms(
        *to_float64((pix, chan, pix_d)), temps)[0].T), n)
    G = torch.randn(L, 2, generator=torch.Generator().manual_seed(N)).to(DEVICE)
    out = fkd_paper_terms_grad(G, pix, chan, pix_d, M_c, temps, got[0])
    expect = fkd_small_math.paper_terms_grad(G, pix, chan, pix_d, M_c, temps, want[0])
    truth = functools.cache(lambda: fkd_small_math.paper_terms_grad(
        G.double(), *to_float64((pix, chan, pix_d, M_c)), temps, want[0].double()))
    assert len(out) == 2 * L
    assert_exact_list(out, expect, truth, n)


@torch.no_grad()
def test_zero_gradient_of_the_terms_leaves_only_the_weights():
    from fgdkern.triton import fkd_paper_terms, fkd_paper_terms_grad

    pix, chan, pix_d, M_c = case(2, LEVELS)
    L = len(LEVELS)
    out = fkd_paper_terms_grad(torch.zeros(L, 2, device=DEVICE), pix, chan, pix_d, M_c,
                               TEMPS, fkd_paper_terms(pix, chan, pix_d, TEMPS)[0])
    assert all((p == 0).all() for p in out[:L])
    assert all(torch.equal(c[:, 0], m) and (c[:, 1:] == 0).all() for c, m in zip(out[L:], M_c))


@torch.no_grad()
def test_zero_norms_give_zero_gradients():
    """S' = T: L_AT's norms and L_AM are 0, and pass no gradient back, not NaN or Inf."""
    from fgdkern.triton import fkd_paper_terms, fkd_paper_terms_grad

    _, T, _, _ = maps(2, LEVELS[:1])
    pix, chan, pix_d, M_c = [[x.to(DEVICE) for x in xs] for xs in paper_tables(T, T, TEMPS[:1])]
    table = fkd_paper_terms(pix, chan, pix_d, TEMPS[:1])[0]
    assert (table == 0).all()
    out = fkd_paper_terms_grad(torch.ones(1, 2, device=DEVICE), pix, chan, pix_d, M_c,
                               TEMPS[:1], table)
    assert (out[0] == 0).all() and (out[1][:, 1:] == 0).all()


def test_opcheck():
    pix, chan, pix_d, M_c = case(2, LEVELS[:2])
    temps = TEMPS[:2]
    ops, utils = torch.ops.fgdkern, ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.fkd_paper_masks_triton.default, (pix, chan, temps),
                          test_utils=utils)
    torch.library.opcheck(ops.fkd_paper_terms_triton.default, (pix, chan, pix_d, temps),
                          test_utils=utils)
    torch.library.opcheck(ops.fkd_paper_terms_grad_triton.default,
                          (torch.randn(2, 2, device=DEVICE), pix, chan, pix_d, M_c, temps,
                           torch.rand(2, 2, device=DEVICE)), test_utils=utils)


def test_bad_arguments_raise_naming_them():
    from fgdkern.triton import fkd_paper_masks, fkd_paper_terms, fkd_paper_terms_grad

    pix, chan, pix_d, M_c = case(2, LEVELS[:2])
    with pytest.raises(ValueError, match="2 per level"):
        fkd_paper_masks(pix[:3], chan, TEMPS[:2])
    with pytest.raises(ValueError, match=r"chan\[3\] must be a contiguous float32"):
        fkd_paper_masks(pix, chan[:3] + [chan[3][:, :, :1]], TEMPS[:2])
    with pytest.raises(ValueError, match=r"pix_d\[1\] must be .* got nothing"):
        fkd_paper_terms(pix, chan, pix_d[:1], TEMPS[:2])
    with pytest.raises(ValueError, match="temps must hold one positive"):
        fkd_paper_terms(pix, chan, pix_d, [0.5, 0.0])
    with pytest.raises(ValueError, match=r"M_c\[0\] must be"):
        fkd_paper_terms_grad(torch.zeros(2, 2, device=DEVICE), pix, chan, pix_d,
                             [m.double() for m in M_c], TEMPS[:2], torch.ones(2, 2, device=DEVICE))
    with pytest.raises(ValueError, match=r"G must be \(2, 2\) float32"):
        fkd_paper_terms_grad(torch.zeros(2, 3, device=DEVICE), pix, chan, pix_d, M_c, TEMPS[:2],
                             torch.ones(2, 2, device=DEVICE))
