"""The small math between a loss's two passes, every level in one launch.

Reads a statistic table chan per level (float32, contiguous) and, for the
coefficients, the (L,) gradient of the level losses; writes the (L,) level
losses (level_sums: one program, levels and items in a fixed order, so the
sums are the same bit for bit from run to run) or the gradient pass's
coefficient tables (map_items: BLOCK items per program).

A level's chan holds G groups (CWD: its images; PKD: one) of ROWS_IN rows of
C values; an item is one (group, channel) (or one (image, pixel) of a pixel
table, C then its pixels). A level may have a second table of the same shape,
aux (PFI: the probabilities' beside the features'). What a loss computes of
its items is a jit function handed over as a constexpr (BODY), given the
address of the items' row 0 in chan and in aux (rows C apart; aux0 is row0
where there is no aux) and two float32 parameters of the level (p0, p1), so
the loss's own file holds only its formulas.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fgdkern.triton.levels import MIN_LEVELS, device_values, find_level, offset, on_device

BLOCK = 256
# Columns of the level table: first map_items program, level index, items (G * C), C,
# and the element offsets of chan, of the output table and of aux from the float32 base.
COL_PROG0, COL_LEVEL, COL_ITEMS, COL_C, COL_CHAN, COL_OUT, COL_AUX = (
    tl.constexpr(k) for k in range(7))
NCOL = tl.constexpr(7)


@triton.jit
def _items(lv, base, i, ROWS: tl.constexpr):
    """Items i of a level: their mask, C, and the addresses of their row 0 in chan and aux."""
    C = tl.load(lv + COL_C)
    item = (i // C) * ROWS * C + i % C
    return (i < tl.load(lv + COL_ITEMS), C, base + tl.load(lv + COL_CHAN) + item,
            base + tl.load(lv + COL_AUX) + item)


@triton.jit(do_not_specialize=["L"])
def level_sums_kernel(table, base, params, out, L, BODY: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK: tl.constexpr):
    """Reads every level's chan (and aux); writes out[l] = p1 * sum over its items of
    BODY(row0, aux0, C, mask, p0, p1)."""
    for l in range(L):
        lv = table + l * NCOL
        p0, p1 = tl.load(params + 2 * l), tl.load(params + 2 * l + 1)
        acc = tl.zeros([BLOCK], tl.float32)
        for i0 in range(0, tl.load(lv + COL_ITEMS), BLOCK):
            mask, C, row0, aux0 = _items(lv, base, i0 + tl.arange(0, BLOCK), ROWS)
            acc += tl.where(mask, BODY(row0, aux0, C, mask, p0, p1), 0.0)
        tl.store(out + l, tl.sum(acc, 0) * p1)


@triton.jit(do_not_specialize=["g_stride", "L"])
def map_items_kernel(table, base, params, dlevels, g_stride, L, BODY: tl.constexpr,
                     ROWS_IN: tl.constexpr, ROWS_OUT: tl.constexpr, LEVELS: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Reads BLOCK items of one level's chan (and aux) and the gradient g of its loss;
    BODY(row0, aux0, out0, C, mask, g, p0, p1) writes their rows of the output table
    (out0: their row 0)."""
    pid = tl.program_id(0)
    lv = find_level(table, pid, L, COL_PROG0, NCOL, LEVELS)
    l = tl.load(lv + COL_LEVEL)
    i = (pid - tl.load(lv + COL_PROG0)) * BLOCK + tl.arange(0, BLOCK)
    mask, C, row0, aux0 = _items(lv, base, i, ROWS_IN)
    out0 = base + tl.load(lv + COL_OUT) + (i // C) * ROWS_OUT * C + i % C
    BODY(row0, aux0, out0, C, mask, tl.load(dlevels + l * g_stride),
         tl.load(params + 2 * l), tl.load(params + 2 * l + 1))


def check_tables(chan: list[Tensor], rows: int, dlevels: Optional[Tensor] = None) -> None:
    """chan: one contiguous float32 (..., rows, C) table per level on one device; dlevels:
    L float32 values there."""
    if len(chan) == 0:
        raise ValueError("chan must hold one statistic table per level, got none")
    for k, ch in enumerate(chan):
        if ch.dtype != torch.float32:
            raise TypeError(f"chan[{k}] must be float32, got {ch.dtype}")
        if ch.dim() not in (2, 3) or ch.shape[-2] != rows or not ch.is_contiguous():
            raise ValueError(f"chan[{k}] must be a contiguous (..., {rows}, C) table, got shape "
                             f"{tuple(ch.shape)} and strides {ch.stride()}")
        if ch.device != chan[0].device:
            raise ValueError(f"chan[{k}] is on {ch.device}, chan[0] on {chan[0].device}")
    if dlevels is not None and (dlevels.shape != (len(chan),) or dlevels.dtype != torch.float32
                                or dlevels.device != chan[0].device):
        raise ValueError(f"dlevels must be {len(chan)} float32 values on {chan[0].device}, got "
                         f"{dlevels.dtype} of shape {tuple(dlevels.shape)} on {dlevels.device}")


def _check_aux(chan: list[Tensor], rows: int, aux: Optional[list[Tensor]],
               dlevels: Optional[Tensor] = None) -> list[Tensor]:
    """check_tables of chan (and dlevels) and of aux, shaped as chan; aux, or chan for none."""
    check_tables(chan, rows, dlevels)
    if aux is None:
        return chan
    if len(aux) != len(chan):
        raise ValueError(f"aux has {len(aux)} tables, chan {len(chan)}")
    check_tables(aux, rows)
    for k, (a, ch) in enumerate(zip(aux, chan)):
        if a.shape != ch.shape or a.device != ch.device:
            raise ValueError(f"aux[{k}] must be shaped as chan[{k}] {tuple(ch.shape)} on "
                             f"{ch.device}, got {tuple(a.shape)} on {a.device}")
    return aux


def _table(chan: list[Tensor], outs: list[Tensor], aux: list[Tensor]) -> tuple[Tensor, int]:
    """The level table (outputs and aux addressed from chan[0] too) and the map_items
    programs."""
    rows, prog0 = [], 0
    for l, (ch, o, a) in enumerate(zip(chan, outs, aux)):
        C, items = ch.shape[-1], ch.numel() // ch.shape[-2]
        rows.append([prog0, l, items, C, offset(ch, chan[0]), offset(o, chan[0]),
                     offset(a, chan[0])])
        prog0 += triton.cdiv(items, BLOCK)
    return device_values(rows, torch.int64, chan[0].device), prog0


def level_sums(body, rows: int, chan: list[Tensor], params: list[tuple[float, float]],
               aux: Optional[list[Tensor]] = None) -> Tensor:
    """(L,) float32: per level p1 * sum of body over its items (chan[l]: (G, rows, C), or
    (rows, C) for G = 1; params: (p0, p1) per level; aux: tables shaped as chan)."""
    aux = _check_aux(chan, rows, aux)
    out = torch.empty(len(chan), dtype=torch.float32, device=chan[0].device)
    table, _ = _table(chan, chan, aux)
    with on_device(chan[0].device):
        level_sums_kernel[(1,)](table, chan[0], device_values(params, torch.float32, out.device),
                                out, len(chan), BODY=body, ROWS=rows, BLOCK=BLOCK)
    return out


def map_items(body, rows_in: int, rows_out: int, chan: list[Tensor], dlevels: Tensor,
              params: list[tuple[float, float]], aux: Optional[list[Tensor]] = None
              ) -> list[Tensor]:
    """Per level a float32 table of rows_out rows written by body from chan[l]'s items (and
    aux[l]'s) and dlevels[l] (any stride); the table has chan[l]'s shape with rows_out rows."""
    aux = _check_aux(chan, rows_in, aux, dlevels)
    shapes = [(*ch.shape[:-2], rows_out, ch.shape[-1]) for ch in chan]
    outs = [ch.new_empty(shape) for ch, shape in zip(chan, shapes)]
    table, programs = _table(chan, outs, aux)
    with on_device(chan[0].device):
        map_items_kernel[(programs,)](
            table, chan[0], device_values(params, torch.float32, chan[0].device), dlevels,
            dlevels.stride(0), len(chan), BODY=body, ROWS_IN=rows_in, ROWS_OUT=rows_out,
            LEVELS=max(MIN_LEVELS, triton.next_power_of_2(len(chan))), BLOCK=BLOCK)
    return outs
