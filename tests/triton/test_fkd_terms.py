"""FKD's small math as Triton kernels (fgdkern.triton.fkd_terms, fkd_terms_grad) against its
contract (fgdkern.reference.fkd_small_math, itself checked against the reference loss in
tests/reference/test_fkd_small_math.py), by the harness rule: the terms, every coefficient
table and every mimic parameter's gradient; several images (the parameter gradients add
image after image), channels and pixels over several tiles, maps of one row or column;
the custom ops' schemas and fake implementations; bad arguments."""
import functools

import pytest
import torch

from fgdkern.reference import fkd_small_math
from tests.harness import assert_exact_list, to_float64
from tests.ops.fkd_small_math import LEVELS, TEMPS, case
from tests.triton.common import DEVICE, needs_kernels

pytestmark = needs_kernels


def on_device(args):
    return [[x.to(DEVICE) for x in a] if isinstance(a, list) and torch.is_tensor(a[0]) else a
            for a in args]


@torch.no_grad()
@pytest.mark.parametrize("N,levels", [(1, LEVELS), (3, LEVELS[:2]), (2, [(20, 13, 40, 9)])])
def test_matches_the_pytorch_small_math(N, levels):
    from fgdkern.triton import fkd_terms, fkd_terms_grad

    L = len(levels)
    args = on_device(case(N, levels))
    temps = TEMPS[:L]
    n = max(p.numel() for p in args[0]) * max(lv[2] + lv[3] for lv in levels)
    want = fkd_small_math.terms(*args, temps)
    got = fkd_terms(*args, temps)
    assert len(got) == 1
    assert_exact_list(list(got[0].T), list(want[0].T),
                      lambda: list(fkd_small_math.terms(*to_float64(args), temps)[0].T), n)
    G = torch.randn(L, 3, generator=torch.Generator().manual_seed(N)).to(DEVICE)
    out = fkd_terms_grad(G, *args, temps, got[0])
    expect = fkd_small_math.terms_grad(G, *args, temps, want[0])
    truth = functools.cache(lambda: fkd_small_math.terms_grad(
        G.double(), *to_float64(args), temps, want[0].double()))
    assert_exact_list(out[:3 * L], expect[:3 * L], lambda: truth()[:3 * L], n)
    for k in range(L):  # each level's parameters on one scale
        sl = slice(3 * L + 4 * k, 3 * L + 4 * k + 4)
        assert_exact_list(out[sl], expect[sl], lambda sl=sl: truth()[sl], n,
                          scale=max(float(w.abs().max()) for w in expect[sl]))
    for g, p in zip(out[3 * L:], args[4]):
        assert g.shape == p.shape and g.dtype == p.dtype


@torch.no_grad()
def test_zero_gradient_of_the_terms_gives_zero_tables_but_w():
    from fgdkern.triton import fkd_terms, fkd_terms_grad

    args = on_device(case(2, LEVELS))
    L = len(LEVELS)
    out = fkd_terms_grad(torch.zeros(L, 3, device=DEVICE), *args, TEMPS,
                         fkd_terms(*args, TEMPS)[0])
    assert all((x == 0).all() for x in out[:2 * L] + out[3 * L:])
    assert all((c[:, 0] == 1).all() and (c[:, 1:] == 0).all() for c in out[2 * L:3 * L])


@torch.no_grad()
def test_zero_norms_give_zero_gradients():
    """A norm of 0 (the forward's table) passes no gradient back, not NaN or Inf."""
    from fgdkern.triton import fkd_terms_grad

    args = on_device(case(2, LEVELS[:1]))
    out = fkd_terms_grad(torch.ones(1, 3, device=DEVICE), *args, TEMPS[:1],
                         torch.zeros(1, 3, device=DEVICE))
    assert all((x == 0).all() for x in out[:2] + out[3:])


def test_opcheck():
    args = on_device(case(2, LEVELS[:2]))
    temps = TEMPS[:2]
    ops = torch.ops.fgdkern
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.fkd_terms_triton.default, (*args, temps), test_utils=utils)
    torch.library.opcheck(ops.fkd_terms_grad_triton.default,
                          (torch.randn(2, 3, device=DEVICE), *args, temps,
                           torch.rand(2, 3, device=DEVICE)), test_utils=utils)


@pytest.mark.parametrize("break_it,message", [
    (lambda a: a.update(chan_t=[a["chan_t"][0], a["chan_t"][1][:, :1]]),
     r"chan_t\[1\] must be a contiguous float32"),
    (lambda a: a.update(pix_s=a["pix_s"][:1]), "one entry per level"),
    (lambda a: a.update(widths=[15, 5]), r"widths\[1\] must be an int dividing the 12"),
    (lambda a: a.update(mimic=a["mimic"][:-1]), "mimic must hold 4 parameters per level, got 7"),
    (lambda a: a["mimic"].__setitem__(0, a["mimic"][0].double()),
     "channel_weight of level 0 must be contiguous float32"),
    (lambda a: a["mimic"].__setitem__(2, a["mimic"][2].reshape(3, 3)),
     r"spatial_weight of level 0 must be contiguous float32 of shape \(1, 1, 3, 3\)"),
    (lambda a: a.update(temps=[0.5, -1.0]), "temps must hold one positive"),
])
def test_bad_arguments_raise_naming_them(break_it, message):
    from fgdkern.triton import fkd_terms

    names = ("pix_t", "pix_s", "chan_t", "chan_s", "mimic", "widths")
    args = dict(zip(names, on_device(case(2, LEVELS[:2]))), temps=TEMPS[:2])
    args["mimic"] = list(args["mimic"])
    break_it(args)
    with pytest.raises(ValueError, match=message):
        fkd_terms(*args.values())


def test_bad_gradient_arguments_raise_naming_them():
    from fgdkern.triton import fkd_terms_grad

    args = on_device(case(2, LEVELS[:2]))
    with pytest.raises(ValueError, match=r"G must be \(2, 3\) float32"):
        fkd_terms_grad(torch.zeros(2, 4, device=DEVICE), *args, TEMPS[:2],
                       torch.zeros(2, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"table must be \(2, 3\) float32"):
        fkd_terms_grad(torch.zeros(2, 3, device=DEVICE), *args, TEMPS[:2],
                       torch.zeros(2, 3, device=DEVICE, dtype=torch.float64))
