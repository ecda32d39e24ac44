"""Boxes -> fg/bg masks (docs/fgd.md, "Masks from boxes") in pure PyTorch: the ground truth of the rasterizer.

Reads the packed boxes (sum K_n, 4) float32 xyxy pixels, counts (N,) int64,
img_shapes (N, 2) float32 (h, w), the level sizes and the border mode (clip,
or wrap like a Python slice); writes one (fg, bg) pair of (N, H, W) float32
maps per level. Every float is the one the C++ and
CUDA kernels produce: the same float32 operations in the same order.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Integer extents saturate at +-2^61 (a NaN maps to -2^61): far beyond any map,
# and every difference of two stays exact in int64. The kernels do the same.
INDEX_LIMIT = 2.0 ** 61
# Cells of the dense (boxes, H, W) comparison done at once (~16 MB of float32).
CHUNK_CELLS = 1 << 22


def to_index(x: Tensor) -> Tensor:
    """Integer-valued float32 -> int64, saturated at +-INDEX_LIMIT."""
    return x.nan_to_num(nan=-INDEX_LIMIT).clamp(-INDEX_LIMIT, INDEX_LIMIT).long()


def box_extents(boxes: Tensor, hw: Tensor, H: int, W: int) -> tuple[Tensor, ...]:
    """"Masks from boxes" steps 1-3 per box: inclusive unclipped extents hmin, hmax, wmin, wmax and v.

    boxes (K, 4) xyxy; hw (K, 2) the (h, w) of each box's image.
    """
    x1, y1, x2, y2 = boxes.unbind(1)
    h, w = hw.unbind(1)
    wmin, wmax = to_index((x1 / w * W).floor()), to_index((x2 / w * W).ceil())
    hmin, hmax = to_index((y1 / h * H).floor()), to_index((y2 / h * H).ceil())
    v = torch.ones_like(x1) / (hmax + 1 - hmin).float() / (wmax + 1 - wmin).float()
    return hmin, hmax, wmin, wmax, v


def slice_index(x: Tensor, n: int) -> Tensor:
    """A Python slice index on an axis of length n: negative counts from the end, then 0..n.

    x >= -INDEX_LIMIT, so x + n cannot overflow int64.
    """
    return torch.where(x < 0, (x + n).clamp(min=0), x.clamp(max=n))


def painted_span(lo: Tensor, hi: Tensor, n: int, wrap: bool) -> tuple[Tensor, Tensor]:
    """"Masks from boxes" step 4 on one axis: inclusive extent lo..hi -> painted cells first..last.

    Clipped to 0..n-1, or with wrap the slice [lo:hi + 1] of a Python sequence
    (docs/fgd.md, "Boxes across the top or left border"). Empty when first > last.
    """
    if wrap:
        return slice_index(lo, n), slice_index(hi + 1, n) - 1
    return lo.clamp(min=0), hi.clamp(max=n - 1)


def painted_cells(extents: tuple[Tensor, ...], H: int, W: int, wrap: bool) -> tuple[Tensor, ...]:
    """Extents hmin, hmax, wmin, wmax, v -> the painted rows r0..r1, columns c0..c1 and v."""
    hmin, hmax, wmin, wmax, v = extents
    return (*painted_span(hmin, hmax, H, wrap), *painted_span(wmin, wmax, W, wrap), v)


def paint_fg(image: Tensor, cells: tuple[Tensor, ...], N: int, H: int, W: int) -> Tensor:
    """"Masks from boxes" step 5: the largest v of the boxes painting each cell, 0 where none does.

    Reads each box's image index and painted cells (painted_cells); writes fg
    (N, H, W). Boxes are compared with every cell in chunks of about
    CHUNK_CELLS cells.
    """
    r0, r1, c0, c1, v = cells
    rows = torch.arange(H, device=v.device)
    cols = torch.arange(W, device=v.device)
    fg = v.new_zeros(N, H * W)
    step = max(1, CHUNK_CELLS // (H * W))
    for s in range(0, v.shape[0], step):
        k = slice(s, s + step)
        in_rows = (rows >= r0[k, None]) & (rows <= r1[k, None])  # [k, H]
        in_cols = (cols >= c0[k, None]) & (cols <= c1[k, None])  # [k, W]
        covered = in_rows[:, :, None] & in_cols[:, None, :]  # [k, H, W]
        values = torch.where(covered, v[k, None, None], 0.0).reshape(-1, H * W)
        fg.scatter_reduce_(0, image[k, None].expand_as(values), values, "amax")
    return fg.reshape(N, H, W)


def bg_from_fg(fg: Tensor) -> Tensor:
    """"Masks from boxes" step 6: 1 / N_bg on the cells where fg == 0 (all zero when N_bg == 0)."""
    empty = fg == 0
    n_bg = empty.sum((1, 2)).float()
    inv = torch.ones_like(n_bg) / n_bg
    return torch.where(empty, inv[:, None, None], 0.0)


def rasterize_packed(boxes: Tensor, counts: Tensor, img_shapes: Tensor,
                     level_sizes: list[int], wrap: bool = False) -> list[Tensor]:
    """The op ``fgdkern::rasterize_boxes`` in PyTorch: [fg0, bg0, fg1, bg1, ...].

    level_sizes is flat: [H0, W0, H1, W1, ...]; wrap: paint like a Python
    slice instead of clipping. Inputs as the op takes them (no validation
    here; fgdkern.rasterize_boxes validates).
    """
    N = counts.shape[0]
    image = torch.repeat_interleave(torch.arange(N, device=boxes.device), counts,
                                    output_size=boxes.shape[0])
    hw = img_shapes[image]
    out = []
    for H, W in zip(level_sizes[0::2], level_sizes[1::2]):
        fg = paint_fg(image, painted_cells(box_extents(boxes, hw, H, W), H, W, wrap), N, H, W)
        out += [fg, bg_from_fg(fg)]
    return out
