"""The PyTorch reference of Rank Mimicking (paper eqs. (5)-(6)) by hand, against an explicit
per-instance loop implementation, and by float64 gradcheck."""
import math

import pytest
import torch

from fgdkern.reference.rm import dense_ids, rm_reference


def test_reference_by_hand():
    """Instance 7: s = (0, ln 3) -> s' = (1/4, 3/4); t = (0, 0) -> t' = (1/2, 1/2) (eq. 5);
    sum_i t' log(t'/s') = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3). Instance 3: one anchor,
    s' = t' = 1 -> 0. M = 2: Loss_RM = 1/4 ln(4/3) = 0.0719205... (eq. 6).
    Gradient (s' - t') / M: (-1/8, 1/8) and 0."""
    s = torch.tensor([0.0, math.log(3.0), 5.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.0, -2.0], dtype=torch.float64)
    ids = torch.tensor([7, 7, 3])
    terms = rm_reference(s, t, ids)
    assert terms.rm_loss.item() == pytest.approx(0.25 * math.log(4 / 3), rel=1e-12)
    assert int(terms.num_instances) == 2
    (g,) = torch.autograd.grad(terms.rm_loss, s)
    torch.testing.assert_close(g, torch.tensor([-0.125, 0.125, 0.0], dtype=torch.float64),
                               rtol=1e-12, atol=1e-15)


def loop_rm(s, t, ids) -> float:
    """Eqs. (5)-(6) instance by instance, one anchor at a time."""
    s, t, ids = s.double().tolist(), t.double().tolist(), ids.tolist()
    instances = sorted(set(ids))
    total = 0.0
    for j in instances:
        anchors = [i for i, x in enumerate(ids) if x == j]
        zs = sum(math.exp(s[i]) for i in anchors)
        zt = sum(math.exp(t[i]) for i in anchors)
        for i in anchors:
            sp, tp = math.exp(s[i]) / zs, math.exp(t[i]) / zt
            total += tp * math.log(tp / sp)
    return total / max(len(instances), 1)


def random_case(P, num_ids, seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(P, generator=g, dtype=dtype) * scale
    t = torch.randn(P, generator=g, dtype=dtype) * scale
    ids = torch.randint(0, num_ids, (P,), generator=g) * 13 + 5  # sparse, unsorted ids
    return s, t, ids


@pytest.mark.parametrize("P,num_ids,seed", [(1, 1, 0), (5, 2, 1), (40, 7, 2), (200, 60, 3)])
def test_reference_matches_loop_implementation(P, num_ids, seed):
    s, t, ids = random_case(P, num_ids, seed)
    assert float(rm_reference(s, t, ids).rm_loss) == pytest.approx(loop_rm(s, t, ids), rel=1e-10)


def test_gradient_is_the_difference_of_the_softmaxes():
    """d Loss_RM / d s_i = (s'_i - t'_i) / M: the gradient of a KL divergence."""
    s, t, ids = random_case(50, 9, seed=4)
    s.requires_grad_()
    terms = rm_reference(s, t, ids)
    (g,) = torch.autograd.grad(terms.rm_loss, s)
    segment, M = dense_ids(ids)
    want = torch.zeros_like(s)
    for j in range(int(M)):
        at = segment == j
        want[at] = (torch.softmax(s.detach()[at], 0) - torch.softmax(t[at], 0)) / M
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-15)


def test_equal_scores_give_exactly_zero():
    s, t, ids = random_case(30, 5, seed=5, dtype=torch.float32)
    assert float(rm_reference(s, s.clone(), ids).rm_loss) == 0.0


def test_dense_ids():
    segment, M = dense_ids(torch.tensor([40, 2, 40, 9, 2, 1000]))
    assert segment.tolist() == [2, 0, 2, 1, 0, 3] and int(M) == 4
    segment, M = dense_ids(torch.zeros(0, dtype=torch.long))
    assert segment.numel() == 0 and int(M) == 0


def test_large_logits_are_stable():
    """Scores of 1e3 (a shift softmax does not see) give the loss of the same scores - 1e3."""
    s, t, ids = random_case(30, 4, seed=6, dtype=torch.float32)
    shifted = rm_reference(s + 1000.0, t - 1000.0, ids).rm_loss
    plain = rm_reference(s, t, ids).rm_loss
    assert torch.isfinite(shifted)
    torch.testing.assert_close(shifted, plain, rtol=1e-3, atol=1e-4)


def test_reference_gradcheck():
    s, t, ids = random_case(25, 6, seed=8)
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda s_: rm_reference(s_, t, ids).rm_loss, (s,))
