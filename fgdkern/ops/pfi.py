"""The PFI op: one imitation statistics pass over a whole pyramid, its small math, one
gradient pass.

``pfi_loss`` is what PFILoss calls; it takes tensors only. For a fused
implementation (docs/pfi.md, "How it is computed"; the order: ops/two_pass.py):
forward:  imitation_stats over every level of (X = F_s, Y = F_t) and of (X = P_s,
          Y = P_t), in one call, gives sq_d = sum_q (X - Y)^2 per pixel, so
          F_dif = sq_d / C (eq. (8)) and P_dif = sq_d / K (eq. (7)); pfi_levels
          gives eq. (9) per level;
backward: pfi_coef turns each level's gradient into dF_s's coefficients, and the
          imitation gradient pass writes dF_s.
The contract of the passes and the small math is fgdkern/reference/imitation_passes.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.ops import dispatch, imitation
from fgdkern.ops.two_pass import PASSES, Passes, level_losses, triton_small_math
from fgdkern.reference import imitation_passes
from fgdkern.reference.pfi import PFITerms, accumulation_dtype, pfi_reference
from fgdkern.rows import IMIT_PIX_COEF


triton_small_math("pfi", "int", len(IMIT_PIX_COEF))


def passes(impl: str) -> Passes:
    """PFI on the imitation passes of ``impl`` ('cpp', 'triton' or 'torch'): one statistics
    call over the features' and the probabilities' pairs (S, T: [F..., P...]), the small
    math of PFI on their pixel tables, the gradient pass over the features only."""
    stats, grad = imitation.passes(impl)
    small = ((torch.ops.fgdkern.pfi_levels_triton, torch.ops.fgdkern.pfi_coef_triton)
             if impl == "triton" else (imitation_passes.pfi_levels, imitation_passes.pfi_coef))

    def pix(S, T, widths):
        w = [o[:, 0] for o in imitation.constant_tables(S, (1.0,))]  # the difference unweighted
        return stats(S, T, w)[:len(S)]

    def grad_features(S, T, coef, widths):
        L = len(widths)
        return grad(S[:L], T[:L], coef, imitation.constant_tables(
            S[:L], tuple(imitation_passes.UNIT_CHAN_COEF.values())))

    return Passes(pix, *small, grad_features)


PASSES["pfi"] = passes


def pfi_fused(impl: str, feats_S: list[Tensor], feats_T: list[Tensor], probs_S: list[Tensor],
              probs_T: list[Tensor]) -> PFITerms:
    """PFI from the imitation passes of ``impl`` ('cpp', 'triton' or 'torch')."""
    widths = [f.shape[1] * p.shape[1] for f, p in zip(feats_S, probs_S)]
    levels = level_losses("pfi", impl, [*feats_S, *(p.detach() for p in probs_S)],
                          [*feats_T, *probs_T], widths)
    return PFITerms(levels.mean(), levels)


def check_finite(tensors: dict) -> None:
    """ValueError naming the first input with a NaN or Inf; one host sync when all are finite."""
    flags = torch.stack([torch.isfinite(t).all() for t in tensors.values()])
    if bool(flags.all()):
        return
    for name, ok in zip(tensors, flags.tolist()):
        if not ok:
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def pfi_loss(backend: str, feats_S: list[Tensor], feats_T: list[Tensor], probs_S: list[Tensor],
             probs_T: list[Tensor]) -> PFITerms:
    """The unweighted PFI loss (docs/pfi.md) of per level (N, C, H_l, W_l) features (the
    student's aligned) and (N, K, H_l, W_l) probabilities, all on one device.

    The implementation is ``dispatch.resolve("imitation", backend, ...)`` for the
    accumulation dtype of the inputs: float64 anywhere runs the reference under "auto".
    """
    dtype = accumulation_dtype(*feats_S, *feats_T, *probs_S, *probs_T)
    impl = dispatch.resolve("imitation", backend, feats_S[0].device, dtype)
    if impl == "reference":
        return pfi_reference(feats_S, feats_T, probs_S, probs_T)
    return pfi_fused(impl, feats_S, feats_T, probs_S, probs_T)
