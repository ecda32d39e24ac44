"""RankMimickingLoss: against the per-instance loop implementation, dtypes, empty and
single-anchor instances, any ids, torch.compile, bad inputs."""
import math

import pytest
import torch

from fgdkern import RankMimickingLoss
from tests.harness import assert_exact, float64_run
from tests.reference.test_rm import loop_rm, random_case


@pytest.mark.parametrize("P,num_ids,seed", [(1, 1, 0), (7, 3, 1), (64, 10, 2), (500, 80, 3)])
def test_matches_loop_implementation(P, num_ids, seed):
    s, t, ids = random_case(P, num_ids, seed, dtype=torch.float32)
    got = RankMimickingLoss()(s, t, ids)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(4.0 * loop_rm(s, t, ids), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float32(dtype):
    s, t, ids = random_case(200, 30, seed=4, dtype=torch.float32)
    s, t = s.to(dtype).requires_grad_(), t.to(dtype)
    loss = RankMimickingLoss(loss_weight=1.0)(s, t, ids)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loop_rm(s.detach(), t, ids), rel=1e-5)
    (g,) = torch.autograd.grad(loss, s)
    assert g.dtype == dtype


def test_gradient_is_weighted_difference_of_softmaxes():
    """d (alpha Loss_RM) / d s_i = alpha (s'_i - t'_i) / M, per instance."""
    s = torch.tensor([1.0, -0.5, 2.0, 0.3, 0.3, -1.0], requires_grad=True)
    t = torch.tensor([0.2, 0.4, -1.0, 1.0, 2.0, 0.5])
    ids = torch.tensor([4, 4, 9, 9, 9, 1])
    (g,) = torch.autograd.grad(RankMimickingLoss()(s, t, ids), s)
    want = torch.cat([torch.softmax(s.detach()[:2], 0) - torch.softmax(t[:2], 0),
                      torch.softmax(s.detach()[2:5], 0) - torch.softmax(t[2:5], 0),
                      torch.zeros(1)]) * 4.0 / 3
    torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-7)


def test_equal_scores_give_exactly_zero_and_zero_gradient():
    s, t, ids = random_case(50, 8, seed=5, dtype=torch.float32)
    s.requires_grad_()
    loss = RankMimickingLoss()(s, s.detach().clone(), ids)
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, s)
    assert not g.any()


def test_single_anchor_instances_give_zero():
    s = torch.randn(5, requires_grad=True)
    loss = RankMimickingLoss()(s, torch.randn(5), torch.tensor([3, 1, 4, 0, 2]))
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, s)
    assert not g.any()


def test_empty_input_is_zero_and_backward_runs():
    s = torch.zeros(0, requires_grad=True)
    m = RankMimickingLoss()
    loss = m(s, torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert s.grad is not None and s.grad.shape == (0,)
    assert int(m.terms(s, torch.zeros(0), torch.zeros(0, dtype=torch.long)).num_instances) == 0


def test_any_ids_and_views():
    """Sparse, unsorted and int32 ids, strided views: the same loss as dense ids 0..M-1."""
    s, t, ids = random_case(60, 7, seed=6, dtype=torch.float32)
    dense = torch.unique(ids, return_inverse=True)[1]
    m = RankMimickingLoss()
    want = m(s, t, dense)
    assert torch.equal(m(s, t, ids), want)
    assert torch.equal(m(s, t, (ids * 1000 + 12345).int()), want)
    wide = torch.stack([s, torch.randn(60)], 1)[:, 0]   # a strided view
    assert not wide.is_contiguous()
    assert torch.equal(m(wide, t, ids), want)


def test_anchor_order_does_not_matter():
    s, t, ids = random_case(80, 9, seed=7, dtype=torch.float32)
    perm = torch.randperm(80)
    m = RankMimickingLoss()
    assert_exact("loss", m(s[perm], t[perm], ids[perm]), m(s, t, ids), float64_run(m, s, t, ids),
                 s.numel())


def test_teacher_is_detached_and_terms():
    s, t, ids = random_case(20, 4, seed=8, dtype=torch.float32)
    s.requires_grad_(), t.requires_grad_()
    m = RankMimickingLoss(loss_weight=2.5)
    grads = torch.autograd.grad(m(s, t, ids), [s, t], allow_unused=True)
    assert grads[0] is not None and grads[1] is None
    terms = m.terms(s, t, ids)
    assert terms._fields == ("rm_loss", "num_instances")
    assert int(terms.num_instances) == len(set(ids.tolist()))
    torch.testing.assert_close(m(s, t, ids), 2.5 * terms.rm_loss)


def test_defaults():
    m = RankMimickingLoss()
    assert (m.loss_weight, m.backend, m.check_finite) == (4.0, "auto", False)
    assert list(m.parameters()) == []


def test_float64_runs_on_the_reference():
    s, t, ids = random_case(20, 4, seed=9)
    assert RankMimickingLoss()(s, t, ids).dtype == torch.float64


def test_compile_fullgraph():
    """No host sync and no data-dependent shape (the ids are sorted, not made unique):
    the loss traces as one graph, to the eager numbers."""
    from tests import harness
    s, t, ids = random_case(40, 6, seed=10, dtype=torch.float32)
    s.requires_grad_()
    harness.assert_compiles_fullgraph(RankMimickingLoss(), (s, t, ids), [s])


# ------------------------------------------------------------------ bad inputs
def good():
    return torch.randn(6), torch.randn(6), torch.tensor([0, 0, 1, 1, 1, 2])


BAD = [
    # (argument index, value, error, message)
    (0, [1.0, 2.0], TypeError, "scores_S must be a torch.Tensor"),
    (1, torch.ones(6, dtype=torch.long), TypeError, "scores_T must be float16"),
    (0, torch.randn(6, 1), ValueError, r"scores_S must be 1-D \(P,\)"),
    (1, torch.randn(5), ValueError, r"scores_T has shape \(5,\) but scores_S has \(6,\)"),
    (2, torch.zeros(6), TypeError, "instance_ids must be an integer tensor"),
    (2, torch.zeros(6, dtype=torch.bool), TypeError, "instance_ids must be an integer tensor"),
    (2, torch.zeros(5, dtype=torch.long), ValueError, r"instance_ids must be 1-D .* \(6,\)"),
    (2, torch.zeros(6, 1, dtype=torch.long), ValueError, "instance_ids must be 1-D"),
    (2, torch.tensor([0, 0, -1, 1, 1, 2]), ValueError, "instance_ids must be >= 0"),
    (2, [0, 0, 1, 1, 1, 2], TypeError, "instance_ids must be a torch.Tensor"),
]


@pytest.mark.parametrize("which,value,error,message", BAD)
def test_bad_inputs(which, value, error, message):
    args = list(good())
    args[which] = value
    with pytest.raises(error, match=message):
        RankMimickingLoss()(*args)


def test_constructor_and_check_finite():
    with pytest.raises(ValueError, match="backend must be one of"):
        RankMimickingLoss(backend="torch")
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        RankMimickingLoss(check_finite="yes")
    s, t, ids = good()
    t[3] = math.inf
    assert not torch.isfinite(RankMimickingLoss()(s, t, ids))
    with pytest.raises(ValueError, match="scores_T contains non-finite values"):
        RankMimickingLoss(check_finite=True)(s, t, ids)
