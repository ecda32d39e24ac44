"""Eager baselines of CWD, PKD and MGD, written the way their public code computes them.

Never imported by the package. Each reads the hyper-parameters (and, for MGD, the
align and generation layers) of the fgdkern module it is built from (``like``), so
both compute the same loss from the same values:

* EagerCWD: a Python loop over levels; per level the maps viewed as (N*C, H*W),
  a softmax and two log-softmaxes over the pixels, the KL sum times tau^2 over N*C
  (docs/cwd.md, eqs. 3-4);
* EagerPKD: a loop over levels; per level a bilinear resize where the sizes differ,
  each map permuted to (C, N*H*W) and standardised with its mean and std, then
  F.mse_loss / 2 (docs/pkd.md);
* EagerMGD: a loop over levels; per level the align conv, the masked student, the
  generation block as modules, F.mse_loss(reduction="sum") over the batch size
  (docs/mgd.md, eqs. 2-4); the masks are inputs, so that every implementation
  computes the same value.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class EagerCWD(nn.Module):
    def __init__(self, loss: nn.Module):
        super().__init__()
        self.tau, self.loss_weight = loss.tau, loss.loss_weight

    @classmethod
    def like(cls, loss: nn.Module) -> "EagerCWD":
        return cls(loss)

    def forward(self, preds_S, preds_T) -> Tensor:
        total = 0.0
        for S, T in zip(preds_S, preds_T):
            N, C, H, W = S.shape
            s = S.reshape(-1, H * W) / self.tau
            t = T.detach().reshape(-1, H * W) / self.tau
            p_t = F.softmax(t, dim=1)
            kl = (p_t * F.log_softmax(t, dim=1) - p_t * F.log_softmax(s, dim=1)).sum()
            total = total + self.loss_weight * kl * self.tau ** 2 / (N * C)
        return total


def _standardised(x: Tensor) -> Tensor:
    N, C, H, W = x.shape
    flat = x.permute(1, 0, 2, 3).reshape(C, -1)
    flat = (flat - flat.mean(dim=-1, keepdim=True)) / (flat.std(dim=-1, keepdim=True) + 1e-6)
    return flat.reshape(C, N, H, W).permute(1, 0, 2, 3)


class EagerPKD(nn.Module):
    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss_weight, self.resize_stu = loss.loss_weight, loss.resize_stu

    @classmethod
    def like(cls, loss: nn.Module) -> "EagerPKD":
        return cls(loss)

    def forward(self, preds_S, preds_T) -> Tensor:
        total = 0.0
        for S, T in zip(preds_S, preds_T):
            T = T.detach()
            if S.shape[2:] != T.shape[2:]:
                if self.resize_stu:
                    S = F.interpolate(S, T.shape[2:], mode="bilinear")
                else:
                    T = F.interpolate(T, S.shape[2:], mode="bilinear")
            total = total + F.mse_loss(_standardised(S), _standardised(T)) / 2
        return total * self.loss_weight


class EagerMGD(nn.Module):
    """MGD with the align and generation layers of an MGDLoss, called as modules."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss
        self.alpha_mgd = loss.alpha_mgd

    @classmethod
    def like(cls, loss: nn.Module) -> "EagerMGD":
        return cls(loss)

    def forward(self, preds_S, preds_T, masks) -> Tensor:
        total = 0.0
        for k, (S, T, mask) in enumerate(zip(preds_S, preds_T, masks)):
            align, generation, _, _ = self.loss._level(k)
            if align is not None:
                S = align(S)
            new = generation(S * mask)
            total = total + F.mse_loss(new, T.detach(), reduction="sum") / T.shape[0]
        return total * self.alpha_mgd
