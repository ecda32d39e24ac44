"""Merges of partial reductions: how a run of blocks, and then runs, add up exactly.

Reads and writes only the per-channel rows it is given (float32, owned by the
calling program). Plain sums are merged by addition; softmax-weighted sums by
the online-softmax rescaling (each partial sum carries its running maximum m
and sum of exponentials l); the second moment of a difference about its mean
by Chan et al.'s pairwise formula, so that no cancellation occurs when the
mean is large next to the spread. A channel chunk's partial sums are stacked,
[BLOCK_C, rows], and merged into their rows in one read-modify-write.
"""
# No `from __future__ import annotations` here: Triton 3.0's interpreter needs the
# tl.constexpr annotations of kernel arguments as objects, not strings.
import triton
import triton.language as tl


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
def stack2(a, b):
    """Two [BLOCK_C] vectors of one layout as [BLOCK_C, 2], column k the k-th argument."""
    return tl.join(a, b)


@triton.jit
def stack8(a, b, c, d, e, f, g, h):
    """Eight [BLOCK_C] vectors of one layout as [BLOCK_C, 8], column k the k-th argument, a
    thread keeping all eight values of its channels. tl.join adds its axis last, so
    the joins nest in bit-reversed order."""
    x = tl.join(tl.join(tl.join(a, e), tl.join(c, g)), tl.join(tl.join(b, f), tl.join(d, h)))
    return tl.reshape(x, [a.shape[0], 8])


@triton.jit
def read_rows(part, c, c_mask, C, keep, R: tl.constexpr):
    """Rows 0..R-1 of a program's partial rows (R rows of C values at part) at the chunk's
    channels c, stacked [BLOCK_C, R]: each row's index, pointers and mask, and values, read
    as 0 when not keep (a program's first block)."""
    row = tl.arange(0, R)[None, :]
    ptr = part + row * C + c[:, None]
    mask = tl.broadcast_to(c_mask[:, None], ptr.shape)
    return row, ptr, mask, tl.where(keep, tl.load(ptr, mask=mask, other=0.0), 0.0)


@triton.jit
def accumulate_rows(part, c, c_mask, C, keep, scale, x):
    """rows = rows * scale + x, x stacked [BLOCK_C, R] in row order (stack2, stack8): all the
    partial rows of a channel chunk in one read-modify-write."""
    _, ptr, mask, acc = read_rows(part, c, c_mask, C, keep, x.shape[1])
    tl.store(ptr, acc * scale + x, mask=mask)


@triton.jit
def accumulate_rows_and_moments(part, c, c_mask, C, keep, scale, x, n_run, n_block,
                                SUM: tl.constexpr, M2: tl.constexpr):
    """accumulate_rows, where rows SUM and M2 hold a sum of d and its centred second moment
    over n_run pixels and x a block's over n_block: those merged by Chan's formula
    (chan_merge, operation for operation). scale: [1, R], or a scalar."""
    row, ptr, mask, acc = read_rows(part, c, c_mask, C, keep, x.shape[1])
    sum_a = tl.sum(tl.where(row == SUM, acc, 0.0), 1)
    sum_b = tl.sum(tl.where(row == SUM, x, 0.0), 1)
    delta = sum_b / n_block - sum_a / tl.maximum(n_run, 1.0)
    spread = delta * delta * (n_run * n_block / (n_run + n_block))
    tl.store(ptr, acc * scale + x + tl.where(row == M2, spread[:, None], 0.0), mask=mask)
