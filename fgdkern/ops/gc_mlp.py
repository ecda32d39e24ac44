"""The GcBlock channel_add MLPs of every level at once: forward, and its backward by hand.

channel_add_conv (docs/fgd.md, "Parameters and initialisation") acts on a 1x1
map, its (C,) context x, so its convolutions are matrix products; per level
and image:

    h = W1 x + b1                       (C/2)
    y = gamma (h - mean h) / sqrt(var h + eps) + beta      (LayerNorm)
    out = W2 relu(y) + b2               (C)

The matrix products run per level on the parameters as they are; everything
between them (LayerNorm, relu) is one op over all levels and images, (L, N, .).
``backward`` is the chain rule of those lines written out (docs/kernels.md,
"The terms' backward"): each matrix is read once more and each weight gradient
written once, with no autograd graph in between.
"""
from __future__ import annotations

import torch
from torch import Tensor

# The parameters of one level's MLP, in the order forward and backward take them.
PARAMS = ("add1_weight", "add1_bias", "norm_weight", "norm_bias", "add2_weight", "add2_bias")
MATRICES = ("add1_weight", "add2_weight")  # 1x1 convolutions: (out, in, 1, 1)


def flat(gcs) -> list[Tensor]:
    """The MLP parameters of every level (GcBlockParams), level after level, PARAMS order."""
    return [getattr(g, name) for g in gcs for name in PARAMS]


def _levels(params: list[Tensor]) -> dict[str, list[Tensor]]:
    """Each parameter name -> its tensor per level, float32 (float64 stays float64, for the
    tests' truth); the matrices as (out, in) views."""
    out = {}
    for k, name in enumerate(PARAMS):
        level = [p.to(torch.promote_types(p.dtype, torch.float32))
                 for p in params[k::len(PARAMS)]]
        out[name] = [p.flatten(1) for p in level] if name in MATRICES else level
    return out


def _rows(vectors: list[Tensor]) -> Tensor:
    """Per-level vectors (any shape of C' elements) as (L, 1, C')."""
    return torch.stack([v.reshape(1, -1) for v in vectors])


def forward(params: list[Tensor], eps: Tensor, x: Tensor) -> tuple[Tensor, tuple]:
    """out (L, N, C) of every level's MLP on x (L, N, C); eps: (L, 1, 1) LayerNorm eps.
    Returns out and what backward needs.

    The matrix products run level by level on the parameters themselves: stacking the
    matrices would copy all of them on every call, and reading them is what costs here."""
    p = _levels(params)
    xs = x.unbind(0)
    h = torch.stack([torch.addmm(b, x_l, W.t())
                     for b, x_l, W in zip(p["add1_bias"], xs, p["add1_weight"])])
    var, mean = torch.var_mean(h, -1, correction=0, keepdim=True)
    rstd = (var + eps).rsqrt()
    hn = (h - mean) * rstd
    gamma = _rows(p["norm_weight"])
    r = torch.addcmul(_rows(p["norm_bias"]), hn, gamma).relu_()
    out = torch.stack([torch.addmm(b, r_l, W.t())
                       for b, r_l, W in zip(p["add2_bias"], r.unbind(0), p["add2_weight"])])
    return out, (x, gamma, hn, rstd, r)


def backward(saved: tuple, g_out: Tensor, params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Gradients of sum(g_out * out) w.r.t. x (L, N, C) and each parameter (shaped and
    typed like ``params``)."""
    x, gamma, hn, rstd, r = saved
    p = _levels(params)
    g_y = torch.stack([g @ W for g, W in zip(g_out.unbind(0), p["add2_weight"])]).mul_(r > 0)  # relu
    g_hn = g_y * gamma
    g_h = (g_hn - g_hn.mean(-1, keepdim=True)
           - hn * (g_hn * hn).mean(-1, keepdim=True)).mul_(rstd)       # through LayerNorm
    g_x = torch.stack([g @ W for g, W in zip(g_h.unbind(0), p["add1_weight"])])
    # weight gradients: sums over the N images of outer products, one batched product each
    per_level = {"add1_weight": torch.bmm(g_h.transpose(1, 2), x).unbind(0),
                 "add1_bias": g_h.sum(1).unbind(0), "norm_weight": (g_y * hn).sum(1).unbind(0),
                 "norm_bias": g_y.sum(1).unbind(0),
                 "add2_weight": torch.bmm(g_out.transpose(1, 2), r).unbind(0),
                 "add2_bias": g_out.sum(1).unbind(0)}
    grads = [per_level[PARAMS[k % len(PARAMS)]][k // len(PARAMS)].reshape(q.shape).to(q.dtype)
             for k, q in enumerate(params)]
    return g_x, grads
