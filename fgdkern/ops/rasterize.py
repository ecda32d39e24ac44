"""fgdkern.rasterize_boxes: the fg/bg masks of every level in one call (docs/fgd.md, "Masks from boxes").

Validates and packs per-image boxes into the op ``fgdkern::rasterize_boxes``
(csrc/cpu/rasterize.cpp, csrc/cuda/rasterize.cu), or into its PyTorch form
fgdkern.reference.masks; both give the same floats, bit for bit.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from fgdkern._device import host_to
from fgdkern._ext import HAS_EXT
from fgdkern.ops import dispatch
from fgdkern.reference.masks import rasterize_packed

if HAS_EXT:
    @torch.library.register_fake("fgdkern::rasterize_boxes")
    def _rasterize_boxes_fake(boxes, counts, img_shapes, level_sizes, wrap=False):
        out = []
        for H, W in zip(level_sizes[0::2], level_sizes[1::2]):
            fg = boxes.new_empty(counts.shape[0], H, W, dtype=torch.float32)
            out += [fg, torch.empty_like(fg)]
        return out


def _checking(t: Tensor, check_finite: bool) -> bool:
    """Whether to check the values of t (docs/fgd.md, "Validation"): in eager mode, when t
    is on the host (no sync) or when asked to (one host sync)."""
    return not torch.compiler.is_compiling() and (t.device.type == "cpu" or check_finite)


def _is_real(t: Tensor) -> bool:
    return not (t.dtype.is_complex or t.dtype == torch.bool)


def pack_boxes(gt_bboxes, check_finite: bool = False) -> tuple[Tensor, Tensor]:
    """gt_bboxes: N (K_n, 4) tensors -> boxes (sum K_n, 4) float32 and counts (N,) int64.

    The boxes are detached: the masks are piecewise constant in them."""
    if not isinstance(gt_bboxes, (list, tuple)):
        raise TypeError("gt_bboxes must be a list of N (K, 4) tensors, "
                        f"got {type(gt_bboxes).__name__}")
    if len(gt_bboxes) == 0:
        raise ValueError("gt_bboxes is an empty batch (N == 0)")
    for n, b in enumerate(gt_bboxes):
        if not isinstance(b, Tensor):
            raise TypeError(f"gt_bboxes[{n}] must be a torch.Tensor, got {type(b).__name__}")
        if not _is_real(b):
            raise TypeError(f"gt_bboxes[{n}] must have a real dtype, got {b.dtype}")
        if not ((b.dim() == 2 and b.shape[1] == 4) or b.shape == (0,)):
            raise ValueError(f"gt_bboxes[{n}] must be (K, 4) xyxy boxes, "
                             f"got shape {tuple(b.shape)}")
        if b.device != gt_bboxes[0].device:
            raise ValueError(f"gt_bboxes[{n}] is on {b.device} but gt_bboxes[0] is on "
                             f"{gt_bboxes[0].device}")
    boxes = torch.cat([b.detach().reshape(-1, 4).to(torch.float32) for b in gt_bboxes])
    if _checking(boxes, check_finite) and not bool(torch.isfinite(boxes).all()):
        raise ValueError("gt_bboxes contains non-finite coordinates (NaN or Inf)")
    # Valid by construction (non-negative, summing to the rows of boxes), so
    # the kernels' own checks never fire from here.
    counts = torch.tensor([b.numel() // 4 for b in gt_bboxes], dtype=torch.int64)
    return boxes, host_to(counts, boxes.device)


def _shape_row(n: int, hw) -> list:
    """img_shapes[n] -> [h, w] (numbers or 0-dim tensors)."""
    if isinstance(hw, Tensor):
        hw = hw.reshape(-1)
    if not isinstance(hw, (Sequence, Tensor)) or isinstance(hw, str) or len(hw) != 2:
        raise ValueError(f"img_shapes[{n}] must be a pair (h, w), got {hw!r}")
    for x in hw:
        if not (isinstance(x, numbers.Real) and not isinstance(x, bool)
                or isinstance(x, Tensor) and _is_real(x)):
            raise TypeError(f"img_shapes[{n}] must hold real numbers, got {type(x).__name__}")
    return list(hw)


def _is_number(x) -> bool:
    return (isinstance(x, numbers.Real) and not isinstance(x, bool)
            or isinstance(x, Tensor) and x.dim() == 0 and _is_real(x))


def _one_shape(img_shapes) -> bool:
    """One (h, w) for every image: two numbers, a torch.Size, or a 2-element 1-d tensor."""
    if isinstance(img_shapes, Tensor):
        return img_shapes.dim() == 1 and img_shapes.shape[0] == 2
    return (isinstance(img_shapes, (list, tuple)) and len(img_shapes) == 2
            and all(_is_number(x) for x in img_shapes))


def pack_image_shapes(img_shapes, N: int, device: torch.device,
                      check_finite: bool = False) -> Tensor:
    """A (N, 2) tensor, N (h, w) pairs, or one (h, w) for all -> (N, 2) float32 on ``device``."""
    if _one_shape(img_shapes):
        img_shapes = [img_shapes] * N
    if isinstance(img_shapes, Tensor):
        if not _is_real(img_shapes):
            raise TypeError(f"img_shapes must have a real dtype, got {img_shapes.dtype}")
        if img_shapes.dim() != 2 or img_shapes.shape[1] != 2:
            raise ValueError("img_shapes must be (N, 2) (h, w) rows, "
                             f"got shape {tuple(img_shapes.shape)}")
        rows = img_shapes
    elif isinstance(img_shapes, (list, tuple)):
        rows = [_shape_row(n, hw) for n, hw in enumerate(img_shapes)]
    else:
        raise TypeError(f"img_shapes must be a list of N (h, w) pairs, a (N, 2) tensor or one "
                        f"(h, w) for every image, got {type(img_shapes).__name__}")
    if len(rows) != N:
        raise ValueError(f"gt_bboxes has {N} images but img_shapes has {len(rows)}")
    if isinstance(rows, Tensor):
        shapes = rows.to(torch.float32)
    elif any(isinstance(x, Tensor) for row in rows for x in row):
        shapes = torch.stack([torch.stack([torch.as_tensor(x, device=device).to(torch.float32)
                                           for x in row]) for row in rows])
    else:
        shapes = torch.tensor(rows, dtype=torch.float32)
    if _checking(shapes, check_finite) and not bool((torch.isfinite(shapes) & (shapes > 0)).all()):
        raise ValueError(f"img_shapes must be positive and finite (h, w), got {shapes.tolist()}")
    return host_to(shapes, device)


def _positive_int(x) -> bool:
    return isinstance(x, (numbers.Integral, torch.SymInt)) and not isinstance(x, bool) and x > 0


def flat_level_sizes(level_sizes) -> list[int]:
    """[(H0, W0), (H1, W1), ...] -> [H0, W0, H1, W1, ...]."""
    if not isinstance(level_sizes, (list, tuple)):
        raise TypeError("level_sizes must be a list of (H, W) pairs, "
                        f"got {type(level_sizes).__name__}")
    flat = []
    for k, hw in enumerate(level_sizes):
        if not (isinstance(hw, Sequence) and len(hw) == 2 and all(_positive_int(x) for x in hw)):
            raise ValueError(f"level_sizes[{k}] must be a pair (H, W) of positive ints, got {hw!r}")
        flat += [int(hw[0]), int(hw[1])]
    return flat


BORDERS = ("clip", "wrap")


def check_border(border) -> bool:
    """border -> the op's ``wrap`` flag (docs/fgd.md, "Masks from boxes")."""
    if not (isinstance(border, str) and border in BORDERS):
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    return border == "wrap"


def rasterize_boxes(gt_bboxes, img_shapes, level_sizes, backend: str = "auto",
                    border: str = "clip", check_finite: bool = False
                    ) -> list[tuple[Tensor, Tensor]]:
    """The masks of every level (docs/fgd.md, "Masks from boxes"): one (fg, bg) pair of
    (N, H, W) float32 per level.

    gt_bboxes: N tensors (K_n, 4) xyxy pixels (K_n may be 0; a (0,) tensor also
    means no box), any real dtype, detached here; img_shapes: N (h, w) pairs, a
    (N, 2) tensor, or one (h, w) for every image (e.g. a padded batch's
    ``images.tensors.shape[-2:]``), the pixel extent the maps span;
    level_sizes: (H, W) per level.
    backend: "auto", "fused", "cpp" or "reference" (fgdkern.ops.dispatch: the
    compiled kernel of the boxes' device, or PyTorch). border: "clip" (the
    default) drops the cells outside the map; "wrap" paints each box like the
    Python slice ``mask[hmin:hmax + 1, wmin:wmax + 1]`` of the widely used FGD
    code, where a negative start counts from the far edge (docs/fgd.md,
    "Boxes across the top or left border"). The masks are on the boxes'
    device. Non-finite boxes and non-positive sizes raise ValueError when they
    are on the host, on any device with check_finite=True (docs/fgd.md,
    "Validation").
    """
    dispatch.check_backend("rasterize", backend)
    wrap = check_border(border)
    sizes = flat_level_sizes(level_sizes)
    boxes, counts = pack_boxes(gt_bboxes, check_finite)
    shapes = pack_image_shapes(img_shapes, len(gt_bboxes), boxes.device, check_finite)
    if dispatch.resolve("rasterize", backend, boxes.device) != "reference":
        flat = torch.ops.fgdkern.rasterize_boxes(boxes, counts, shapes, sizes, wrap)
    else:
        flat = rasterize_packed(boxes, counts, shapes, sizes, wrap)
    return list(zip(flat[0::2], flat[1::2]))
