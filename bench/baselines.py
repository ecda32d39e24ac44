"""Baselines the fused FGD is timed against; never imported by the package.

EagerLoopFGD is FGD of one level (docs/fgd.md) structured the way the widely
used public FGD code is: the fg mask painted by a Python loop over images and
boxes with slice assignments, bg derived from fg, eager attention, the
feature loss as a sum-MSE of attention-scaled features, the attention loss
and the GcBlock relation loss; EagerLoopMultiLevelFGD sums it over levels in
a Python loop. Parameter names match ``fgdkern.FGDLoss``, so state dicts load
both ways. ``compiled_reference`` wraps the package's reference module in
torch.compile.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgdkern import FGDLoss

# Every benchmark case and grad mode is one more static-shape graph of the same forward.
RECOMPILE_LIMIT = 64


def box_extents(boxes: Tensor, img_hw, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Boxes (K, 4) xyxy of an image of size img_hw -> (K, 4) int64 [wmin, hmin, wmax, hmax]
    (inclusive, unclipped) and the (K,) float32 scale values v (docs/fgd.md, "Masks from boxes", steps 1-3)."""
    h, w = (float(x) for x in img_hw)
    image = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
    level = torch.tensor([W, H, W, H], dtype=torch.float32, device=boxes.device)
    scaled = boxes.to(torch.float32) / image * level
    lo, hi = scaled[:, :2].floor().long(), scaled[:, 2:].ceil().long()
    area_h = (hi[:, 1] + 1 - lo[:, 1]).to(torch.float32)
    area_w = (hi[:, 0] + 1 - lo[:, 0]).to(torch.float32)
    v = torch.ones_like(area_h) / area_h / area_w
    return torch.cat([lo, hi], 1), v


def paint_masks(gt_bboxes, img_shapes, N: int, H: int, W: int, device) -> tuple[Tensor, Tensor]:
    """fg and bg (N, H, W) float32, one slice assignment per box (docs/fgd.md, "Masks from boxes", steps 4-6)."""
    fg = torch.zeros(N, H, W, dtype=torch.float32, device=device)
    bg = torch.ones(N, H, W, dtype=torch.float32, device=device)
    for i in range(N):
        extents, v = box_extents(gt_bboxes[i].reshape(-1, 4).to(device), img_shapes[i], H, W)
        for box, value in zip(extents, v):
            wmin, hmin, wmax, hmax = (int(x) for x in box)
            rows = slice(max(hmin, 0), max(hmax + 1, 0))
            cols = slice(max(wmin, 0), max(wmax + 1, 0))
            fg[i][rows, cols] = torch.maximum(fg[i][rows, cols], value)
        bg[i] = torch.where(fg[i] > 0, 0.0, 1.0)
        if bg[i].sum() > 0:
            bg[i] /= bg[i].sum()
    return fg, bg


def attention(feat: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """Spatial (N, H, W) and channel (N, C) attention, eqs. (5)-(8)."""
    N, C, H, W = feat.shape
    value = feat.abs()
    spatial = value.mean(dim=1).reshape(N, -1)
    spatial = (H * W * F.softmax(spatial / temp, dim=1)).reshape(N, H, W)
    channel = C * F.softmax(value.mean(dim=(2, 3)) / temp, dim=1)
    return spatial, channel


def feature_loss(S, T, fg, bg, spatial_t, channel_t) -> tuple[Tensor, Tensor]:
    """Sum-MSE of the features scaled by sqrt(mask * A_S^T * A_C^T), over the batch size."""
    N = S.shape[0]
    scale = (spatial_t[:, None] * channel_t[:, :, None, None]).sqrt()
    fea_s, fea_t = S * scale, T * scale
    losses = []
    for mask in (fg, bg):
        root = mask[:, None].sqrt()
        losses.append(F.mse_loss(fea_s * root, fea_t * root, reduction="sum") / N)
    return losses[0], losses[1]


class EagerLoopFGD(FGDLoss):
    """FGD of one level, eager and loop-painted. Its parameters, their names, initial
    values and hyper-parameters are fgdkern.FGDLoss's (it is built by that class); only
    the forward is written the way the widely used public code computes the loss."""

    def spatial_pool(self, x: Tensor, conv_mask: nn.Conv2d) -> Tensor:
        """GcBlock context (N, C, 1, 1): x pooled by softmax_ij(conv_mask(x))."""
        N, C, H, W = x.shape
        weights = F.softmax(conv_mask(x).reshape(N, 1, H * W), dim=2)
        return torch.matmul(x.reshape(N, 1, C, H * W), weights[..., None]).reshape(N, C, 1, 1)

    def relation_loss(self, S: Tensor, T: Tensor) -> Tensor:
        out_s = S + self.channel_add_conv_s(self.spatial_pool(S, self.conv_mask_s))
        out_t = T + self.channel_add_conv_t(self.spatial_pool(T, self.conv_mask_t))
        return F.mse_loss(out_s, out_t, reduction="sum") / S.shape[0]

    def forward(self, preds_S: Tensor, preds_T: Tensor, gt_bboxes, img_shapes) -> Tensor:
        if self.align is not None:
            preds_S = self.align(preds_S)
        dtype = torch.promote_types(preds_S.dtype, torch.float32)
        S, T = preds_S.to(dtype), preds_T.detach().to(dtype)
        N, _, H, W = S.shape
        spatial_s, channel_s = attention(S, self.temp)
        spatial_t, channel_t = attention(T, self.temp)
        fg, bg = paint_masks(gt_bboxes, img_shapes, N, H, W, S.device)
        fg_loss, bg_loss = feature_loss(S, T, fg.to(dtype), bg.to(dtype), spatial_t, channel_t)
        mask_loss = ((channel_s - channel_t).abs().sum() / N
                     + (spatial_s - spatial_t).abs().sum() / N)
        rela_loss = self.relation_loss(S, T)
        return (self.alpha_fgd * fg_loss + self.beta_fgd * bg_loss
                + self.gamma_fgd * mask_loss + self.lambda_fgd * rela_loss)


class EagerLoopMultiLevelFGD(nn.Module):
    """One EagerLoopFGD per level under ``levels.<k>.``, summed by a loop over levels."""

    def __init__(self, levels: list[EagerLoopFGD]):
        super().__init__()
        self.levels = nn.ModuleList(levels)

    @classmethod
    def like(cls, ms: nn.Module) -> "EagerLoopMultiLevelFGD":
        """The baseline with the hyper-parameters (each level its own) and parameter values
        of a fgdkern MultiLevelFGDLoss, on its device and in its dtype."""
        out = cls([EagerLoopFGD(m.student_channels, m.teacher_channels, temp=m.temp,
                                alpha_fgd=m.alpha_fgd, beta_fgd=m.beta_fgd,
                                gamma_fgd=m.gamma_fgd, lambda_fgd=m.lambda_fgd)
                   for m in ms.levels])
        param = next(ms.parameters())
        out.to(device=param.device, dtype=param.dtype).load_state_dict(ms.state_dict())
        return out

    def forward(self, feats_S, feats_T, gt_bboxes, img_shapes) -> Tensor:
        loss = 0.0
        for level, S, T in zip(self.levels, feats_S, feats_T):
            loss = loss + level(S, T, gt_bboxes, img_shapes)
        return loss


def compiled_reference(ms: nn.Module) -> nn.Module:
    """torch.compile of a backend='reference' MultiLevelFGDLoss, specialised to static
    shapes. Compilation happens at the first call, which raises where it cannot work
    (``compile_works`` tells whether it can work here at all)."""
    if ms.backend != "reference":
        raise ValueError(f"compiled_reference wants backend='reference', got {ms.backend!r}")
    return compiled(ms)


def compiled(module: nn.Module) -> nn.Module:
    """torch.compile of module for static shapes, compiled in this process."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    # Compile in this process: no pool of compile workers competing for the cores
    # while other implementations are timed.
    torch._inductor.config.compile_threads = 1
    return torch.compile(module, dynamic=False)


def compile_works() -> str | None:
    """None when torch.compile compiles and runs a tiny function here, else the reason."""
    try:
        torch._inductor.config.compile_threads = 1
        torch.compile(lambda x: (x.abs() * 2).sum(), dynamic=False)(torch.ones(8))
    except Exception as exc:  # no C++ compiler, unsupported Python, ...
        return f"torch.compile does not work here: {type(exc).__name__}: {exc}"
    return None
