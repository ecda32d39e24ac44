"""FKD's small math (fgdkern.reference.fkd_small_math), the contract of the kernels: the terms
of both variants against the reference loss on the maps the tables come from, and their
backward, pushed through the imitation gradient pass and the 1x1 adaptation (f, align),
against autograd of that loss in S and in every parameter."""
import functools

import pytest
import torch

from fgdkern.reference import fkd_small_math, imitation_passes
from fgdkern.reference.fkd import (CodeParams, PaperParams, fkd_code_reference,
                                   fkd_paper_reference)
from fgdkern.reference.imitation_passes import UNIT_CHAN_COEF
from fgdkern.rows import IMIT_CHAN_COEF, IMIT_PIX_COEF
from tests.harness import assert_exact_list, to_float64
from tests.ops.fkd_small_math import LEVELS, TEMPS, adapted, maps, paper_tables, tables


def reference_terms(S, T, mimic, adapt, temps):
    """(L, 3) feat, ch, sp of fkd_code_reference level by level (no non-local term)."""
    rows = []
    for l, (s, t, (w, b), temp) in enumerate(zip(S, T, adapt, temps)):
        terms = fkd_code_reference(s, t, CodeParams(w, b, *mimic[4 * l:4 * l + 4]), None, temp)
        rows.append(torch.stack(list(terms[:3])))
    return torch.stack(rows)


def reference_grads(G, S, T, mimic, adapt, temps):
    """Autograd of (reference_terms * G).sum() in S, the mimic parameters and the
    adaptation's weight and bias."""
    S = [s.detach().requires_grad_() for s in S]
    mimic = [m.detach().requires_grad_() for m in mimic]
    adapt = [tuple(x.detach().requires_grad_() for x in wb) for wb in adapt]
    value = (reference_terms(S, T, mimic, adapt, temps) * G).sum()
    return torch.autograd.grad(value, S + mimic + [x for wb in adapt for x in wb])


def contract_grads(G, S, T, mimic, adapt, temps):
    """The same gradients from terms_grad: its tables run through imitation_grad as the op
    runs them (d f(S) and the direct part of dS), then d f(S) through the adaptation's own
    backward."""
    S = [s.detach().requires_grad_() for s in S]
    adapt = [tuple(x.detach().requires_grad_() for x in wb) for wb in adapt]
    fS = adapted(S, adapt)
    L, N = len(S), S[0].shape[0]
    args = (*tables(S, [f.detach() for f in fS], T), mimic, [s.shape[3] for s in S], temps)
    out = fkd_small_math.terms_grad(G, *args, fkd_small_math.terms(*args)[0])
    assert len(out) == 3 * L + 4 * L
    chan_f = [torch.tensor(list(UNIT_CHAN_COEF.values()), dtype=G.dtype)[None, :, None].expand(
        N, len(IMIT_CHAN_COEF), f.shape[1]) for f in fS]
    d = imitation_passes.imitation_grad([*fS, *S], [*T, *S], out[:2 * L],
                                        [*chan_f, *out[2 * L:3 * L]])
    via_f = torch.autograd.grad(fS, S + [x for wb in adapt for x in wb], d[:L])
    dS = [a + b for a, b in zip(d[L:], via_f[:L])]
    return dS + out[3 * L:] + list(via_f[L:]), out


@pytest.mark.parametrize("N", [1, 3])
def test_terms_match_the_reference_loss(N):
    S, T, mimic, adapt = maps(N, LEVELS)
    args = (*tables(S, adapted(S, adapt), T), mimic, [lv[1] for lv in LEVELS])
    got = fkd_small_math.terms(*args, TEMPS)
    assert len(got) == 1 and got[0].shape == (len(LEVELS), 3)
    n = max(s.numel() for s in S + T)
    truth = lambda: list(reference_terms(*to_float64((S, T, mimic, adapt)), TEMPS).T)  # noqa: E731
    assert_exact_list(list(got[0].T), list(reference_terms(S, T, mimic, adapt, TEMPS).T),
                      truth, n)


def test_the_feature_term_reads_f_of_s_not_s():
    """L_feat compares T with f(S): the same S under another adaptation changes only it."""
    S, T, mimic, adapt = maps(2, LEVELS[:1])
    first = fkd_small_math.terms(*tables(S, adapted(S, adapt), T), mimic, [15], TEMPS[:1])[0]
    other = [(w * 2, b) for w, b in adapt]
    second = fkd_small_math.terms(*tables(S, adapted(S, other), T), mimic, [15], TEMPS[:1])[0]
    assert first[0, 0] != second[0, 0]
    assert torch.equal(first[0, 1:], second[0, 1:])


@pytest.mark.parametrize("N", [1, 2])
def test_backward_through_the_gradient_pass_matches_autograd(N):
    """terms_grad, through the imitation gradient pass and the adaptation: dS and every
    parameter's gradient against autograd of the reference loss."""
    S, T, mimic, adapt = maps(N, LEVELS, seed=1)
    L = len(S)
    G = torch.randn(L, 3, generator=torch.Generator().manual_seed(3))
    got, out = contract_grads(G, S, T, mimic, adapt, TEMPS)
    want = reference_grads(G, S, T, mimic, adapt, TEMPS)
    truth = functools.cache(lambda: reference_grads(G.double(), *to_float64((S, T, mimic, adapt)),
                                                    TEMPS))
    n = max(s.numel() for s in S + T)
    assert_exact_list(got[:L], list(want[:L]), lambda: truth()[:L], n)
    params = [range(L + 4 * k, L + 4 * k + 4) for k in range(L)]
    params += [range(5 * L + 2 * k, 5 * L + 2 * k + 2) for k in range(L)]
    for idx in params:  # each level's layers on one scale
        assert_exact_list([got[i] for i in idx], [want[i] for i in idx],
                          lambda idx=idx: [truth()[i] for i in idx], n,
                          scale=max(float(want[i].abs().max()) for i in idx))
    for p in out[L:2 * L]:  # S's pixel coefficients: only its signed sum gets a gradient
        assert (p[:, IMIT_PIX_COEF.a] == 0).all() and (p[:, IMIT_PIX_COEF.s] == 0).all()


def test_zero_norms_give_zero_not_nan():
    """T = f(S) = 0 and mimic layers of zeros: every term 0, and the backward 0, not NaN."""
    S, T, _, _ = maps(2, LEVELS[:1])
    T = fS = [torch.zeros_like(t) for t in T]
    Ct, Cs = T[0].shape[1], S[0].shape[1]
    mimic = [torch.zeros(Ct, Cs), torch.zeros(Ct), torch.zeros(1, 1, 3, 3), torch.zeros(1)]
    args = (*tables(S, fS, T), mimic, [15], TEMPS[:1])
    table = fkd_small_math.terms(*args)[0]
    assert (table == 0).all()
    out = fkd_small_math.terms_grad(torch.ones(1, 3), *args, table)
    assert all(torch.isfinite(x).all() for x in out)
    assert all((x == 0).all() for x in out[:2] + out[3:])


# ---------------------------------------------------------------- the paper variant
def paper_reference_terms(S, T, align, temps):
    """(L, 2) L_AT, L_AM of fkd_paper_reference level by level (no non-local term)."""
    return torch.stack([torch.stack(list(fkd_paper_reference(s, t, PaperParams(*wb), None,
                                                             temp)[:2]))
                        for s, t, wb, temp in zip(S, T, align, temps)])


def paper_reference_grads(G, S, T, align, temps):
    S = [s.detach().requires_grad_() for s in S]
    align = [tuple(x.detach().requires_grad_() for x in wb) for wb in align]
    value = (paper_reference_terms(S, T, align, temps) * G).sum()
    return torch.autograd.grad(value, S + [x for wb in align for x in wb])


def paper_contract_grads(G, S, T, align, temps):
    """paper_terms_grad's tables through imitation_grad (dS'), then the align conv's own
    backward."""
    S = [s.detach().requires_grad_() for s in S]
    align = [tuple(x.detach().requires_grad_() for x in wb) for wb in align]
    Sa = adapted(S, align)
    tables = paper_tables([s.detach() for s in Sa], T, temps)
    out = fkd_small_math.paper_terms_grad(G, *tables, temps,
                                          fkd_small_math.paper_terms(*tables[:3], temps)[0])
    L = len(S)
    dSa = imitation_passes.imitation_grad([s.detach() for s in Sa], T, out[:L], out[L:])
    return torch.autograd.grad(Sa, S + [x for wb in align for x in wb], dSa), out


@pytest.mark.parametrize("N", [1, 3])
def test_paper_terms_match_the_reference_loss(N):
    S, T, _, align = maps(N, LEVELS)
    Sa = adapted(S, align)
    got = fkd_small_math.paper_terms(*paper_tables(Sa, T, TEMPS)[:3], TEMPS)
    assert len(got) == 1 and got[0].shape == (len(LEVELS), 2)
    truth = lambda: list(paper_reference_terms(*to_float64((S, T, align)), TEMPS).T)  # noqa: E731
    assert_exact_list(list(got[0].T), list(paper_reference_terms(S, T, align, TEMPS).T), truth,
                      max(s.numel() for s in S + T))


def test_paper_masks_come_from_the_sum_of_both_attentions():
    """M_c: C softmax over channels of G_c(S') + G_c(T) (docs/fkd.md, "The paper variant")."""
    S, T, _, align = maps(2, LEVELS[:1])
    Sa = adapted(S, align)
    pix, chan, _, M_c = paper_tables(Sa, T, TEMPS[:1])
    G = Sa[0].abs().mean((2, 3)) + T[0].abs().mean((2, 3))
    torch.testing.assert_close(M_c[0], G.shape[1] * torch.softmax(G / TEMPS[0], -1))


@pytest.mark.parametrize("N", [1, 2])
def test_paper_backward_through_the_gradient_pass_matches_autograd(N):
    S, T, _, align = maps(N, LEVELS, seed=2)
    L = len(S)
    G = torch.randn(L, 2, generator=torch.Generator().manual_seed(4))
    got, out = paper_contract_grads(G, S, T, align, TEMPS)
    want = paper_reference_grads(G, S, T, align, TEMPS)
    truth = functools.cache(lambda: paper_reference_grads(
        G.double(), *to_float64((S, T, align)), TEMPS))
    n = max(s.numel() for s in S + T)
    assert_exact_list(list(got[:L]), list(want[:L]), lambda: truth()[:L], n)
    for k in range(L):  # each level's align conv on one scale
        idx = [L + 2 * k, L + 2 * k + 1]
        assert_exact_list([got[i] for i in idx], [want[i] for i in idx],
                          lambda idx=idx: [truth()[i] for i in idx], n,
                          scale=max(float(want[i].abs().max()) for i in idx))
    for p in out[:L]:  # dS' has no signed-sum term
        assert (p[:, IMIT_PIX_COEF.b] == 0).all()
