"""Tiles of feature maps: how a kernel addresses, loads, stores and reduces them.

Reads and writes nothing by itself: these are the device functions (and the
host choice of LAYOUT and tile shape) that every pass kernel uses on its
(N, C, H, W) feature maps.

A block is BLOCK_HW consecutive pixels of one image, held as a [ROWS, SECTOR]
grid of pixels (SECTOR pixels are 32 bytes of one channel in NCHW); a tile is
[ROWS, BLOCK_C, SECTOR]: each thread keeps ROWS pixels of its channels, so
most of each sum over pixels is in-thread rather than a shuffle across lanes.
Tiles are loaded and stored flat, [ROWS * BLOCK_C, SECTOR] (tile_grid), and
reshaped for the math: the compiler gives lanes to the axis whose offsets it
can prove contiguous, and the flat form leaves it one candidate, whatever the
Triton version's tie-breaking. A launch passes LAYOUT: PIX_DENSE (the offset
of pixel p is p, as in NCHW: lanes read 32-byte sectors of several channels),
CHANNELS_DENSE (channel stride 1, channels_last: lanes span channels and a
thread holds every pixel of its channel), or GENERAL (other views: correct,
with lanes where the compiler's defaults put them).

A view of a feature map is five int64 values: its element offset from a base
pointer of its dtype, then its strides of n, c, h, w (see levels.py).

Aligned levels. Where the host has checked that every offset and stride along
which a thread's pixels (PIX_DENSE) or channels (CHANNELS_DENSE) are
contiguous is a multiple of ALIGN (16 bytes of the dtype), and so is the
extent the masks test along that axis, a program runs its level with the
constexpr ALIGN and the kernels write those values as x // ALIGN * ALIGN: the
same numbers, in a form from which the compiler sees their divisibility and
loads and stores 16-byte vectors (docs/gpu.md, "Aligned levels").
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import torch
import triton
import triton.language as tl
from torch import Tensor

GENERAL = tl.constexpr(0)  # LAYOUT of the feature maps of a launch, see image_tile
PIX_DENSE = tl.constexpr(1)
CHANNELS_DENSE = tl.constexpr(2)

# (BLOCK_C, BLOCK_HW, SECTOR) by (float32, LAYOUT == CHANNELS_DENSE): tiles of 1024
# elements, 8 per thread, which compile without register spills. Channels-dense tiles
# are 32 pixels deep: a block reads and writes its per-channel partial rows once per
# channel chunk whatever its pixel count, so that traffic is rows / (2 * BLOCK_HW) of
# the feature bytes it reads (half of them at 8 pixels, an eighth at 32).
TILE_SHAPES = {(True, False): (32, 32, 8), (False, False): (16, 64, 16),
               (True, True): (32, 32, 8), (False, True): (32, 32, 8)}
# GENERAL views address every element through both strides: the 1024-element tiles
# spill on sm_90 (python -m tests.triton.offline), tiles of 512 do not.
GENERAL_TILE = (32, 16, 8)
# Channel chunks in flight in the channel loops of aligned levels and GENERAL views
# (tl.range's num_stages; the other levels take 1): the tiles of the next chunk are
# copied to shared memory (cp.async) while this one's math runs, so a program has twice
# the bytes in flight that its registers alone hold. Three stages make the float32 FGD
# kernels spill on sm_90; two spill nowhere (docs/gpu.md, "Offline compile").
STAGES = tl.constexpr(2)


def choose_layout(views: list[Tensor]) -> int:
    """The LAYOUT of image_tile that holds for every view."""
    def pix_dense(x):
        N, C, H, W = x.shape
        return (W == 1 or x.stride(3) == 1) and (H == 1 or x.stride(2) == W)
    if all(x.stride(1) == 1 or x.shape[1] == 1 for x in views):
        return CHANNELS_DENSE.value
    if all(pix_dense(x) for x in views):
        return PIX_DENSE.value
    return GENERAL.value


def launch_align(dtype: torch.dtype, layout: int) -> int:
    """The ALIGN of the aligned levels of a launch: elements in 16 bytes, or 1 for GENERAL views
    (whose contiguous axis, if any, the kernels do not know)."""
    return 1 if layout == GENERAL.value else 16 // dtype.itemsize


def level_aligned(maps: list[Tensor], offsets: list[int], layout: int, align: int) -> bool:
    """Whether every map of one level (element offsets from its launch's bases) has the offsets,
    strides and extent along its contiguous axis that its kernels may write as multiples of
    align (see image_tile and extents). A stride of a dimension of size 1 never multiplies a
    valid index, so it is not checked."""
    def multiple(size, stride):
        return size == 1 or stride % align == 0
    for x, off in zip(maps, offsets):
        N, C, H, W = x.shape
        sn, sc, sh, sw = x.stride()
        ok = off % align == 0 and multiple(N, sn)
        if layout == PIX_DENSE.value:
            ok = ok and multiple(C, sc) and (H * W) % align == 0
        elif layout == CHANNELS_DENSE.value:
            ok = ok and multiple(H, sh) and multiple(W, sw) and C % align == 0
        else:
            ok = False
        if not ok:
            return False
    return True


def tile_shape(dtype: torch.dtype, layout: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_HW, SECTOR) of feature maps of dtype in layout."""
    if layout == GENERAL.value:
        return GENERAL_TILE
    return TILE_SHAPES[dtype == torch.float32, layout == CHANNELS_DENSE.value]


@triton.jit
def block_pixels(b, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Pixels of block b as a [BLOCK_HW // SECTOR, SECTOR] grid of int32 indices."""
    grid = tl.arange(0, BLOCK_HW // SECTOR)[:, None] * SECTOR + tl.arange(0, SECTOR)[None, :]
    return (b * BLOCK_HW + grid).to(tl.int32)


@triton.jit
def tile_grid(b, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Channel [ROWS * BLOCK_C, 1] and pixel [ROWS * BLOCK_C, SECTOR] of every element of a
    tile of block b as it is loaded: flat, row r * BLOCK_C + c holding channel c at pixels
    r * SECTOR + (0..SECTOR-1) of the block. Loads and stores use this 2-D form, in which
    the only contiguous axis the compiler can see is the one it should give to lanes;
    the math reshapes it to [ROWS, BLOCK_C, SECTOR] (the same registers)."""
    i = tl.arange(0, BLOCK_HW // SECTOR * BLOCK_C)
    pix = (b * BLOCK_HW + (i // BLOCK_C) * SECTOR)[:, None] + tl.arange(0, SECTOR)[None, :]
    return (i % BLOCK_C)[:, None], pix.to(tl.int32)


@triton.jit
def block_grids(b, HW, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Block b of a map of HW pixels: its pixels p [ROWS, SECTOR] and their mask, and the
    channel, pixel and pixel mask of its flat tile grid (tile_grid)."""
    p = block_pixels(b, BLOCK_HW, SECTOR)
    tile_c, tile_p = tile_grid(b, BLOCK_C, BLOCK_HW, SECTOR)
    return p, p < HW, tile_c, tile_p, tile_p < HW


@triton.jit
def aligned(x, ALIGN: tl.constexpr):
    """x, a multiple of ALIGN (checked on the host: level_aligned), written so that the
    compiler knows it is one."""
    return x // ALIGN * ALIGN


@triton.jit
def extents(C, HW, LAYOUT: tl.constexpr, ALIGN: tl.constexpr):
    """A level's C and H * W as its masks test them: the extent along the contiguous axis
    is a multiple of ALIGN, so a vector of ALIGN elements is all inside or all outside."""
    if LAYOUT == PIX_DENSE:
        HW = aligned(HW, ALIGN)
    if LAYOUT == CHANNELS_DENSE:
        C = aligned(C, ALIGN)
    return C, HW


@triton.jit
def image_tile(base, view, n, tile_c, tile_p, W, LAYOUT: tl.constexpr, ALIGN: tl.constexpr):
    """Image n of the feature map whose view (offset, strides) is at pointer view.

    Returns a pointer to its channel 0, the int32 offsets of the flat tile
    (tile_grid) from the tile's first channel, and the channel stride. LAYOUT
    (the same for every view of a launch) says which offsets are contiguous:
    PIX_DENSE, the offset of pixel p is p (NCHW); CHANNELS_DENSE, the channel
    stride is 1 (channels_last); GENERAL, any strides. ALIGN: the level's
    offsets and strides along the contiguous axis are its multiples.
    """
    image = base + aligned(tl.load(view) + n * tl.load(view + 1), ALIGN)
    sc = tl.load(view + 2)
    if LAYOUT == PIX_DENSE:
        pix = tile_p
        sc = aligned(sc, ALIGN)
    else:
        sh = aligned(tl.load(view + 3), ALIGN).to(tl.int32)
        sw = aligned(tl.load(view + 4), ALIGN).to(tl.int32)
        pix = (tile_p // W) * sh + (tile_p % W) * sw
    if LAYOUT == CHANNELS_DENSE:
        c_off = tile_c
    else:
        c_off = tile_c * sc.to(tl.int32)
    return image, c_off + pix, sc


@triton.jit
def tile_mask(tile_c, tile_in, c0, C):
    """Flat-tile mask of channels c0.., tile_in marking the pixels inside the map."""
    return (tile_c < C - c0) & tile_in


@triton.jit
def load_tile(image, tile, sc, c0, mask,
              BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """[ROWS, BLOCK_C, SECTOR] float32 tile of channels c0.. of an image, zero outside it."""
    x = tl.load(image + c0 * sc + tile, mask=mask, other=0.0).to(tl.float32)
    return tl.reshape(x, [BLOCK_HW // SECTOR, BLOCK_C, SECTOR])


@triton.jit
def store_tile(image, tile, sc, c0, mask, x,
               BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """Stores a [ROWS, BLOCK_C, SECTOR] tile as channels c0.. of an image, in its dtype."""
    x = tl.reshape(x, [BLOCK_HW // SECTOR * BLOCK_C, SECTOR])
    tl.store(image + c0 * sc + tile, x.to(image.dtype.element_ty), mask=mask)


@triton.jit
def per_pixel(v):
    """[ROWS, SECTOR] -> [ROWS, 1, SECTOR], broadcast over channels."""
    return v[:, None, :]


@triton.jit
def per_channel(v):
    """[BLOCK_C] -> [1, BLOCK_C, 1], broadcast over pixels."""
    return v[None, :, None]


@triton.jit
def sign(x):
    """sign(x) as float32 -1, 0 or 1 (as torch.sign: sign(0) = sign(-0) = 0)."""
    return (x > 0).to(tl.float32) - (x < 0).to(tl.float32)


@triton.jit
def channel_row(row, c, c_mask):
    """Values row[c] of a per-channel row, broadcast over pixels: [1, BLOCK_C, 1]."""
    return per_channel(tl.load(row + c, mask=c_mask, other=0.0))


@triton.jit
def pixel_row(row, p, p_mask):
    """Values row[p] of a per-pixel row at a block's pixels, broadcast over channels:
    [ROWS, 1, SECTOR]."""
    return per_pixel(tl.load(row + p, mask=p_mask, other=0.0))


@triton.jit
def sum_pixels(x):
    """[ROWS, BLOCK_C, SECTOR] -> [BLOCK_C], summing the in-thread ROWS axis first."""
    return tl.sum(tl.sum(x, 0), 1)


@triton.jit
def block_sum(v):
    """[ROWS, SECTOR] -> scalar."""
    return tl.sum(tl.sum(v, 1), 0)


@triton.jit
def sum_channels(x, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """[ROWS, BLOCK_C, SECTOR] -> [ROWS, SECTOR], summing the channels as a pairwise tree
    (channel c with c + BLOCK_C / 2, and so on): a reduction whose rounding does not grow
    with BLOCK_C, in whatever order tl.sum would take (docs/kernels.md, "Precision")."""
    tl.static_assert(BLOCK_C <= 4096)
    for i in tl.static_range(12):  # log2(BLOCK_C) halvings
        if (BLOCK_C >> i) > 1:
            x = tl.sum(tl.reshape(x, [BLOCK_HW // SECTOR, 2, x.shape[1] // 2, SECTOR]), 1)
    return tl.reshape(x, [BLOCK_HW // SECTOR, SECTOR])
