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
def softmax_merge(m_a, l_a, m_b, l_b):
    """Online softmax: two partial sums of exponentials, l_x = sum exp(x - m_x) with m_x the
    maximum of their logits, as one (m, l); -inf, 0 is the empty set."""
    m, alpha, beta = rescale(m_a, m_b)
    return m, l_a * alpha + l_b * beta


@triton.jit
def softmax_merge_weighted(m_a, l_a, w_a, m_b, l_b, w_b):
    """softmax_merge, with a softmax-weighted sum w_x = sum exp(x - m_x) v of each set that
    is rescaled with it."""
    m, alpha, beta = rescale(m_a, m_b)
    return m, l_a * alpha + l_b * beta, w_a * alpha + w_b * beta


@triton.jit
def tile_softmax(x, inside):
    """Per channel of a [ROWS, BLOCK_C, SECTOR] tile of logits: their maximum m over the
    pixels inside ([ROWS, 1, SECTOR]) and the tile's exp(x - m), 0 outside."""
    m = tl.max(tl.max(tl.where(inside, x, float("-inf")), 0), 1)
    return m, tl.where(inside, tl.exp(x - m[None, :, None]), 0.0)


@triton.jit
def chan_delta(n_a, sum_a, n_b, sum_b):
    """mean_b - mean_a of two sets of n_a >= 0 and n_b > 0 values (mean_a = 0 if empty)."""
    return sum_b / n_b - sum_a / tl.maximum(n_a, 1.0)


@triton.jit
def chan_merge(n_a, sum_a, m2_a, n_b, sum_b, m2_b):
    """Chan et al.: sum and centred second moment of two sets of n_a and n_b > 0 values."""
    delta = chan_delta(n_a, sum_a, n_b, sum_b)
    return sum_a + sum_b, m2_a + m2_b + delta * delta * (n_a * n_b / (n_a + n_b))


@triton.jit
def chan_merge_pair(n_a, sum_s_a, sum_t_a, m2_s_a, m2_t_a, m_st_a,
                    n_b, sum_s_b, sum_t_b, m2_s_b, m2_t_b, m_st_b):
    """chan_merge of two variables s, t observed together, and of their centred cross
    moment: m_st = m_st_a + m_st_b + delta_s delta_t n_a n_b / (n_a + n_b)."""
    delta_s = chan_delta(n_a, sum_s_a, n_b, sum_s_b)
    delta_t = chan_delta(n_a, sum_t_a, n_b, sum_t_b)
    f = n_a * n_b / (n_a + n_b)
    return (sum_s_a + sum_s_b, sum_t_a + sum_t_b, m2_s_a + m2_s_b + delta_s * delta_s * f,
            m2_t_a + m2_t_b + delta_t * delta_t * f, m_st_a + m_st_b + delta_s * delta_t * f)


@triton.jit
def partial_row(run, row, c, c_mask, C):
    """Row `row` of a run's partial rows (rows of C values at run) at channels c, 0 elsewhere."""
    return tl.load(run + row * C + c, mask=c_mask, other=0.0)


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


@triton.jit
def softmax_stats(x, n, scale, BLOCK: tl.constexpr):
    """Max of x * scale and 1 / sum of exp(x * scale - max) over the n values at x, online,
    in float64: attention terms subtract softmaxes that may agree to all but a few bits."""
    m = tl.full([], -float("inf"), tl.float64)
    z = tl.zeros([], tl.float64)
    for i0 in range(0, n, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        v = tl.load(x + i, mask=i < n, other=-float("inf")).to(tl.float64) * scale
        m, z = softmax_step(m, z, v, i < n)
    return m, 1.0 / z


@triton.jit
def softmax_step(m, z, v, valid):
    """Online softmax: the running max m and sum z of exp(x - m) after the values v (where
    valid) too."""
    m_new = tl.maximum(m, tl.max(v, 0))
    return m_new, z * tl.exp(m - m_new) + tl.sum(tl.where(valid, tl.exp(v - m_new), 0.0), 0)


@triton.jit
def softmax_at(x, i, mask, scale, m, inv_z):
    """softmax(x * scale)[i] in float64 from softmax_stats' m and 1 / z."""
    v = tl.load(x + i, mask=mask, other=-float("inf")).to(tl.float64) * scale
    return tl.where(mask, tl.exp(v - m) * inv_z, 0.0)
