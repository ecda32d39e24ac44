"""FGD of one level in plain PyTorch, written as docs/fgd.md reads: the ground truth.

Reads S (student, after align), T (teacher), the fg/bg masks ("Masks from
boxes") and the GcBlock parameters as tensors; returns the four unweighted
terms ("Loss terms"). Dense and direct on purpose: every fused path is tested
against this function.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class FGDTerms(NamedTuple):
    """The four unweighted FGD loss terms (docs/fgd.md, "Loss terms"), float32 scalars."""
    fg_loss: Tensor
    bg_loss: Tensor
    mask_loss: Tensor
    rela_loss: Tensor


class GcBlockParams(NamedTuple):
    """One GcBlock of the relation term (the global loss, paper eq. (12)), as tensors.

    conv_mask (1x1 conv C -> 1) gives the pixel logits of the context pooling;
    channel_add_conv (1x1 conv C -> C/2, LayerNorm, ReLU, 1x1 conv C/2 -> C)
    maps the (N, C) context to a channel shift. Shapes follow the checkpoint
    names of docs/fgd.md, "Parameters and initialisation".
    """
    mask_weight: Tensor   # (1, C, 1, 1)
    mask_bias: Tensor     # (1,)
    add1_weight: Tensor   # (C/2, C, 1, 1)
    add1_bias: Tensor     # (C/2,)
    norm_weight: Tensor   # (C/2, 1, 1)
    norm_bias: Tensor     # (C/2, 1, 1)
    norm_eps: float
    add2_weight: Tensor   # (C, C/2, 1, 1)
    add2_bias: Tensor     # (C,)


def attention(F_: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """Spatial and channel attention, eqs. (5)-(8): A_S (N, H, W), A_C (N, C)."""
    N, C, H, W = F_.shape
    G_S = F_.abs().mean(1).reshape(N, H * W)
    G_C = F_.abs().mean((2, 3))
    A_S = H * W * torch.softmax(G_S / temp, 1)
    A_C = C * torch.softmax(G_C / temp, 1)
    return A_S.reshape(N, H, W), A_C


def gc_context(F_: Tensor, gc: GcBlockParams) -> Tensor:
    """GcBlock context of eq. (12): softmax over pixels of conv_mask(F), then F pooled by it."""
    N, C, H, W = F_.shape
    logits = F.conv2d(F_, gc.mask_weight.to(F_.dtype), gc.mask_bias.to(F_.dtype))
    p = torch.softmax(logits.reshape(N, 1, H * W), 2)
    return torch.bmm(F_.reshape(N, C, H * W), p.transpose(1, 2)).reshape(N, C, 1, 1)


def gc_transform(ctx: Tensor, gc: GcBlockParams) -> Tensor:
    """channel_add_conv of eq. (12) on a (N, C, 1, 1) context: conv, LayerNorm, ReLU, conv."""
    dtype = ctx.dtype
    h = F.conv2d(ctx, gc.add1_weight.to(dtype), gc.add1_bias.to(dtype))
    h = F.layer_norm(h, h.shape[1:], gc.norm_weight.to(dtype), gc.norm_bias.to(dtype),
                     gc.norm_eps)
    return F.conv2d(h.relu(), gc.add2_weight.to(dtype), gc.add2_bias.to(dtype))


def fgd_reference(preds_S: Tensor, preds_T: Tensor, fg: Tensor, bg: Tensor,
                  gc_s: GcBlockParams, gc_t: GcBlockParams, temp: float) -> FGDTerms:
    """The unweighted FGD terms of one level, accumulated in float32 (float64 stays float64).

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
        out_s = S + gc_transform(gc_context(S, gc_s), gc_s)
        out_t = T + gc_transform(gc_context(T, gc_t), gc_t)
        rela_loss = (out_s - out_t).square().sum() / N
    return FGDTerms(fg_loss, bg_loss, mask_loss, rela_loss)
