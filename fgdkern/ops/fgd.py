"""Fused FGD: the autograd wrapper shared by the C++ and Triton passes.

forward:  fgd_stats (one pass over S and T, per backend)  ->  small statistics
          the loss terms are then O(N*(C+HW)) torch ops (``fgd_terms``), so
          the GcBlock MLPs, softmaxes and L1 terms get ordinary autograd.
backward: autograd delivers the gradients of the statistics; ``_FGDStats``
          turns them into per-pixel / per-channel coefficients and runs
          fgd_grad (one pass over S and T writing dS, dw_s, dw_t).
The math of both passes is fixed in ``fgdkern.reference.fgd_passes``.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fgdkern._ext import HAS_EXT
from fgdkern.reference import fgd_passes


class FGDTerms(NamedTuple):
    """The four unweighted FGD loss terms (SPEC 1.3), float32 scalars."""
    fg_loss: Tensor
    bg_loss: Tensor
    mask_loss: Tensor
    rela_loss: Tensor


# ---------------------------------------------------------------- op registry
def _stats_fake(S, T, fg, bg, w_s, w_t, temp):
    pix = [s.new_empty((s.shape[0], 4, s.shape[2] * s.shape[3]), dtype=torch.float32) for s in S]
    chan = [s.new_empty((s.shape[0], 8, s.shape[1]), dtype=torch.float32) for s in S]
    return pix + chan


def _grad_fake(S, T, pix_coef, chan_coef, K):
    dS = [torch.empty_like(s) for s in S]
    dw = [s.new_empty((s.shape[1],), dtype=torch.float32) for s in S]
    return dS + dw + [w.clone() for w in dw]


if HAS_EXT:
    torch.library.register_fake("fgdkern::fgd_stats_cpp")(_stats_fake)
    torch.library.register_fake("fgdkern::fgd_grad_cpp")(_grad_fake)


@torch.library.custom_op("fgdkern::fgd_stats_triton", mutates_args=())
def _fgd_stats_triton(S: list[Tensor], T: list[Tensor], fg: list[Tensor], bg: list[Tensor],
                      w_s: list[Tensor], w_t: list[Tensor], temp: float) -> list[Tensor]:
    from fgdkern.triton import fgd as kernels
    return kernels.fgd_stats(S, T, fg, bg, w_s, w_t, temp)


@torch.library.custom_op("fgdkern::fgd_grad_triton", mutates_args=())
def _fgd_grad_triton(S: list[Tensor], T: list[Tensor], pix_coef: list[Tensor],
                     chan_coef: list[Tensor], K: list[Tensor]) -> list[Tensor]:
    from fgdkern.triton import fgd as kernels
    return kernels.fgd_grad(S, T, pix_coef, chan_coef, K)


_fgd_stats_triton.register_fake(_stats_fake)
_fgd_grad_triton.register_fake(_grad_fake)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend_device(backend: str, device: torch.device) -> None:
    """Raise a clear error when ``backend`` cannot run on ``device``."""
    if backend == "cpp":
        if not HAS_EXT:
            raise RuntimeError("backend='cpp' needs the compiled extension fgdkern._C, which "
                               "is not available (see the warning at import)")
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors; preds_S is on {device}")
    elif backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' got CPU tensors: Triton kernels run on a GPU, "
                               "or on CPU only under TRITON_INTERPRET=1 (set before import)")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' runs on CUDA tensors; preds_S is on {device}")


def passes(backend: str) -> tuple[Callable, Callable]:
    """(fgd_stats, fgd_grad) of a backend: 'cpp', 'triton', or 'torch' (the contract)."""
    if backend == "cpp":
        return torch.ops.fgdkern.fgd_stats_cpp, torch.ops.fgdkern.fgd_grad_cpp
    if backend == "triton":
        return torch.ops.fgdkern.fgd_stats_triton, torch.ops.fgdkern.fgd_grad_triton
    if backend == "torch":
        return fgd_passes.fgd_stats, fgd_passes.fgd_grad
    raise ValueError(f"unknown fused backend {backend!r}")


# ------------------------------------------------------------------ autograd
def _grad_coefficients(saved, g_pix, g_chan, temp):
    """Per level: gradients of the statistics -> fgd_grad's coefficient tables."""
    fg, bg, w_s, w_t, pix, chan = saved
    N, C, HW = chan.shape[0], chan.shape[2], pix.shape[2]
    A = HW * torch.softmax(pix[:, 1] / temp, -1)              # teacher A_S   (N, HW)
    p_s, p_t = torch.softmax(pix[:, 2], -1), torch.softmax(pix[:, 3], -1)
    pix_coef = torch.stack([g_pix[:, 0] / C, fg.reshape(N, HW) * A, bg.reshape(N, HW) * A,
                            p_s, p_t], 1)
    g_gc_s, _, g_ctx_s, g_ctx_t, g_sum_d, g_m2, g_xfg, g_xbg = g_chan.unbind(1)
    mean_d = chan[:, 4] / HW
    chan_coef = torch.stack([
        g_gc_s / HW, 2 * g_m2, g_sum_d - 2 * g_m2 * mean_d, 2 * g_xfg, 2 * g_xbg,
        g_ctx_s, g_ctx_t, w_s.expand(N, C), w_t.expand(N, C)], 1)
    K = torch.stack([(g_ctx_s * chan[:, 2]).sum(1), (g_ctx_t * chan[:, 3]).sum(1)], 1)
    return pix_coef, chan_coef, K


class _FGDStats(torch.autograd.Function):
    """Differentiable fgd_stats over L levels.

    Inputs: S*L, T*L, fg*L, bg*L, w_s*L, w_t*L, b_s*L, b_t*L. The conv_mask
    biases b_s, b_t do not change a softmax over pixels: their gradient is
    exactly zero, returned as zeros so that every parameter gets a gradient
    (as DistributedDataParallel expects).
    """

    @staticmethod
    def forward(ctx, backend: str, temp: float, L: int, *tensors):
        S, T, fg, bg, w_s, w_t = (list(tensors[i * L:(i + 1) * L]) for i in range(6))
        out = passes(backend)[0](S, T, fg, bg, w_s, w_t, temp)
        ctx.backend, ctx.temp, ctx.L = backend, temp, L
        ctx.save_for_backward(*tensors[:6 * L], *out)
        ctx.bias_like = [(b.shape, b.dtype, b.device) for b in tensors[6 * L:]]
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        L = ctx.L
        saved = ctx.saved_tensors
        S, T, fg, bg, w_s, w_t, pix, chan = (saved[i * L:(i + 1) * L] for i in range(8))
        g_pix, g_chan = grads[:L], grads[L:]
        coefs = [_grad_coefficients(lvl[:6], gp, gc, ctx.temp) for lvl, gp, gc in
                 zip(zip(fg, bg, w_s, w_t, pix, chan), g_pix, g_chan)]
        pix_coef, chan_coef, K = (list(c) for c in zip(*coefs))
        out = passes(ctx.backend)[1](list(S), list(T), pix_coef, chan_coef, K)
        dS, dw_s, dw_t = out[:L], out[L:2 * L], out[2 * L:]
        zero_b = [torch.zeros(shape, dtype=dtype, device=dev) for shape, dtype, dev in ctx.bias_like]
        return (None, None, None, *dS, *([None] * 3 * L), *dw_s, *dw_t, *zero_b)


def fgd_stats(backend, S, T, fg, bg, w_s, w_t, b_s, b_t, temp):
    """Run the forward pass of ``backend`` with autograd; returns (pix list, chan list)."""
    L = len(S)
    out = _FGDStats.apply(backend, float(temp), L, *S, *T, *fg, *bg, *w_s, *w_t, *b_s, *b_t)
    return list(out[:L]), list(out[L:])


# ------------------------------------------------------------- small torch ops
def channel_add(mlp: torch.nn.Sequential, ctx: Tensor) -> Tensor:
    """A channel_add_conv (conv1x1 -> LayerNorm -> ReLU -> conv1x1) on a (N, C) context.

    On a 1x1 map its convolutions are matrix products: the same math, without
    the per-call cost of a convolution (parameters and their gradients unchanged).
    """
    conv1, norm, _, conv2 = mlp
    h = F.linear(ctx, conv1.weight.flatten(1), conv1.bias)
    h = F.layer_norm(h, (h.shape[1],), norm.weight.flatten(), norm.bias.flatten(), norm.eps)
    return F.linear(h.relu(), conv2.weight.flatten(1), conv2.bias)


def fgd_terms(pix: Tensor, chan: Tensor, gc_block_s, gc_block_t, temp: float) -> FGDTerms:
    """The loss terms of one level from its statistics (SPEC 1.3), O(N*(C+HW)).

    gc_block_s / gc_block_t are the ``channel_add_conv_*`` Sequentials that map
    a context to its channel shift.
    """
    N, C, HW = chan.shape[0], chan.shape[2], pix.shape[2]
    gs_s, gs_t = pix[:, 0], pix[:, 1].detach()
    gc_s, gc_t, ctx_s, ctx_t, sum_d, m2_d, x_fg, x_bg = chan.unbind(1)
    gc_t = gc_t.detach()
    A_S_t = HW * torch.softmax(gs_t / temp, -1)
    A_C_t = C * torch.softmax(gc_t / temp, -1)
    A_S_s = HW * torch.softmax(gs_s / temp, -1)
    A_C_s = C * torch.softmax(gc_s / temp, -1)
    fg_loss = (A_C_t * x_fg).sum() / N
    bg_loss = (A_C_t * x_bg).sum() / N
    mask_loss = (A_C_s - A_C_t).abs().sum() / N + (A_S_s - A_S_t).abs().sum() / N
    shift = channel_add(gc_block_s, ctx_s) - channel_add(gc_block_t, ctx_t)
    rela_loss = (m2_d.sum() + HW * (sum_d / HW + shift).square().sum()) / N
    return FGDTerms(fg_loss, bg_loss, mask_loss, rela_loss)
