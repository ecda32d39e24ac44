"""FGD of one level in plain PyTorch, written as SPEC 1.2-1.3 read: the ground truth.

Reads S (student, after align), T (teacher), the fg/bg masks of SPEC 1.1 and
the GcBlock modules; returns the four unweighted terms. Dense and direct on
purpose: every fused path is tested against this function.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fgdkern.ops.fgd import FGDTerms


def attention(F: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """Spatial and channel attention, eqs. (5)-(8): A_S (N, H, W), A_C (N, C)."""
    N, C, H, W = F.shape
    G_S = F.abs().mean(1).reshape(N, H * W)
    G_C = F.abs().mean((2, 3))
    A_S = H * W * torch.softmax(G_S / temp, 1)
    A_C = C * torch.softmax(G_C / temp, 1)
    return A_S.reshape(N, H, W), A_C


def gc_context(F: Tensor, conv_mask: nn.Conv2d) -> Tensor:
    """GcBlock context, eq. (11): softmax over pixels of conv_mask(F), then F pooled by it."""
    N, C, H, W = F.shape
    p = torch.softmax(conv_mask(F).reshape(N, 1, H * W), 2)
    return torch.bmm(F.reshape(N, C, H * W), p.transpose(1, 2)).reshape(N, C, 1, 1)


def fgd_reference(preds_S: Tensor, preds_T: Tensor, fg: Tensor, bg: Tensor, module,
                  temp: float) -> FGDTerms:
    """The unweighted FGD terms of one level (SPEC 1.3), accumulated in float32.

    ``module`` holds conv_mask_s/t and channel_add_conv_s/t (an FGDLoss).
    preds_S is already aligned; preds_T is detached here.
    """
    dtype = torch.promote_types(torch.promote_types(preds_S.dtype, preds_T.dtype), torch.float32)
    with torch.autocast(preds_S.device.type, enabled=False):
        S, T = preds_S.to(dtype), preds_T.detach().to(dtype)
        N = S.shape[0]
        A_S_s, A_C_s = attention(S, temp)
        A_S_t, A_C_t = attention(T, temp)
        weight = A_S_t[:, None] * A_C_t[:, :, None, None] * (S - T).square()
        fg_loss = (fg[:, None].to(dtype) * weight).sum() / N
        bg_loss = (bg[:, None].to(dtype) * weight).sum() / N
        mask_loss = (A_C_s - A_C_t).abs().sum() / N + (A_S_s - A_S_t).abs().sum() / N
        out_s = S + module.channel_add_conv_s(gc_context(S, module.conv_mask_s))
        out_t = T + module.channel_add_conv_t(gc_context(T, module.conv_mask_t))
        rela_loss = (out_s - out_t).square().sum() / N
    return FGDTerms(fg_loss, bg_loss, mask_loss, rela_loss)
