"""The FKD op: terms of every level from the imitation passes, or from the reference.

``fkd_terms`` is what the loss modules call; it takes tensors only (raw
student maps, teacher maps, the parameter NamedTuples of
``fgdkern.reference.fkd``, temperatures). For the fused implementations every
sum over a whole (N, C, H, W) map comes from ``imitation_stats``
(docs/kernels.md, "The imitation passes (FKD, PFI)"; docs/fkd.md, "How it is computed"):

code variant   X = T, Y = f(S): abs_x -> A_S(T), sum_x -> signed means of T,
               sq_d -> L_feat;  X = S: abs_x -> A_S(S), sum_x -> signed means of S
paper variant  X = S', T: abs_x -> G_s, G_c of both (the masks);
               X = S', Y = T, w = M_c: sq_d -> L_AM
Everything else (softmaxes, norms, the Linear and 3x3 adaptations, the
non-local blocks) is small torch work shared with the reference.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern import _checks
from fgdkern.ops import dispatch
from fgdkern.ops.imitation import imitation_stats
from fgdkern.reference import fkd as ref
from fgdkern.reference.fkd import (CodeParams, FKDCodeTerms, FKDPaperTerms,
                                   NonLocalDistillParams, PaperParams)
from fgdkern.rows import IMIT_CHAN, IMIT_PIX

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


def _code_fused(impl: str, S: list[Tensor], T: list[Tensor], params: list[CodeParams],
                temps: list[float]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(L_feat, L_ch, L_sp) of every level from two statistics calls (docs/fkd.md)."""
    fS = [_adapted(s, t, p.adapt_weight, p.adapt_bias) for s, t, p in zip(S, T, params)]
    pairs = [_one_dtype(t, f) for t, f in zip(T, fS)]
    pix_t, chan_t = imitation_stats(impl, [x for x, _ in pairs], [y for _, y in pairs])
    pix_s, chan_s = imitation_stats(impl, S)
    out = []
    for k, (t, s, p, temp) in enumerate(zip(T, S, params, temps)):
        N, Ct, H, W = t.shape
        Cs, HW = s.shape[1], H * W
        A_t = ref.softmax_mask(pix_t[k][:, IMIT_PIX.abs_x] / Ct, temp)
        A_s = ref.softmax_mask(pix_s[k][:, IMIT_PIX.abs_x] / Cs, temp)
        M = ((A_t + A_s) / 2).detach()                    # (N, HW), docs/fkd.md
        feat = ref.safe_sqrt((M * pix_t[k][:, IMIT_PIX.sq_d]).sum())
        ch, sp = ref.code_mimic(chan_t[k][:, IMIT_CHAN.sum_x] / HW,
                                chan_s[k][:, IMIT_CHAN.sum_x] / HW,
                                pix_t[k][:, IMIT_PIX.sum_x].reshape(N, H, W) / Ct,
                                pix_s[k][:, IMIT_PIX.sum_x].reshape(N, H, W) / Cs, p)
        out.append((feat, ch, sp))
    return out


def _paper_fused(impl: str, S: list[Tensor], T: list[Tensor], params: list[PaperParams],
                 temps: list[float]) -> list[tuple[Tensor, Tensor]]:
    """(L_AT, L_AM) of every level, eqs. (1), (2): M_c needs G_c of S' and T before the
    channel-weighted sq_d, so two statistics calls."""
    Sa = [s if p.align_weight is None else _adapted(s, t, p.align_weight, p.align_bias)
          for s, t, p in zip(S, T, params)]
    L = len(Sa)
    pix, chan = imitation_stats(impl, Sa + T)
    Gs, Gc, M_s, M_c = [], [], [], []
    for k, t in enumerate(T):
        C, HW = t.shape[1], t.shape[2] * t.shape[3]
        Gs.append((pix[k][:, IMIT_PIX.abs_x] / C, pix[L + k][:, IMIT_PIX.abs_x] / C))
        Gc.append((chan[k][:, IMIT_CHAN.abs_x] / HW, chan[L + k][:, IMIT_CHAN.abs_x] / HW))
        M_s.append(ref.softmax_mask(Gs[k][0] + Gs[k][1], temps[k]).detach())
        M_c.append(ref.softmax_mask(Gc[k][0] + Gc[k][1], temps[k]).detach())
    pairs = [_one_dtype(s, t) for s, t in zip(Sa, T)]
    pix_d, _ = imitation_stats(impl, [x for x, _ in pairs], [y for _, y in pairs], M_c)
    return [(ref.paper_mimic(*Gs[k], *Gc[k]),
             ref.safe_sqrt((M_s[k] * pix_d[k][:, IMIT_PIX.sq_d]).sum())) for k in range(L)]


def _check_finite(S: list[Tensor], T: list[Tensor]) -> None:
    """A ValueError naming the first map with a NaN or Inf; one host sync for all."""
    sfx = [f"[{k}]" if len(S) > 1 else "" for k in range(len(S))]
    names = [f"preds_S{x}" for x in sfx] + [f"preds_T{x}" for x in sfx]
    finite = torch.stack([torch.isfinite(x).all().to(S[0].device) for x in S + T]).tolist()
    for name, ok in zip(names, finite):
        if not ok:
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def fkd_terms(backend: str, variant: str, S: list[Tensor], T: list[Tensor], params: list,
              nld: list[NonLocalDistillParams | None], temps: list[float],
              check_finite: bool = False) -> list:
    """Unweighted FKD terms of every level (docs/fkd.md): FKDCodeTerms or FKDPaperTerms.

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
    impl = dispatch.resolve("imitation", backend, S[0].device, S[0].dtype)
    if impl == "reference":
        fn = ref.fkd_code_reference if variant == "code" else ref.fkd_paper_reference
        return [fn(*args) for args in zip(S, T, params, nld, temps)]
    with torch.autocast(S[0].device.type, enabled=False):
        if variant == "code":
            parts = _code_fused(impl, S, T, params, temps)
            return [FKDCodeTerms(*part, ref.nonlocal_term(s, t, n))
                    for part, s, t, n in zip(parts, S, T, nld)]
        parts = _paper_fused(impl, S, T, params, temps)
        return [FKDPaperTerms(*part, ref.nonlocal_term(s, t, n))
                for part, s, t, n in zip(parts, S, T, nld)]
