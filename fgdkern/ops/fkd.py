"""The FKD op: the terms of every level as one table, from the imitation passes or from the
reference.

``fkd_table`` is what the loss modules call; it takes tensors only (raw student
maps, teacher maps, the parameter NamedTuples of ``fgdkern.reference.fkd``,
temperatures). For the fused implementations every sum over a whole (N, C, H, W)
map comes from ``imitation_stats`` (docs/kernels.md, "The imitation passes (FKD,
PFI)"; docs/fkd.md, "How it is computed"):

code variant   X = T, Y = f(S): abs_x -> A_S(T), sum_x -> signed means of T,
               sq_d -> L_feat; X = S: abs_x -> A_S(S), sum_x -> signed means of S.
               The small math between the passes is fgdkern.reference.fkd_small_math;
               on a GPU its Triton kernels, with one statistics call over both pairs
               and one gradient call over f(S) and S (_FKDCodeTriton).
paper variant  X = S', T: abs_x -> G_s, G_c of both (the masks);
               X = S', Y = T, w = M_c: sq_d -> L_AM. The small math is in the same
               module; on a GPU its Triton kernels and one gradient call over S'
               (_FKDPaperTriton).
On CPU the small math runs under autograd with the passes' autograd op. The non-local
blocks are torch work shared with the reference.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern import _checks
from fgdkern.ops import dispatch, imitation
from fgdkern.ops.imitation import imitation_stats
from fgdkern.reference import fkd as ref
from fgdkern.reference import fkd_small_math
from fgdkern.reference.imitation_passes import UNIT_CHAN_COEF
from fgdkern.reference.fkd import CodeParams, NonLocalDistillParams, PaperParams
from fgdkern.rows import IMIT_CHAN_COEF

VARIANTS = ("code", "paper")


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _adapted(S: Tensor, T: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A 1x1 conv of S in the accumulation dtype of S and T, as the reference computes it."""
    return ref.conv1x1(S.to(ref.acc_dtype(S, T)), weight, bias)


def _one_dtype(X: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
    """X and Y in one dtype (the imitation passes read a pair of one dtype): both upcast,
    exactly, when they differ."""
    if X.dtype == Y.dtype:
        return X, Y
    dtype = torch.promote_types(X.dtype, Y.dtype)
    return X.to(dtype), Y.to(dtype)


@torch.library.custom_op("fgdkern::fkd_terms_triton", mutates_args=())
def _fkd_terms_triton(pix_t: list[Tensor], pix_s: list[Tensor], chan_t: list[Tensor],
                      chan_s: list[Tensor], mimic: list[Tensor], widths: list[int],
                      temps: list[float]) -> list[Tensor]:
    from fgdkern.triton import fkd_terms
    return fkd_terms(pix_t, pix_s, chan_t, chan_s, mimic, widths, temps)


@torch.library.custom_op("fgdkern::fkd_terms_grad_triton", mutates_args=())
def _fkd_terms_grad_triton(G: Tensor, pix_t: list[Tensor], pix_s: list[Tensor],
                           chan_t: list[Tensor], chan_s: list[Tensor], mimic: list[Tensor],
                           widths: list[int], temps: list[float], table: Tensor) -> list[Tensor]:
    from fgdkern.triton import fkd_terms_grad
    return fkd_terms_grad(G, pix_t, pix_s, chan_t, chan_s, mimic, widths, temps, table)


_fkd_terms_triton.register_fake(lambda pix_t, *_: [pix_t[0].new_empty((len(pix_t), 3))])
_fkd_terms_grad_triton.register_fake(lambda G, pix_t, pix_s, chan_t, chan_s, mimic, *_: [
    *(torch.empty_like(p) for p in pix_t + pix_s),
    *(c.new_empty((c.shape[0], len(IMIT_CHAN_COEF), c.shape[2])) for c in chan_s),
    *(torch.empty_like(m) for m in mimic)])


@torch.library.custom_op("fgdkern::fkd_paper_masks_triton", mutates_args=())
def _fkd_paper_masks_triton(pix: list[Tensor], chan: list[Tensor],
                            temps: list[float]) -> list[Tensor]:
    from fgdkern.triton import fkd_paper_masks
    return fkd_paper_masks(pix, chan, temps)


@torch.library.custom_op("fgdkern::fkd_paper_terms_triton", mutates_args=())
def _fkd_paper_terms_triton(pix: list[Tensor], chan: list[Tensor], pix_d: list[Tensor],
                            temps: list[float]) -> list[Tensor]:
    from fgdkern.triton import fkd_paper_terms
    return fkd_paper_terms(pix, chan, pix_d, temps)


@torch.library.custom_op("fgdkern::fkd_paper_terms_grad_triton", mutates_args=())
def _fkd_paper_terms_grad_triton(G: Tensor, pix: list[Tensor], chan: list[Tensor],
                                 pix_d: list[Tensor], M_c: list[Tensor], temps: list[float],
                                 table: Tensor) -> list[Tensor]:
    from fgdkern.triton import fkd_paper_terms_grad
    return fkd_paper_terms_grad(G, pix, chan, pix_d, M_c, temps, table)


_fkd_paper_masks_triton.register_fake(lambda pix, chan, temps: [
    c.new_empty((c.shape[0], c.shape[2])) for c in chan[:len(temps)]])
_fkd_paper_terms_triton.register_fake(lambda pix, chan, pix_d, temps: [
    pix[0].new_empty((len(temps), 2))])
_fkd_paper_terms_grad_triton.register_fake(lambda G, pix, chan, pix_d, M_c, temps, table: [
    *(torch.empty_like(p) for p in pix[:len(temps)]),
    *(c.new_empty((c.shape[0], len(IMIT_CHAN_COEF), c.shape[2])) for c in chan[:len(temps)])])


class _FKDCodeTriton(torch.autograd.Function):
    """The (L, 3) unweighted L_feat, L_ch, L_sp of the code variant on a GPU (docs/fkd.md,
    "How it is computed"). Inputs: S*L, f(S)*L, T*L (in f(S)'s dtype; no gradient),
    mimic*4L (float32).

    Forward: one statistics call over X = [T, S], Y = [f(S), S], then the small
    math's kernel. Backward: its backward kernel writes the gradient pass's
    tables, then one gradient call over X = [f(S), S], Y = [T, S]: f(S) gets the
    a-term of sq_d, S the b- and s-terms of its sums."""

    @staticmethod
    def forward(ctx, widths: list[int], temps: list[float], L: int, *tensors):
        S, fS, T, mimic = tensors[:L], tensors[L:2 * L], tensors[2 * L:3 * L], tensors[3 * L:]
        X = [*T, *S]
        tables = imitation.passes("triton")[0](
            X, [*fS, *S], [w[:, 0] for w in imitation.constant_tables(X, (1.0,))])
        table = torch.ops.fgdkern.fkd_terms_triton(*_split4(tables, L), list(mimic), widths,
                                                   temps)[0]
        ctx.widths, ctx.temps, ctx.L = widths, temps, L
        ctx.save_for_backward(*tensors, *tables, table)
        return table

    @staticmethod
    def backward(ctx, G):
        L, saved = ctx.L, ctx.saved_tensors
        S, fS, T = saved[:L], saved[L:2 * L], saved[2 * L:3 * L]
        mimic, tables = saved[3 * L:-4 * L - 1], saved[-4 * L - 1:-1]
        with torch.autocast(G.device.type, enabled=False):
            out = torch.ops.fgdkern.fkd_terms_grad_triton(
                G.contiguous(), *_split4(tables, L), list(mimic), ctx.widths, ctx.temps,
                saved[-1])
            chan_f = imitation.constant_tables(fS, tuple(UNIT_CHAN_COEF.values()))
            d = imitation.passes("triton")[1]([*fS, *S], [*T, *S], out[:2 * L],
                                              [*chan_f, *out[2 * L:3 * L]])
        return (None,) * 3 + (*d[L:], *d[:L], *([None] * L), *out[3 * L:])


class _FKDPaperTriton(torch.autograd.Function):
    """The (L, 2) unweighted L_AT, L_AM of the paper variant on a GPU (docs/fkd.md, "How it
    is computed"). Inputs: S'*L, T*L (in S''s dtype; no gradient).

    Forward: a statistics call over X = [S', T], the masks' kernel (M_c), a
    statistics call over X = S', Y = T weighted by M_c, the terms' kernel.
    Backward: the terms' backward kernel writes dS''s tables (the a-term of L_AM,
    the s-terms of L_AT), then one gradient call."""

    @staticmethod
    def forward(ctx, temps: list[float], L: int, *tensors):
        Sa, T = list(tensors[:L]), list(tensors[L:])
        X = [*Sa, *T]
        stats = imitation.passes("triton")[0]
        tables = stats(X, X, [w[:, 0] for w in imitation.constant_tables(X, (1.0,))])
        pix, chan = tables[:2 * L], tables[2 * L:]
        M_c = torch.ops.fgdkern.fkd_paper_masks_triton(pix, chan, temps)
        pix_d = stats(Sa, T, M_c)[:L]
        table = torch.ops.fgdkern.fkd_paper_terms_triton(pix, chan, pix_d, temps)[0]
        ctx.temps, ctx.L = temps, L
        ctx.save_for_backward(*tensors, *pix, *chan, *pix_d, *M_c, table)
        return table

    @staticmethod
    def backward(ctx, G):
        L, saved = ctx.L, ctx.saved_tensors
        Sa, T = saved[:L], saved[L:2 * L]
        pix, chan = saved[2 * L:4 * L], saved[4 * L:6 * L]
        pix_d, M_c = saved[6 * L:7 * L], saved[7 * L:8 * L]
        with torch.autocast(G.device.type, enabled=False):
            out = torch.ops.fgdkern.fkd_paper_terms_grad_triton(
                G.contiguous(), list(pix), list(chan), list(pix_d), list(M_c), ctx.temps,
                saved[-1])
            dSa = imitation.passes("triton")[1](list(Sa), list(T), out[:L], out[L:])
        return (None, None, *dSa, *([None] * L))


def _split4(tables, L: int) -> list[list[Tensor]]:
    """pix_t, pix_s, chan_t, chan_s from one statistics call over X = [T, S]."""
    return [list(tables[k * L:(k + 1) * L]) for k in range(4)]


def _code_fused(impl: str, S: list[Tensor], T: list[Tensor], params: list[CodeParams],
                temps: list[float]) -> Tensor:
    """(L, 3): L_feat, L_ch, L_sp of every level (docs/fkd.md). On a GPU the passes and
    the small math's kernels under one autograd node; on CPU the passes' autograd op and
    the small math's contract under autograd, which is cheaper there than evaluating the
    contract twice for its backward."""
    fS = [_adapted(s, t, p.adapt_weight, p.adapt_bias) for s, t, p in zip(S, T, params)]
    T, fS = zip(*(_one_dtype(t, f) for t, f in zip(T, fS)))
    mimic, widths = fkd_small_math.flat(params), [s.shape[3] for s in S]
    if impl == "triton":
        return _FKDCodeTriton.apply(widths, temps, len(S), *S, *fS, *T,
                                    *(m.float().contiguous() for m in mimic))
    pix_t, chan_t = imitation_stats(impl, list(T), list(fS))
    pix_s, chan_s = imitation_stats(impl, S)
    return fkd_small_math.terms(pix_t, pix_s, chan_t, chan_s, mimic, widths, temps)[0]


def _paper_fused(impl: str, S: list[Tensor], T: list[Tensor], params: list[PaperParams],
                 temps: list[float]) -> Tensor:
    """(L, 2): L_AT, L_AM of every level, eqs. (1), (2): M_c needs G_c of S' and T before the
    channel-weighted sq_d, so two statistics calls."""
    Sa = [s if p.align_weight is None else _adapted(s, t, p.align_weight, p.align_bias)
          for s, t, p in zip(S, T, params)]
    Sa, T = zip(*(_one_dtype(s, t) for s, t in zip(Sa, T)))
    if impl == "triton":
        return _FKDPaperTriton.apply(temps, len(S), *Sa, *T)
    pix, chan = imitation_stats(impl, [*Sa, *T])
    M_c = fkd_small_math.paper_masks(pix, chan, temps)
    pix_d, _ = imitation_stats(impl, list(Sa), list(T), M_c)
    return fkd_small_math.paper_terms(pix, chan, pix_d, temps)[0]


def _check_finite(S: list[Tensor], T: list[Tensor]) -> None:
    """A ValueError naming the first map with a NaN or Inf; one host sync for all."""
    sfx = [f"[{k}]" if len(S) > 1 else "" for k in range(len(S))]
    names = [f"preds_S{x}" for x in sfx] + [f"preds_T{x}" for x in sfx]
    finite = torch.stack([torch.isfinite(x).all().to(S[0].device) for x in S + T]).tolist()
    for name, ok in zip(names, finite):
        if not ok:
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def fkd_table(backend: str, variant: str, S: list[Tensor], T: list[Tensor], params: list,
              nld: list[NonLocalDistillParams | None], temps: list[float],
              check_finite: bool = False) -> Tensor:
    """The unweighted FKD terms of every level (docs/fkd.md) as an (L, K) float32 table
    (float64 for float64 maps on the reference): columns feat, channel, spatial (code
    variant) or at, am (paper variant), then nonlocal when a level has its parameters.

    S: per level raw student maps (N, Cs, H, W); T: teacher maps (N, Ct, H, W),
    detached here; params: CodeParams or PaperParams per level; nld: the
    non-local distillation parameters per level (None: that term is 0);
    temps: each level's temperature. check_finite: raise on NaN/Inf features
    (one host sync); otherwise they propagate into the terms.
    """
    check_variant(variant)
    T = [t.detach() for t in T]
    if check_finite and not _checks.is_compiling():
        _check_finite(S, T)
    with_nl = any(n is not None for n in nld)
    impl = dispatch.resolve("imitation", backend, S[0].device, S[0].dtype)
    if impl == "reference":
        fn = ref.fkd_code_reference if variant == "code" else ref.fkd_paper_reference
        rows = [fn(*args) for args in zip(S, T, params, nld, temps)]
        return torch.stack([torch.stack(row if with_nl else row[:-1]) for row in rows])
    with torch.autocast(S[0].device.type, enabled=False):
        fused = _code_fused if variant == "code" else _paper_fused
        table = fused(impl, S, T, params, temps)
        if with_nl:
            nl = [ref.nonlocal_term(s, t, n).to(table.dtype) for s, t, n in zip(S, T, nld)]
            table = torch.cat([table, torch.stack(nl)[:, None]], 1)
    return table
