"""The benchmark's eager FKD, PFI and RM (bench/seed_baselines.py) against the package
references: equal loss, equal gradients of the student inputs and of every parameter."""
import functools

import pytest
import torch

import fgdkern
from bench.seed_baselines import EagerLoopFKD, EagerLoopPFI, EagerLoopRM
from tests.harness import assert_exact_list, elements, float64_copy, to_float64
from tests.helpers import randomize

SIZES = [(10, 14), (5, 7), (3, 4)]


def _grads(loss_fn, student: list, rest: list, single: bool = False) -> list:
    student = [x.detach().requires_grad_() for x in student]
    value = loss_fn(student[0] if single else student, *rest)
    return [value.detach(), *torch.autograd.grad(value, student + list(loss_fn.parameters()))]


def _assert_same(baseline, loss_fn, student: list, rest: list, single: bool = False) -> None:
    """The eager baseline as exact as the package's reference ``loss_fn``: the loss and
    every gradient, against the reference in float64 (harness.assert_exact_list), the
    parameters' gradients on their common scale as in assert_matches_reference."""
    want = _grads(loss_fn, student, rest, single)
    got = _grads(baseline, student, rest, single)
    truth = functools.cache(lambda: _grads(float64_copy(loss_fn), to_float64(student),
                                           to_float64(rest), single))
    k, n = 1 + len(student), elements(student, rest)   # the parameters' gradients: one scale
    assert_exact_list(got[:k], want[:k], lambda: truth()[:k], n)
    assert_exact_list(got[k:], want[k:], lambda: truth()[k:], n,
                      scale=max((float(w.abs().max()) for w in want[k:]), default=0.0))


def _pyramid(C, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, C, H, W, generator=g) for H, W in SIZES]


@pytest.mark.parametrize("non_local", [True, False])
def test_eager_fkd_is_the_reference(non_local):
    torch.manual_seed(0)
    ms = randomize(fgdkern.MultiLevelFKDLoss(len(SIZES), 6, 6, temp=[0.5, 0.3, 0.8],
                                             non_local=non_local, backend="reference"))
    S, T = _pyramid(6, 1), _pyramid(6, 2)
    _assert_same(EagerLoopFKD.like(ms), ms, S, [T])


def test_eager_pfi_is_the_reference():
    torch.manual_seed(0)
    loss = randomize(fgdkern.PFILoss(4, 6, backend="reference"))
    S, T = _pyramid(4, 1), _pyramid(6, 2)
    P = [[p.sigmoid() for p in _pyramid(5, 3 + k)] for k in range(2)]
    _assert_same(EagerLoopPFI.like(loss), loss, S, [T, *P])


def test_eager_rm_is_the_reference():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([3, 0, 3, 7, 0, 3, 9, 7, 7, 7])
    s, t = torch.randn(10, generator=g), torch.randn(10, generator=g)
    loss = fgdkern.RankMimickingLoss()
    _assert_same(EagerLoopRM.like(loss), loss, [s], [t, ids], single=True)
