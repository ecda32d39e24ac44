"""Rank Mimicking in plain PyTorch, written as docs/rm.md reads (paper eqs. (5)-(6)).

RM is small tensor work over the P positive anchors of a batch (a few thousand
scores), so this vectorised reference is also the implementation every
backend runs: segment softmaxes with sort, scatter and index ops, no loop over
instances or images, and no host sync (so torch.compile traces it whole).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class RMTerms(NamedTuple):
    """The unweighted Rank Mimicking loss (docs/rm.md) and its number of instances M."""
    rm_loss: Tensor         # float32 scalar (float64 for float64 scores), eq. (6)
    num_instances: Tensor   # int64 scalar: M, the instances with at least one positive anchor


def dense_ids(instance_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Any (P,) integer ids -> (segment of each anchor in 0..M-1, M as a 0-d tensor).

    One sort of the ids (O(P log P)) instead of torch.unique: the number of
    segments stays a tensor, so nothing waits for the device (docs/rm.md, "Cost").
    """
    ids = instance_ids.reshape(-1)
    sorted_ids, order = torch.sort(ids)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]       # first anchor of each instance
    segment_sorted = starts.cumsum(0) - 1
    segment = torch.empty_like(segment_sorted).scatter_(0, order, segment_sorted)
    return segment, starts.sum()


def segment_log_softmax(x: Tensor, segment: Tensor) -> Tensor:
    """log softmax of x over the anchors of each segment, eq. (5) in log form: (P,)."""
    P = x.shape[0]
    # the largest score of each segment, a constant shift (softmax does not depend on it)
    peak = x.new_zeros(P).scatter_reduce(0, segment, x.detach(), "amax", include_self=False)
    shifted = x - peak[segment]
    total = x.new_zeros(P).index_add(0, segment, shifted.exp())
    return shifted - total.log()[segment]


class _RankKL(torch.autograd.Function):
    """sum_i t'_i log(t'_i / s'_i) / M over every instance, eq. (6), with its gradient in
    closed form, (s' - t') / M (docs/rm.md, "Gradient"): exactly zero where the student's
    scores equal the teacher's, which the chain rule through the log-softmax is not."""

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, segment: Tensor, M: Tensor) -> Tensor:
        log_s = segment_log_softmax(s, segment)
        log_t = segment_log_softmax(t, segment)
        p_t = log_t.exp()
        ctx.save_for_backward(log_s, p_t, M)
        return (p_t * (log_t - log_s)).sum() / M

    @staticmethod
    def backward(ctx, grad: Tensor):
        log_s, p_t, M = ctx.saved_tensors
        return grad * (log_s.exp() - p_t) / M, None, None, None


def rm_reference(scores_S: Tensor, scores_T: Tensor, instance_ids: Tensor) -> RMTerms:
    """Loss_RM = 1/M sum_j sum_i t'_ij log(t'_ij / s'_ij), eq. (6), of (P,) student and
    teacher logits of each anchor's instance class and (P,) instance ids. Accumulated in
    float32 (float64 stays float64); the teacher is detached. P = 0 gives 0, still a
    function of scores_S (backward runs)."""
    dtype = torch.promote_types(torch.promote_types(scores_S.dtype, scores_T.dtype), torch.float32)
    with torch.autocast(scores_S.device.type, enabled=False):
        s, t = scores_S.to(dtype), scores_T.detach().to(dtype)
        segment, M = dense_ids(instance_ids)
        loss = _RankKL.apply(s, t, segment, M.clamp(min=1).to(dtype))
    return RMTerms(loss, M)
