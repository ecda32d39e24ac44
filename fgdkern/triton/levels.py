"""Levels of a feature pyramid in one launch: the level table and the split into runs.

Reads the caller's per-level tensors; writes the int64 level table that every
main and combine kernel reads, and allocates the float32 workspace.

Levels in one launch. A per-level int64 table (columns COL_*) holds program
ranges, sizes, and for every tensor its element offset from a base pointer of
the same dtype, plus its strides: the bases are level 0's S and T (and of an
output shaped like them) and the float32 workspace, from which every float32
input and output is addressed. So S and T may have any strides (offsets
inside one image are int32) and every level its own shape. The common columns
come first; a pass adds its own after them (extra_columns). Levels of
different dtypes get one launch each (per_dtype). S and T are the columns'
names, not a loss's: a pass over another pair of maps (the imitation
passes' X and Y) puts them there and names them in its errors (check_features).

Blocks and runs. A block is BLOCK_HW consecutive pixels of one image of one
level. A main-kernel program takes a run of BLOCKS_PER_PROG consecutive blocks
of one (level, image); the run length is chosen per launch for about
PROGRAMS_PER_SM programs per SM. Bounding the number of programs bounds the
bytes read between a tile's two reads within a block (programs * BLOCK_HW * C
* 2 elements: ~17 MB for 264 programs at 256 channels, well inside an H100's
50 MB L2), and one set of partial rows per run rather than per block keeps the
workspace small. A combine kernel then merges the runs in a fixed order. The
split depends on the SM count, so devices with different SM counts may differ
in the last bits.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import functools
import math
import os
import struct
from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern._device import device_values, on_device  # noqa: F401  (kernels import them here)
from fgdkern.triton.tiles import STAGES, choose_layout, launch_align, level_aligned, tile_shape

# A combine program merges every run of one channel block, one warp, a channel per
# lane: at C = 256 that is 8 programs per image (or level) rather than 2 of 128
# channels, so the serial walk over the runs is spread over 4x as many SMs.
COMBINE_BLOCK_C = 32
COMBINE_WARPS = 1
MIN_LEVELS = 8  # the LEVELS constexpr of a launch of up to this many levels
# Launch-time ints Triton must not specialise on (value 1, multiples of 16): a new level
# count or image size would compile a new variant mid-run. For @triton.jit(do_not_specialize=).
RUNTIME_INTS = ["L", "BLOCKS_PER_PROG"]
NUM_WARPS = 4
PROGRAMS_PER_SM = 2
# Registers a main-kernel thread may use: a launch has PROGRAMS_PER_SM programs of NUM_WARPS
# warps per SM, so it may take its share of an SM's 65536 (at most 255). Without this
# bound ptxas may trade spills for an occupancy the launch never uses (docs/gpu.md,
# "Offline compile").
MAX_REGISTERS = min(255, 65536 // (PROGRAMS_PER_SM * NUM_WARPS * 32))
INTERPRETER_PROGRAMS = 4  # without CUDA: few programs, so that runs of several blocks are exercised
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Common columns of the level table. A view of a feature map takes VIEW_COLS
# columns: its element offset from the base, then its strides of n, c, h, w.
VIEW_COLS = 5
COL_PROG0 = tl.constexpr(0)   # first main-kernel program of the level
COL_NSPLIT = tl.constexpr(1)  # main-kernel programs (runs of blocks) per image
COL_COMB0 = tl.constexpr(2)   # first combine-kernel program of the level
COL_N = tl.constexpr(3)
COL_C = tl.constexpr(4)
COL_HW = tl.constexpr(5)
COL_W = tl.constexpr(6)
COL_ALIGNED = tl.constexpr(7)  # 1 if the level runs with the launch's ALIGN (tiles.level_aligned)
COL_S = tl.constexpr(8)       # view of S
COL_T = tl.constexpr(COL_S.value + VIEW_COLS)  # view of T
COL_PART = tl.constexpr(COL_T.value + VIEW_COLS)  # workspace offset of the level's partial rows


def extra_columns(count: int) -> list:
    """Constexpr indices of count columns of a pass, after the common ones."""
    return [tl.constexpr(COL_PART.value + 1 + k) for k in range(count)]


def row_indices(rows, *names: str) -> list:
    """Constexpr indices of the named rows of a statistic table (fgdkern.rows.Rows), in the
    order named, then the table's row count: module globals a kernel may read."""
    return [tl.constexpr(getattr(rows, name)) for name in names] + [tl.constexpr(len(rows))]


# ------------------------------------------------------------------ in kernels
@triton.jit
def find_level(table, pid, L, col, NCOL: tl.constexpr, LEVELS: tl.constexpr):
    """Row of the level whose programs (first program in column col) contain pid."""
    lvl = tl.arange(0, LEVELS)
    first = tl.load(table + lvl * NCOL + col, mask=lvl < L, other=0)
    found = tl.sum(((lvl < L) & (first <= pid)).to(tl.int32), 0) - 1
    return table + found * NCOL


@triton.jit
def program_run(table, L, BLOCKS_PER_PROG, NCOL: tl.constexpr, LEVELS: tl.constexpr,
                BLOCK_HW: tl.constexpr):
    """This program's level row, index within the level, image and block range."""
    pid = tl.program_id(0)
    lv = find_level(table, pid, L, COL_PROG0, NCOL, LEVELS)
    prog = pid - tl.load(lv + COL_PROG0)
    nsplit = tl.load(lv + COL_NSPLIT)
    n_blocks = tl.cdiv(tl.load(lv + COL_HW), BLOCK_HW)
    blk_lo = (prog % nsplit) * BLOCKS_PER_PROG
    blk_hi = tl.minimum(blk_lo + BLOCKS_PER_PROG, n_blocks)
    return lv, prog, prog // nsplit, blk_lo, blk_hi


@triton.jit
def level_is_aligned(lv):
    """Whether the level's programs run with the launch's ALIGN (tiles.level_aligned)."""
    return tl.load(lv + COL_ALIGNED) != 0


@triton.jit
def run_blocks(RUN: tl.constexpr, lv, prog, n, blk_lo, blk_hi, S, T, OUT, f32,
               LAYOUT: tl.constexpr, ALIGN: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_HW: tl.constexpr, SECTOR: tl.constexpr):
    """A main kernel's program: RUN(lv, prog, n, blk_lo, blk_hi, S, T, OUT, f32, LAYOUT,
    align, stages, BLOCK_C, BLOCK_HW, SECTOR) on its run of blocks (OUT: the output map, or
    None). An aligned level runs with ALIGN and pipelined channel loops (tiles.py, "Aligned
    levels"); another with an address per element and one stage, as two pipelined paths
    would spill; a launch of GENERAL views (ALIGN 1) has the one path."""
    if ALIGN == 1:
        RUN(lv, prog, n, blk_lo, blk_hi, S, T, OUT, f32,
            LAYOUT, 1, STAGES, BLOCK_C, BLOCK_HW, SECTOR)
    elif level_is_aligned(lv):
        RUN(lv, prog, n, blk_lo, blk_hi, S, T, OUT, f32,
            LAYOUT, ALIGN, STAGES, BLOCK_C, BLOCK_HW, SECTOR)
    else:
        RUN(lv, prog, n, blk_lo, blk_hi, S, T, OUT, f32, LAYOUT, 1, 1, BLOCK_C, BLOCK_HW, SECTOR)


@triton.jit
def level_shape(lv):
    """C, H * W and W of a level."""
    return tl.load(lv + COL_C), tl.load(lv + COL_HW), tl.load(lv + COL_W).to(tl.int32)


@triton.jit
def image_channel_block(table, L, NCOL: tl.constexpr, LEVELS: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """A combine program that owns BLOCK_C channels of one image (a level's combine programs,
    from COL_COMB0, take its images in turn, each as cdiv(C, BLOCK_C) channel blocks; see
    image_channel_blocks): its level row, image n, channels c [BLOCK_C] and their mask, and
    the image's runs, main-kernel programs first .. first + nsplit - 1 of the level."""
    pid = tl.program_id(0)
    lv = find_level(table, pid, L, COL_COMB0, NCOL, LEVELS)
    C = tl.load(lv + COL_C)
    local = pid - tl.load(lv + COL_COMB0)
    n_cblocks = tl.cdiv(C, BLOCK_C)
    n = local // n_cblocks
    c = (local % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    nsplit = tl.load(lv + COL_NSPLIT)
    return lv, n, c, c < C, n * nsplit, nsplit


@triton.jit
def level_channel_block(table, L, NCOL: tl.constexpr, LEVELS: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """A combine program that owns BLOCK_C channels of a whole level (level_channel_blocks):
    its level row, channels c [BLOCK_C] and their mask, and the count of the level's runs,
    main-kernel programs 0 .. N * nsplit - 1 of the level, image by image."""
    pid = tl.program_id(0)
    lv = find_level(table, pid, L, COL_COMB0, NCOL, LEVELS)
    c = (pid - tl.load(lv + COL_COMB0)) * BLOCK_C + tl.arange(0, BLOCK_C)
    return lv, c, c < tl.load(lv + COL_C), tl.load(lv + COL_N) * tl.load(lv + COL_NSPLIT)


# ------------------------------------------------------------------ argument checks
def check_features(S: list[Tensor], T: list[Tensor], names: tuple[str, str] = ("S", "T")) -> None:
    """S and T: one non-empty (N, C, H, W) map each per level, of one supported dtype, shape
    and device. names: what errors call the two lists (a pass may name its maps otherwise)."""
    a, b = names
    if len(S) == 0 or len(S) != len(T):
        raise ValueError(f"{a} and {b} must be lists of one tensor per level, got {len(S)} and "
                         f"{len(T)}")
    device = S[0].device
    for k, (s, t) in enumerate(zip(S, T)):
        for name, x in ((f"{a}[{k}]", s), (f"{b}[{k}]", t)):
            if x.dim() != 4 or x.numel() == 0:
                raise ValueError(f"{name} must be a non-empty (N, C, H, W) tensor, got shape "
                                 f"{tuple(x.shape)}")
            if x.device != device:
                raise ValueError(f"{name} is on {x.device}, {a}[0] is on {device}")
        if s.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{a}[{k}] must be float32, float16 or bfloat16, got {s.dtype}")
        if t.dtype != s.dtype:
            raise TypeError(f"{b}[{k}] is {t.dtype} but {a}[{k}] is {s.dtype}: they must match")
        if t.shape != s.shape:
            raise ValueError(f"{b}[{k}] has shape {tuple(t.shape)}, {a}[{k}] {tuple(s.shape)}")


def float32_levels(name: str, xs: list[Tensor], shapes: list[tuple], device,
                   maps: str = "S") -> list[Tensor]:
    """xs, checked to be float32 of shapes[k] on device, contiguous (maps: what errors call
    the feature maps the shapes come from)."""
    if len(xs) != len(shapes):
        raise ValueError(f"{name} has {len(xs)} levels, {maps} has {len(shapes)}")
    for k, (x, shape) in enumerate(zip(xs, shapes)):
        if x.dtype != torch.float32:
            raise TypeError(f"{name}[{k}] must be float32, got {x.dtype}")
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}[{k}] must have shape {shape}, got {tuple(x.shape)}")
        if x.device != device:
            raise ValueError(f"{name}[{k}] is on {x.device}, {maps}[0] is on {device}")
    return [x.contiguous() for x in xs]


def _as_float32(v: float) -> float:
    """v rounded to float32 on the host (a tensor would cost an op per call)."""
    try:
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        return math.inf


def positive_levels(name: str, values, levels: int) -> list[float]:
    """values as floats, checked to be one positive number per level, finite in float32
    (the precision the kernels read them in)."""
    try:
        floats = [float(v) for v in values]
        ok = len(floats) == levels and all(0 < _as_float32(v) < math.inf for v in floats)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must hold one positive finite number per level ({levels} "
                         f"levels), got {values!r}")
    return floats


def check_int32_spans(xs: list[Tensor], block_c: int) -> None:
    """Offsets inside one image are int32 in the kernels."""
    for x in xs:
        N, C, H, W = x.shape
        span = (max(C, block_c) - 1) * x.stride(1) + (H - 1) * x.stride(2) + (W - 1) * x.stride(3)
        if span >= 2 ** 31:
            raise ValueError(f"one image of a {tuple(x.shape)} feature map spans {span} elements; "
                             "the Triton kernels address at most 2**31 - 1 within an image")


# ------------------------------------------------------------------ launches
def offset(x: Tensor, base: Tensor) -> int:
    """Element offset of x from base (same dtype, any allocation)."""
    q, r = divmod(x.data_ptr() - base.data_ptr(), x.element_size())
    if r:
        raise ValueError(f"a tensor of dtype {x.dtype} is not aligned to its element size")
    return q


def view(x: Tensor, base: Tensor) -> list[int]:
    """The VIEW_COLS columns of x: offset from base, then strides."""
    return [offset(x, base), *x.stride()]


def _starts(counts: list[int]) -> list[int]:
    return [sum(counts[:k]) for k in range(len(counts))]


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _has_maxnreg() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "maxnreg" in getattr(CUDAOptions, "__dataclass_fields__", {})


def _register_bound(device: torch.device) -> dict:
    """maxnreg=MAX_REGISTERS for a launch on an NVIDIA GPU, where this Triton has the option."""
    nvidia = device.type == "cuda" and torch.version.hip is None
    return {"maxnreg": MAX_REGISTERS} if nvidia and _has_maxnreg() else {}


def _target_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return PROGRAMS_PER_SM * _sm_count(index)


def image_channel_blocks(S: list[Tensor]) -> list[int]:
    """Combine programs per level when each takes COMBINE_BLOCK_C channels of one image."""
    return [s.shape[0] * triton.cdiv(s.shape[1], COMBINE_BLOCK_C) for s in S]


def level_channel_blocks(S: list[Tensor]) -> list[int]:
    """Combine programs per level when each takes COMBINE_BLOCK_C channels of every image."""
    return [triton.cdiv(s.shape[1], COMBINE_BLOCK_C) for s in S]


class Launch:
    """One launch over levels of one dtype: tile shape, and runs of whole pixel blocks
    (nsplit[l] per image of level l), one main-kernel program per run."""

    def __init__(self, S: list[Tensor], T: list[Tensor], outputs: list[list[Tensor]],
                 programs: Optional[int]):
        """outputs: the other feature maps the main kernel addresses, one list per output
        shaped like S, each addressed from its level 0's."""
        self.S, self.T = S, T
        self.maps = [S, T, *outputs]
        views = [x for xs in self.maps for x in xs]
        self.layout = choose_layout(views)
        self.block_c, self.block_hw, self.sector = tile_shape(S[0].dtype, self.layout)
        self.align = launch_align(S[0].dtype, self.layout)
        check_int32_spans(views, self.block_c)
        blocks = [triton.cdiv(s.shape[2] * s.shape[3], self.block_hw) for s in S]
        target = programs or _target_programs(S[0].device)
        self.blocks_per_prog = triton.cdiv(sum(s.shape[0] * b for s, b in zip(S, blocks)), target)
        self.nsplit = [triton.cdiv(b, self.blocks_per_prog) for b in blocks]
        self.level_programs = [s.shape[0] * k for s, k in zip(S, self.nsplit)]
        self.programs = sum(self.level_programs)
        # One compiled variant for any pyramid of up to MIN_LEVELS levels (docs/gpu.md,
        # "Launches on a GPU").
        self.levels = max(MIN_LEVELS, triton.next_power_of_2(len(S)))

    def workspace(self, part_rows: int, head: int = 0) -> tuple[Tensor, list[int]]:
        """The float32 workspace: head values, then part_rows partial rows of C values per
        main-kernel program; and the offset of each level's first partial rows."""
        counts = [k * part_rows * s.shape[1] for k, s in zip(self.level_programs, self.S)]
        ws = torch.empty(head + sum(counts), dtype=torch.float32, device=self.S[0].device)
        return ws, [head + k for k in _starts(counts)]

    def table(self, ncol, comb_counts: list[int], part0: list[int], extra) -> Tensor:
        """The level table: common columns COL_PROG0..COL_PART, then each level's extra columns."""
        prog0, comb0 = _starts(self.level_programs), _starts(comb_counts)
        rows = []
        for l, (s, t) in enumerate(zip(self.S, self.T)):
            N, C, H, W = s.shape
            rows.append([prog0[l], self.nsplit[l], comb0[l], N, C, H * W, W, self.aligned(l),
                         *view(s, self.S[0]), *view(t, self.T[0]), part0[l], *extra[l]])
        assert all(len(row) == ncol for row in rows)
        return device_values(rows, torch.int64, self.S[0].device)

    def aligned(self, level: int) -> int:
        """COL_ALIGNED of a level: 1 if every map of it may be addressed with self.align."""
        maps = [xs[level] for xs in self.maps]
        offsets = [offset(xs[level], xs[0]) for xs in self.maps]
        return int(self.align > 1 and level_aligned(maps, offsets, self.layout, self.align))

    def main(self, kernel, table: Tensor, bases: list[Tensor], ws: Tensor) -> None:
        """Launches a main kernel (table, *bases, ws, L, BLOCKS_PER_PROG, constexprs)."""
        with on_device(self.S[0].device):
            kernel[(self.programs,)](table, *bases, ws, len(self.S), self.blocks_per_prog,
                                     LEVELS=self.levels, LAYOUT=self.layout, ALIGN=self.align,
                                     BLOCK_C=self.block_c, BLOCK_HW=self.block_hw,
                                     SECTOR=self.sector, num_warps=NUM_WARPS,
                                     **_register_bound(self.S[0].device))

    def combine(self, kernel, table: Tensor, ws: Tensor, comb_counts: list[int]) -> None:
        """Launches a combine kernel (table, ws, L, constexprs), sum(comb_counts) programs."""
        with on_device(self.S[0].device):
            kernel[(sum(comb_counts),)](table, ws, len(self.S), LEVELS=self.levels,
                                        BLOCK_C=COMBINE_BLOCK_C, num_warps=COMBINE_WARPS)


def per_dtype(launch: Callable, S: list[Tensor], per_level: list[list], *args) -> list[Tensor]:
    """Calls launch once per group of levels of one dtype (one group unless levels differ in
    dtype), with the group's items of each per-level list, then args. launch returns lists,
    one item per level of the group; the result is each of them over all levels, in order."""
    groups: dict[torch.dtype, list[int]] = {}
    for k, s in enumerate(S):
        groups.setdefault(s.dtype, []).append(k)
    outs: list[list] = []
    for idx in groups.values():
        results = launch(*[[xs[k] for k in idx] for xs in per_level], *args)
        outs = outs or [[None] * len(S) for _ in results]
        for out, result in zip(outs, results):
            for k, x in zip(idx, result):
                out[k] = x
    return [x for out in outs for x in out]


def host_copy_if_interpreted(fn):
    """Under TRITON_INTERPRET the interpreter copies each GPU tensor argument to the host on
    its own, which breaks the offsets between tensors: run on host copies instead. The
    device is the first argument's (a tensor, or a list of them)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = args[0] if isinstance(args[0], Tensor) or not args[0] else args[0][0]
        device = first.device if isinstance(first, Tensor) else torch.device("cpu")
        if os.environ.get("TRITON_INTERPRET") != "1" or device.type == "cpu":
            return fn(*args, **kwargs)
        host = [[x.cpu() if isinstance(x, Tensor) else x for x in a] if isinstance(a, list)
                else a.cpu() if isinstance(a, Tensor) else a for a in args]
        out = fn(*host, **kwargs)  # a list of outputs, or one
        return out.to(device) if isinstance(out, Tensor) else [x.to(device) for x in out]
    return wrapper
