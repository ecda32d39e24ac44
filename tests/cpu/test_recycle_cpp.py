"""Recycled gradient buffers of the C++ gradient passes (docs/cpu.md,
"Recycled gradient buffers"): a gradient the caller released is written again
in place; one that anything still refers to never is."""
import gc

import pytest
import torch

from fgdkern.ops import recycle
from tests.cpu import imitation_cpp
from tests.cpu.cpp_ops import grad, make_coefs, needs_cpp, valid_args

pytestmark = needs_cpp

SIZES = [(5, 7), (3, 4)]


def fgd_call():
    S, T, *_ = valid_args()
    coefs = make_coefs(S)
    return lambda: grad(S, T, *coefs)[:len(S)]


def imitation_call():
    X, Y, _ = imitation_cpp.make_maps(2, 6, SIZES)
    pix, chan = imitation_cpp.make_coefs(X)
    return lambda: imitation_cpp.grad(X, Y, pix, chan)


CALLS = {"fgd": fgd_call, "imitation": imitation_call}
HOLDS = {"tensor": lambda t: t, "view": lambda t: t.view(-1)[1:],
         "requires_grad": lambda t: t.requires_grad_(), "numpy": lambda t: t.numpy()}


def pointers(tensors):
    return [t.data_ptr() for t in tensors]


@pytest.fixture(autouse=True)
def recycling_on(monkeypatch):
    monkeypatch.delenv("FGDKERN_RECYCLE", raising=False)


@pytest.mark.parametrize("op", CALLS)
def test_released_gradient_is_written_again(op):
    call = CALLS[op]()
    want = [t.clone() for t in call()]
    first = pointers(call())  # released at once
    gc.collect()
    again = call()
    assert pointers(again) == first
    for got, expected in zip(again, want):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("op", CALLS)
@pytest.mark.parametrize("hold", HOLDS)
def test_held_gradient_is_never_overwritten(op, hold):
    call = CALLS[op]()
    out = call()
    keep = [HOLDS[hold](t) for t in out]
    before = [torch.as_tensor(k).detach().clone() for k in keep]
    ptrs = set(pointers(out))
    del out
    gc.collect()
    again = call()
    assert not set(pointers(again)) & ptrs
    for t in again:
        t.fill_(float("nan"))  # would show in every held buffer that was reused
    for k, b in zip(keep, before):
        torch.testing.assert_close(torch.as_tensor(k).detach(), b, rtol=0, atol=0)


@pytest.mark.parametrize("op", CALLS)
def test_switched_off_keeps_nothing(op, monkeypatch):
    call = CALLS[op]()
    recycle.release()
    held = recycle.kept_bytes()
    monkeypatch.setenv("FGDKERN_RECYCLE", "0")
    out = call()
    assert recycle.kept_bytes() == held
    monkeypatch.setenv("FGDKERN_RECYCLE", "1")
    out = call()
    assert recycle.kept_bytes() == held + sum(t.nbytes for t in out)


@pytest.mark.parametrize("op", CALLS)
def test_release_frees_only_what_nobody_holds(op):
    call = CALLS[op]()
    recycle.release()
    base = recycle.kept_bytes()
    held = call()
    call()  # released at once: the imitation pass keeps two calls' worth
    recycle.release()
    assert recycle.kept_bytes() == base + sum(t.nbytes for t in held)
    del held
    gc.collect()
    recycle.release()
    assert recycle.kept_bytes() == base


def test_dX_and_dY_of_one_backward_are_both_recycled():
    """The imitation backward runs the pass twice (dX, then dY): both buffers come back."""
    X, Y, _ = imitation_cpp.make_maps(2, 6, SIZES)
    pix, chan = imitation_cpp.make_coefs(X)

    def backward():
        return imitation_cpp.grad(X, Y, pix, chan), imitation_cpp.grad(Y, X, pix, chan)

    first = sorted(sum((pointers(o) for o in backward()), []))
    second = sorted(sum((pointers(o) for o in backward()), []))
    assert second == first


def test_a_shape_not_asked_for_again_is_released():
    recycle.release()
    base = recycle.kept_bytes()
    fgd_call()()  # released at once
    S, T, *_ = valid_args()
    other = make_coefs(S)
    grad(S, T, *other)  # same shapes: takes the buffer back, then frees it again
    grad(S[:1], T[:1], *(c[:1] for c in other))  # another signature: the free one is released
    assert recycle.kept_bytes() == base + S[0].nbytes
