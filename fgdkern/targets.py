"""Adapters: detector-library targets -> (gt_bboxes, img_shapes) for the losses (docs/integrations.md).

gt_bboxes is a list of N float32 (K_n, 4) xyxy pixel boxes; img_shapes a list
of N (h, w): the pixel extent the feature maps span. The caller says which
extent: the padded batch (what the maps really span) or the unpadded image
(what the widely used FGD code passed; see docs/fgd.md, "Padded batches").
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def _hw(shape, name: str) -> tuple[int, int]:
    if isinstance(shape, Tensor):
        shape = shape.tolist()
    if not isinstance(shape, Sequence) or len(shape) < 2:
        raise ValueError(f"{name} must hold (h, w, ...), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) or isinstance(x, Tensor) and x.dim() == 0


def drop_padding(boxes: Tensor) -> Tensor:
    """Drop all-zero rows of a padded (K, 4) box tensor (they would paint cell (0, 0))."""
    return boxes[(boxes != 0).any(1)] if boxes.numel() else boxes.reshape(0, 4)


def from_torchvision(targets: Sequence[Mapping], image_sizes) -> tuple[list, list]:
    """torchvision targets (list of dicts with "boxes", xyxy pixels).

    image_sizes: one (h, w) for every image (e.g. ``images.tensors.shape[-2:]``,
    the padded batch) or a list of N (h, w) (e.g. ``images.image_sizes``).
    """
    if not isinstance(targets, Sequence) or not all(isinstance(t, Mapping) for t in targets):
        raise TypeError("targets must be a list of dicts with a 'boxes' entry")
    if any("boxes" not in t for t in targets):
        raise ValueError("targets: every dict needs a 'boxes' entry")
    boxes = [t["boxes"].float().reshape(-1, 4) for t in targets]
    sizes = list(image_sizes)
    if len(sizes) == 2 and all(_is_number(x) for x in sizes):
        shapes = [_hw(sizes, "image_sizes")] * len(boxes)
    else:
        shapes = [_hw(s, "image_sizes") for s in sizes]
    if len(shapes) != len(boxes):
        raise ValueError(f"image_sizes has {len(shapes)} entries for {len(boxes)} targets")
    return boxes, shapes


def from_mmdet(gt_bboxes: Sequence[Tensor], img_metas: Sequence[Mapping], shape_key: str):
    """mmdet-style per-image box tensors and image metas.

    shape_key: which meta entry is the extent: "batch_input_shape" or "pad_shape"
    (the padded batch) or "img_shape" (what the widely used FGD code used).
    Padding rows (all zero) of the box tensors are dropped.
    """
    if len(gt_bboxes) != len(img_metas):
        raise ValueError(f"gt_bboxes has {len(gt_bboxes)} images, img_metas {len(img_metas)}")
    if any(shape_key not in m for m in img_metas):
        raise ValueError(f"img_metas: every meta needs the entry {shape_key!r}")
    boxes = [drop_padding(b.float().reshape(-1, 4)) for b in gt_bboxes]
    return boxes, [_hw(m[shape_key], f"img_metas[{shape_key!r}]") for m in img_metas]


def from_ultralytics(batch: Mapping) -> tuple[list, list]:
    """An Ultralytics batch: "img" (N, 3, H, W), "batch_idx" (M,), "bboxes" (M, 4)
    normalised xywh. Boxes are scaled to the (letterboxed) input size H x W."""
    for key in ("img", "batch_idx", "bboxes"):
        if key not in batch:
            raise ValueError(f"batch needs the entry {key!r}")
    N, (H, W) = batch["img"].shape[0], batch["img"].shape[-2:]
    idx, xywh = batch["batch_idx"].long().reshape(-1), batch["bboxes"].float().reshape(-1, 4)
    if idx.numel() != xywh.shape[0]:
        raise ValueError(f"batch: {idx.numel()} batch_idx entries for {xywh.shape[0]} bboxes")
    if idx.numel() and (idx.min() < 0 or idx.max() >= N):
        raise ValueError(f"batch: batch_idx must lie in [0, {N}), the batch size")
    scale = xywh.new_tensor([W, H, W, H])
    cx, cy, w, h = (xywh * scale).unbind(1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    order = torch.argsort(idx, stable=True)
    counts = torch.bincount(idx, minlength=N).tolist()
    boxes = [drop_padding(b) for b in xyxy[order].split(counts)]
    return boxes, [(int(H), int(W))] * N
