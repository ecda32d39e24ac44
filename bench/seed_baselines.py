"""Eager baselines of FKD, PFI and RM, written the way their public code computes them.

Never imported by the package. Each reads the parameters of the fgdkern module it is
built from (``like``), so both compute the same loss from the same values:

* EagerLoopFKD: a Python loop over levels; per level the attention masks from
  mean |F| with a softmax each, the masked feature distance summed over every
  element and square-rooted, torch.dist for the attention mimic and for the
  non-local outputs (docs/fkd.md, code variant);
* EagerLoopPFI: a loop over levels; per level P_dif, F_dif and the squared
  product averaged over pixels and images (docs/pfi.md, eqs. 7-9);
* EagerLoopRM: a loop over instances; per instance its anchors selected by a
  boolean mask, two softmaxes and a KL divergence (docs/rm.md, eqs. 5-6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _spatial_attention(x: Tensor, temp: float) -> Tensor:
    """H * W * softmax over pixels of mean_c |x| / temp, (N, 1, H, W)."""
    N, _, H, W = x.shape
    value = x.abs().mean(dim=1, keepdim=True)
    return (H * W * F.softmax((value / temp).reshape(N, -1), dim=1)).reshape(N, 1, H, W)


def _masked_distance(T: Tensor, S: Tensor, mask: Tensor) -> Tensor:
    """sqrt(sum((T - S)^2 * mask)) over the whole batch."""
    return (((T - S) ** 2) * mask).sum() ** 0.5


class EagerLoopFKD(nn.Module):
    """FKD (code variant) over a pyramid: ``levels`` are the FKDLoss modules of a
    MultiLevelFKDLoss; their adaptation and non-local layers are called as modules."""

    def __init__(self, ms: nn.Module):
        super().__init__()
        if ms.variant != "code":
            raise ValueError("EagerLoopFKD times the code variant")
        self.levels = ms.levels

    @classmethod
    def like(cls, ms: nn.Module) -> "EagerLoopFKD":
        return cls(ms)

    def level_loss(self, m: nn.Module, S: Tensor, T: Tensor) -> Tensor:
        T = T.detach()
        mask = ((_spatial_attention(T, m.temp) + _spatial_attention(S, m.temp)) / 2).detach()
        feat = _masked_distance(T, m.adaptation(S), mask)
        channel = torch.dist(T.mean(dim=(2, 3)), m.channel_adaptation(S.mean(dim=(2, 3))))
        spatial = torch.dist(T.mean(dim=1, keepdim=True),
                             m.spatial_adaptation(S.mean(dim=1, keepdim=True)))
        loss = m.beta * feat + m.alpha * (channel + spatial)
        if m.non_local:
            loss = loss + m.gamma * torch.dist(
                m.teacher_non_local(T), m.non_local_adaptation(m.student_non_local(S)))
        return loss

    def forward(self, feats_S, feats_T) -> Tensor:
        loss = 0.0
        for m, S, T in zip(self.levels, feats_S, feats_T):
            loss = loss + self.level_loss(m, S, T)
        return loss


class EagerLoopPFI(nn.Module):
    """PFI over a pyramid with the ``align`` layer (if any) and weight of a PFILoss."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.align = getattr(loss, "align", None)
        self.loss_weight = loss.loss_weight

    @classmethod
    def like(cls, loss: nn.Module) -> "EagerLoopPFI":
        return cls(loss)

    def forward(self, feats_S, feats_T, probs_S, probs_T) -> Tensor:
        total = 0.0
        for F_s, F_t, P_s, P_t in zip(feats_S, feats_T, probs_S, probs_T):
            if self.align is not None:
                F_s = self.align(F_s)
            p_dif = ((P_s.detach() - P_t.detach()) ** 2).mean(dim=1)
            f_dif = ((F_s - F_t.detach()) ** 2).mean(dim=1)
            H, W = f_dif.shape[-2:]
            total = total + ((p_dif * f_dif) ** 2).sum(dim=(1, 2)).mean() / (H * W)
        return self.loss_weight * total / len(feats_S)


class EagerLoopRM(nn.Module):
    """Rank mimicking with a loop over the instances (weight of a RankMimickingLoss)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss_weight = loss.loss_weight

    @classmethod
    def like(cls, loss: nn.Module) -> "EagerLoopRM":
        return cls(loss)

    def forward(self, scores_S: Tensor, scores_T: Tensor, instance_ids: Tensor) -> Tensor:
        total, count = scores_S.sum() * 0.0, 0
        for j in torch.unique(instance_ids).tolist():
            anchors = instance_ids == j
            log_s = F.log_softmax(scores_S[anchors].float(), dim=0)
            t = F.softmax(scores_T[anchors].detach().float(), dim=0)
            total = total + (t * (t.log() - log_s)).sum()
            count += 1
        return self.loss_weight * total / max(count, 1)
