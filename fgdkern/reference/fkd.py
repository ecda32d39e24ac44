"""FKD of one level in plain PyTorch, written as docs/fkd.md reads: the ground truth.

Reads the raw student map S (N, Cs, H, W), the teacher map T (N, Ct, H, W),
the parameters of the adaptation layers and of the two non-local blocks as
NamedTuples of tensors, and the temperature; returns the unweighted terms of
the code variant (docs/fkd.md, "The code variant") or of the paper variant
("The paper variant", eqs. (1), (2)). The small pieces that the fused op
shares (masks, attention mimic, non-local blocks) are the functions below;
the terms that read every element are written out directly here.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class FKDCodeTerms(NamedTuple):
    """Unweighted terms of the code variant (docs/fkd.md, "The code variant")."""
    feat_loss: Tensor
    channel_loss: Tensor
    spatial_loss: Tensor
    nonlocal_loss: Tensor


class FKDPaperTerms(NamedTuple):
    """Unweighted terms of the paper variant: L_AT (eq. 1), L_AM (eq. 2), L_NLD."""
    at_loss: Tensor
    am_loss: Tensor
    nonlocal_loss: Tensor


class CodeParams(NamedTuple):
    """Adaptation layers of the code variant (docs/fkd.md, "Parameters")."""
    adapt_weight: Tensor     # (Ct, Cs, 1, 1)  f of L_feat
    adapt_bias: Tensor       # (Ct,)
    channel_weight: Tensor   # (Ct, Cs)        Linear of L_ch
    channel_bias: Tensor     # (Ct,)
    spatial_weight: Tensor   # (1, 1, 3, 3)    Conv2d of L_sp, padding 1
    spatial_bias: Tensor     # (1,)


class PaperParams(NamedTuple):
    """The align layer of the paper variant; both None when Cs == Ct."""
    align_weight: Tensor | None   # (Ct, Cs, 1, 1)
    align_bias: Tensor | None     # (Ct,)


class NonLocalParams(NamedTuple):
    """A dot-product non-local block on C channels, inter = max(C // 2, 1) (docs/fkd.md,
    "The non-local block"). The BatchNorm buffers are updated in place in training mode."""
    theta_weight: Tensor   # (inter, C, 1, 1)
    theta_bias: Tensor     # (inter,)
    phi_weight: Tensor     # (inter, C, 1, 1)
    phi_bias: Tensor
    g_weight: Tensor       # (inter, C, 1, 1)
    g_bias: Tensor
    W_weight: Tensor       # (C, inter, 1, 1)
    W_bias: Tensor         # (C,)
    bn_weight: Tensor      # (C,)
    bn_bias: Tensor        # (C,)
    running_mean: Tensor | None   # (C,)
    running_var: Tensor | None    # (C,)
    momentum: float
    eps: float
    training: bool


class NonLocalDistillParams(NamedTuple):
    """L_NL's layers: NL_s (Cs channels), NL_t (Ct channels), the 1x1 conv Cs -> Ct."""
    student: NonLocalParams
    teacher: NonLocalParams
    adapt_weight: Tensor   # (Ct, Cs, 1, 1)
    adapt_bias: Tensor     # (Ct,)


def acc_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for float16/bfloat16/float32 inputs, float64 when any is float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


# ------------------------------------------------------------- norms and masks
def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x >= 0 whose gradient at 0 is 0, not inf (docs/fkd.md, "Exactness")."""
    positive = x > 0
    root = torch.where(positive, x, torch.ones_like(x)).sqrt()
    return torch.where(positive, root, torch.zeros_like(x))


def l2(diff: Tensor) -> Tensor:
    """The un-normalised L2 norm over every element, the whole batch at once."""
    return safe_sqrt(diff.square().sum())


def softmax_mask(G: Tensor, temp: float) -> Tensor:
    """K * softmax(G / temp) over the last axis of K entries (the masks of docs/fkd.md)."""
    return G.shape[-1] * torch.softmax(G / temp, -1)


# ----------------------------------------------------------- attention mimic
def code_mimic(mean_ij_T: Tensor, mean_ij_S: Tensor, mean_c_T: Tensor, mean_c_S: Tensor,
               p: CodeParams) -> tuple[Tensor, Tensor]:
    """L_ch, L_sp of the code variant from SIGNED means: mean_ij (N, C), mean_c (N, H, W)."""
    dtype = mean_ij_S.dtype
    ch = F.linear(mean_ij_S, p.channel_weight.to(dtype), p.channel_bias.to(dtype))
    sp = F.conv2d(mean_c_S[:, None], p.spatial_weight.to(dtype), p.spatial_bias.to(dtype),
                  padding=1)
    return l2(mean_ij_T - ch), l2(mean_c_T[:, None] - sp)


def paper_mimic(Gs_S: Tensor, Gs_T: Tensor, Gc_S: Tensor, Gc_T: Tensor) -> Tensor:
    """L_AT of eq. (1): L2(G_s(S'), G_s(T)) + L2(G_c(S'), G_c(T)), batch-wide norms."""
    return l2(Gs_S - Gs_T) + l2(Gc_S - Gc_T)


# ---------------------------------------------------------- non-local blocks
def pool_size(H: int, W: int) -> tuple[int, int]:
    """The 2x2 stride-2 max pool of keys and values, 1 along an axis of size 1."""
    return (2 if H >= 2 else 1, 2 if W >= 2 else 1)


def batch_norm(x: Tensor, p: NonLocalParams) -> Tensor:
    """BatchNorm2d of W(y): batch statistics in training mode (running ones updated as
    nn.BatchNorm2d does, unbiased variance), running statistics otherwise."""
    if p.training or p.running_mean is None:
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        if p.training and p.running_mean is not None:
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                unbiased = var.detach() * (n / max(n - 1, 1))
                p.running_mean.lerp_(mean.detach().to(p.running_mean.dtype), p.momentum)
                p.running_var.lerp_(unbiased.to(p.running_var.dtype), p.momentum)
    else:
        mean, var = p.running_mean.to(x.dtype), p.running_var.to(x.dtype)
    scale = p.bn_weight.to(x.dtype) * torch.rsqrt(var + p.eps)
    shift = p.bn_bias.to(x.dtype) - mean * scale
    return x * scale[:, None, None] + shift[:, None, None]


def non_local(x: Tensor, p: NonLocalParams) -> Tensor:
    """z = BN(W(y)) + x, y = f g with f = theta^T phi / Np (docs/fkd.md, "The non-local block").

    theta^T (phi g^T) / Np is evaluated in that order: the same y, with (inter, inter)
    instead of (HW, Np) intermediates.
    """
    N, C, H, W = x.shape
    k = pool_size(H, W)
    theta = conv1x1(x, p.theta_weight, p.theta_bias).flatten(2)          # (N, I, HW)
    phi = F.max_pool2d(conv1x1(x, p.phi_weight, p.phi_bias), k, k).flatten(2)   # (N, I, Np)
    g = F.max_pool2d(conv1x1(x, p.g_weight, p.g_bias), k, k).flatten(2)        # (N, I, Np)
    kv = torch.bmm(phi, g.transpose(1, 2)) / phi.shape[2]                 # (N, I, I)
    y = torch.bmm(kv.transpose(1, 2), theta).reshape(N, -1, H, W)         # (N, I, H, W)
    return batch_norm(conv1x1(y, p.W_weight, p.W_bias), p) + x


def nonlocal_term(S: Tensor, T: Tensor, nld: NonLocalDistillParams | None) -> Tensor:
    """L_NL = || adapt(NL_s(S)) - NL_t(T) ||_2 (docs/fkd.md, "The non-local block");
    T detached, NL_t's parameters train. Zero when the term is switched off (None)."""
    dtype = acc_dtype(S, T)
    if nld is None:
        return torch.zeros((), dtype=dtype, device=S.device)
    with torch.autocast(S.device.type, enabled=False):
        rel_s = conv1x1(non_local(S.to(dtype), nld.student), nld.adapt_weight, nld.adapt_bias)
        rel_t = non_local(T.detach().to(dtype), nld.teacher)
        return l2(rel_s - rel_t)


# ---------------------------------------------------------------- the terms
def fkd_code_reference(S: Tensor, T: Tensor, p: CodeParams, nld: NonLocalDistillParams | None,
                       temp: float) -> FKDCodeTerms:
    """Unweighted code-variant terms of one level; float32 math (float64 stays float64)."""
    dtype = acc_dtype(S, T)
    with torch.autocast(S.device.type, enabled=False):
        s, t = S.to(dtype), T.detach().to(dtype)
        N, _, H, W = t.shape
        A_t = softmax_mask(t.abs().mean(1).reshape(N, H * W), temp)
        A_s = softmax_mask(s.abs().mean(1).reshape(N, H * W), temp)
        M = ((A_t + A_s) / 2).detach().reshape(N, 1, H, W)
        feat = safe_sqrt(((t - conv1x1(s, p.adapt_weight, p.adapt_bias)).square() * M).sum())
        ch, sp = code_mimic(t.mean((2, 3)), s.mean((2, 3)), t.mean(1), s.mean(1), p)
    return FKDCodeTerms(feat, ch, sp, nonlocal_term(S, T, nld))


def fkd_paper_reference(S: Tensor, T: Tensor, p: PaperParams, nld: NonLocalDistillParams | None,
                        temp: float) -> FKDPaperTerms:
    """Unweighted paper-variant terms of one level, eqs. (1) and (2), and L_NLD."""
    dtype = acc_dtype(S, T)
    with torch.autocast(S.device.type, enabled=False):
        s, t = S.to(dtype), T.detach().to(dtype)
        if p.align_weight is not None:
            s = conv1x1(s, p.align_weight, p.align_bias)
        N, C, H, W = t.shape
        Gs_s, Gs_t = s.abs().mean(1).reshape(N, H * W), t.abs().mean(1).reshape(N, H * W)
        Gc_s, Gc_t = s.abs().mean((2, 3)), t.abs().mean((2, 3))
        M_s = softmax_mask(Gs_s + Gs_t, temp).detach().reshape(N, 1, H, W)
        M_c = softmax_mask(Gc_s + Gc_t, temp).detach().reshape(N, C, 1, 1)
        am = safe_sqrt(((t - s).square() * M_s * M_c).sum())
        at = paper_mimic(Gs_s, Gs_t, Gc_s, Gc_t)
    return FKDPaperTerms(at, am, nonlocal_term(S, T, nld))
