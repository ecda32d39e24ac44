"""FGD's small math as Triton kernels (fgdkern.triton.fgd_terms, fgd_terms_grad) against
its contract (fgdkern.reference.fgd_small_math, itself checked against the GcBlock modules
in tests/reference/test_fgd_small_math.py), by the harness rule: the terms, every table of
the gradient pass and every MLP parameter's gradient; several images (the parameter
gradients add image after image), channels and pixels over several tiles; the custom ops'
schemas and fake implementations; bad arguments."""
import functools

import pytest
import torch

from fgdkern.reference import fgd_small_math
from fgdkern.rows import FGD_PIX_COEF
from tests.harness import assert_exact_list, to_float64
from tests.ops.small_math import (SIZES, TEMPS, assert_terms_grad_matches, masks_and_weights,
                                  mlp_args, modules, statistics)
from tests.triton.common import DEVICE, needs_kernels

pytestmark = needs_kernels


def case(N, C, sizes, eps=None, trained=True, seed=0):
    """pix, chan, (mlp_s, mlp_t, eps_s, eps_t) and (fg, bg, w_s, w_t) on DEVICE, float32."""
    pix, chan = statistics(N, C, sizes, seed)
    mlp_s, mlp_t, eps_s, eps_t = mlp_args(modules(C, len(sizes), eps, trained, seed))
    on = lambda xs: [x.detach().to(DEVICE) for x in xs]  # noqa: E731
    return (on(pix), on(chan), (on(mlp_s), on(mlp_t), eps_s, eps_t),
            [on(x) for x in masks_and_weights(N, C, sizes, seed + 2)])


@torch.no_grad()
@pytest.mark.parametrize("N,C,sizes", [(2, 6, SIZES), (3, 17, SIZES), (2, 130, [(17, 16)]),
                                       (1, 300, [(2, 3)])])
@pytest.mark.parametrize("temps", [0, 1])
@pytest.mark.parametrize("eps,trained", [(None, True), ([1e-5, 1e-2, 0.3], True),
                                         (None, False)])
def test_matches_the_pytorch_small_math(N, C, sizes, temps, eps, trained):
    from fgdkern.triton import fgd_terms, fgd_terms_grad

    L = len(sizes)
    temps, eps = TEMPS[temps][:L], eps and eps[:L]
    pix, chan, mlp, (fg, bg, w_s, w_t) = case(N, C, sizes, eps, trained)
    n = max(p.numel() for p in pix + chan)
    want = fgd_small_math.terms(pix, chan, *mlp, temps)
    terms64 = functools.cache(lambda: fgd_small_math.terms(*to_float64((pix, chan, *mlp,
                                                                         temps))))
    got = fgd_terms(pix, chan, *mlp, temps)
    assert len(got) == 1
    assert_exact_list(list(got[0].T), list(want[0].T), lambda: list(terms64()[0].T), n)
    G = torch.randn(L, 4, generator=torch.Generator().manual_seed(C)).to(DEVICE)
    got = fgd_terms_grad(G, pix, chan, [], fg, bg, w_s, w_t, *mlp, temps)
    assert_terms_grad_matches(got, G, pix, chan, (fg, bg, w_s, w_t), mlp, temps)

@torch.no_grad()
def test_zero_gradient_of_the_terms_gives_zero_tables_but_p():
    """G = 0: nothing flows back; only the z softmaxes p_s, p_t (not gradients) remain."""
    from fgdkern.triton import fgd_terms_grad

    pix, chan, mlp, (fg, bg, w_s, w_t) = case(2, 6, SIZES)
    out = fgd_terms_grad(torch.zeros(3, 4, device=DEVICE), pix, chan, [], fg, bg, w_s, w_t,
                         *mlp, TEMPS[1])
    for pc in out[:3]:
        assert (pc[:, FGD_PIX_COEF.a_sign] == 0).all()
        torch.testing.assert_close(pc[:, FGD_PIX_COEF.p_s].sum(-1).cpu(), torch.ones(2))
    assert all((g == 0).all() for g in out[9:])


def test_opcheck():
    pix, chan, mlp, (fg, bg, w_s, w_t) = case(2, 6, SIZES[:2])
    temps = [0.5, 0.7]
    ops = torch.ops.fgdkern
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.fgd_terms_triton.default, (pix, chan, *mlp, temps),
                          test_utils=utils)
    torch.library.opcheck(ops.fgd_terms_grad_triton.default,
                          (torch.randn(2, 4, device=DEVICE), pix, chan, [], fg, bg, w_s, w_t,
                           *mlp, temps), test_utils=utils)


@pytest.mark.parametrize("break_it,message", [
    (lambda a: a.update(chan=[a["chan"][0], a["chan"][1][:, :7]]), r"chan\[1\] must be"),
    (lambda a: a.update(chan=[a["chan"][0], a["chan"][1].repeat(1, 1, 2)]),
     r"chan\[1\] has 12 channels"),
    (lambda a: a.update(pix=a["pix"][:1]), "one table per level"),
    (lambda a: a.update(mlp_t=a["mlp_t"][:-1]), "mlp_t must hold 6 parameters per level"),
    (lambda a: a["mlp_s"].__setitem__(4, a["mlp_s"][4].double()),
     r"mlp_s\[4\] \(add2_weight of level 0\)"),
])
def test_bad_arguments_raise_naming_them(break_it, message):
    from fgdkern.triton import fgd_terms

    pix, chan, (mlp_s, mlp_t, eps_s, eps_t), _ = case(2, 6, SIZES[:2])
    args = dict(pix=pix, chan=chan, mlp_s=list(mlp_s), mlp_t=list(mlp_t), eps_s=eps_s,
                eps_t=eps_t, temps=[0.5, 0.7])
    break_it(args)
    with pytest.raises(ValueError, match=message):
        fgd_terms(*args.values())


def test_bad_gradient_arguments_raise_naming_them():
    from fgdkern.triton import fgd_terms_grad

    pix, chan, mlp, (fg, bg, w_s, w_t) = case(2, 6, SIZES[:2])
    with pytest.raises(ValueError, match=r"G must be \(2, 4\) float32"):
        fgd_terms_grad(torch.zeros(3, 4, device=DEVICE), pix, chan, [], fg, bg, w_s, w_t, *mlp,
                       [0.5, 0.5])
    with pytest.raises(ValueError, match=r"fg\[1\] must have shape \(2, 15\)"):
        fgd_terms_grad(torch.zeros(2, 4, device=DEVICE), pix, chan, [], [fg[0], fg[0]], bg, w_s,
                       w_t, *mlp, [0.5, 0.5])
    with pytest.raises(TypeError, match=r"w_t\[0\] must be float32"):
        fgd_terms_grad(torch.zeros(2, 4, device=DEVICE), pix, chan, [], fg, bg, w_s,
                       [w.double() for w in w_t], *mlp, [0.5, 0.5])
    with pytest.raises(ValueError, match="bg has 1 levels, pix has 2"):
        fgd_terms_grad(torch.zeros(2, 4, device=DEVICE), pix, chan, [], fg, bg[:1], w_s, w_t,
                       *mlp, [0.5, 0.5])
