"""Merges of partial reductions: how a run of blocks, and then runs, add up exactly.

Reads and writes only the per-channel rows it is given (float32, owned by the
calling program). Plain sums are merged by addition; softmax-weighted sums by
the online-softmax rescaling (each partial sum carries its running maximum m
and sum of exponentials l); the second moment of a difference about its mean
by Chan et al.'s pairwise formula, so that no cancellation occurs when the
mean is large next to the spread.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import triton
import triton.language as tl

from fgdkern.triton.tiles import per_channel, per_pixel, sum_pixels


@triton.jit
def rescale(m_a, m_b):
    """Online softmax: the common maximum m of two partial sums and their factors exp(m_x - m)."""
    m = tl.maximum(m_a, m_b)
    return m, tl.exp(m_a - m), tl.exp(m_b - m)


@triton.jit
def block_softmax(logits, p_mask, m_run):
    """Weights exp(logits - m) of one block [ROWS, SECTOR], m the running maximum; and the
    factor that rescales sums taken with the previous maximum."""
    m_block = tl.max(tl.max(tl.where(p_mask, logits, float("-inf")), 1), 0)
    m, alpha, _ = rescale(m_run, m_block)
    return m, alpha, tl.where(p_mask, tl.exp(logits - m), 0.0)


@triton.jit
def chan_merge(n_a, sum_a, m2_a, n_b, sum_b, m2_b):
    """Chan et al.: sum and centred second moment of two sets of n_a and n_b > 0 values."""
    delta = sum_b / n_b - sum_a / tl.maximum(n_a, 1.0)
    return sum_a + sum_b, m2_a + m2_b + delta * delta * (n_a * n_b / (n_a + n_b))


@triton.jit
def accumulate(row, c_mask, keep, scale, x):
    """row[c] = row[c] * scale + x, with row read as 0 when not keep (a program's first block)."""
    acc = tl.where(keep, tl.load(row, mask=c_mask, other=0.0), 0.0)
    tl.store(row, acc * scale + x, mask=c_mask)


@triton.jit
def merge_moments(sum_row, m2_row, c_mask, keep, n_run, n_block, d, p_mask):
    """Fold one block's per-channel sum and block-centred second moment of d
    [ROWS, BLOCK_C, SECTOR] into the rows, which hold those of n_run earlier pixels."""
    sum_b = sum_pixels(d)                                                 # [BLOCK_C]
    centred = tl.where(per_pixel(p_mask), d - per_channel(sum_b / n_block), 0.0)
    m2_b = sum_pixels(centred * centred)
    sum_a = tl.where(keep, tl.load(sum_row, mask=c_mask, other=0.0), 0.0)
    m2_a = tl.where(keep, tl.load(m2_row, mask=c_mask, other=0.0), 0.0)
    sum_ab, m2_ab = chan_merge(n_run, sum_a, m2_a, n_block, sum_b, m2_b)
    tl.store(sum_row, sum_ab, mask=c_mask)
    tl.store(m2_row, m2_ab, mask=c_mask)
