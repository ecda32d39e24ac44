"""FGD's small math as C++ ops (fgdkern::fgd_terms_cpp, fgdkern::fgd_terms_grad_cpp)
against its contract (fgdkern.reference.fgd_small_math, itself checked against the GcBlock
modules in tests/reference/test_fgd_small_math.py): the terms, y_S, every table of the
gradient pass and every MLP parameter's gradient; levels of different C, which the
ops take in one call; the ops' schemas and fake implementations; bad arguments."""
import functools

import pytest
import torch

from fgdkern.reference import fgd_small_math
from fgdkern.rows import FGD_PIX
from tests.cpu.cpp_ops import needs_cpp
from tests.ops.small_math import (SIZES, TEMPS, assert_terms_grad_matches, masks_and_weights,
                                  mlp_args, modules, statistics)
from tests.harness import assert_exact_list, to_float64

pytestmark = needs_cpp
ops = torch.ops.fgdkern


def case(N, C, sizes, eps=None, trained=True, seed=0):
    pix, chan = statistics(N, C, sizes, seed)
    mods = modules(C, len(sizes), eps, trained, seed)
    return pix, chan, mods, masks_and_weights(N, C, sizes, seed + 2)


@torch.no_grad()
@pytest.mark.parametrize("N,C", [(2, 6), (1, 32), (3, 17)])
@pytest.mark.parametrize("temps", TEMPS)
@pytest.mark.parametrize("eps,trained", [(None, True), ([1e-5, 1e-2, 0.3], True),
                                         (None, False)])
def test_matches_the_pytorch_small_math(N, C, temps, eps, trained):
    pix, chan, mods, (fg, bg, w_s, w_t) = case(N, C, SIZES, eps, trained)
    mlp = mlp_args(mods)
    n = max(p.numel() for p in pix + chan)
    want = fgd_small_math.terms(pix, chan, *mlp, temps)
    terms64 = functools.cache(lambda: fgd_small_math.terms(*to_float64((pix, chan, *mlp,
                                                                         temps))))
    got = ops.fgd_terms_cpp(pix, chan, *mlp, temps)
    assert_exact_list(list(got[0].T), list(want[0].T), lambda: list(terms64()[0].T), n)
    # y_S: the student's rows, and HW (y_s - y_t) (subtracted exactly), which mask reads
    y_S = [y[:, 0] for y in got[1:]] + [
        (y.shape[-1] * (y[:, 0].double() - y[:, 1].double())).float() for y in got[1:]]
    assert_exact_list(y_S, spatial_attention(pix, temps),
                      lambda: spatial_attention(to_float64(pix), temps), n)
    G = torch.randn(len(SIZES), 4)
    got = ops.fgd_terms_grad_cpp(G, pix, chan, got[1:], fg, bg, w_s, w_t, *mlp, temps)
    assert_terms_grad_matches(got, G, pix, chan, (fg, bg, w_s, w_t), mlp, temps)


def spatial_attention(pix, temps):
    """Per level the student's softmax(gs_s / temp) over pixels, then per level A_S of the
    student minus A_S of the teacher (docs/fgd.md, "Loss terms")."""
    y = [[torch.softmax(p[:, row] / temp, -1) for row in (FGD_PIX.gs_s, FGD_PIX.gs_t)]
         for p, temp in zip(pix, temps)]
    return [y_s for y_s, _ in y] + [y_s.shape[-1] * y_s - y_t.shape[-1] * y_t for y_s, y_t in y]


def test_levels_of_different_channels_in_one_call():
    """The ops take each level at its own C: one call equals the levels one by one."""
    levels = [case(2, C, [size], seed=k) for k, (C, size) in enumerate(zip([6, 10], SIZES))]
    pix, chan = [lv[0][0] for lv in levels], [lv[1][0] for lv in levels]
    mlp = [sum(parts, []) for parts in zip(*[mlp_args(lv[2]) for lv in levels])]
    temps = [0.5, 0.9]
    together = ops.fgd_terms_cpp(pix, chan, *mlp, temps)
    for k, lv in enumerate(levels):
        alone = ops.fgd_terms_cpp([lv[0][0]], [lv[1][0]], *mlp_args(lv[2]), [temps[k]])
        torch.testing.assert_close(together[0][k], alone[0][0], rtol=0, atol=0)


def test_zero_gradient_of_the_terms_gives_zero_tables_but_p():
    """G = 0: nothing flows back; only the z softmaxes p_s, p_t (not gradients) remain."""
    pix, chan, mods, (fg, bg, w_s, w_t) = case(2, 6, SIZES)
    mlp = mlp_args(mods)
    out = ops.fgd_terms_cpp(pix, chan, *mlp, TEMPS[1])
    grads = ops.fgd_terms_grad_cpp(torch.zeros(3, 4), pix, chan, out[1:], fg, bg, w_s, w_t,
                                   *mlp, TEMPS[1])
    L = len(SIZES)
    for pc in grads[:L]:
        assert (pc[:, 0] == 0).all()  # a_sign
        torch.testing.assert_close(pc[:, 3].sum(-1), torch.ones(2))  # p_s sums to 1
    assert all((g == 0).all() for g in grads[3 * L:])


def test_opcheck():
    pix, chan, mods, (fg, bg, w_s, w_t) = case(2, 6, SIZES[:2])
    mlp = mlp_args(mods)
    temps = [0.5, 0.7]
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.fgd_terms_cpp.default, (pix, chan, *mlp, temps), test_utils=utils)
    y_S = ops.fgd_terms_cpp(pix, chan, *mlp, temps)[1:]
    torch.library.opcheck(ops.fgd_terms_grad_cpp.default,
                          (torch.randn(2, 4), pix, chan, y_S, fg, bg, w_s, w_t, *mlp, temps),
                          test_utils=utils)


@pytest.mark.parametrize("break_it,message", [
    (lambda a: a.update(temp=[0.5, 0.0]), "temp must be positive"),
    (lambda a: a.update(eps_s=[1e-5]), "eps_s must hold one value per level"),
    (lambda a: a.update(chan=[a["chan"][0], a["chan"][1][:, :7]]), r"chan\[1\] \(N, 8, C\)"),
    (lambda a: a.update(mlp_t=a["mlp_t"][:-1]), "6 tensors per level"),
    (lambda a: a["mlp_s"].__setitem__(4, a["mlp_s"][4].double()), r"mlp_s\[4\] must be a float32"),
])
def test_bad_arguments_raise_naming_them(break_it, message):
    pix, chan, mods, _ = case(2, 6, SIZES[:2])
    mlp_s, mlp_t, eps_s, eps_t = mlp_args(mods)
    args = dict(pix=pix, chan=chan, mlp_s=list(mlp_s), mlp_t=list(mlp_t), eps_s=eps_s,
                eps_t=eps_t, temp=[0.5, 0.7])
    break_it(args)
    with pytest.raises(RuntimeError, match=message):
        ops.fgd_terms_cpp(*args.values())
