"""The PFI op: the imitation statistics pass over a whole pyramid, then small torch ops.

``pfi_loss`` is what PFILoss calls; it takes tensors only. For a fused
implementation (docs/pfi.md, "How it is computed"):
forward:  imitation_stats over every level of (X = F_s, Y = F_t) gives
          sq_d = sum_q (F_s - F_t)^2 per pixel, so F_dif = sq_d / C (eq. (8));
          a second call over (X = P_s, Y = P_t), both detached, gives
          P_dif = sq_d / K (eq. (7)); eq. (9) is then O(N*HW) torch work.
backward: autograd reaches the sq_d rows of the first call, and the imitation
          op's gradient pass writes dF_s (fgdkern/ops/imitation.py).
The contract of the passes is fgdkern/reference/imitation_passes.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.ops import dispatch
from fgdkern.ops.imitation import imitation_stats
from fgdkern.reference.pfi import PFITerms, accumulation_dtype, pfi_reference
from fgdkern.rows import IMIT_PIX


def _same_dtype(X: list[Tensor], Y: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Per level, X and Y in one dtype (the pass reads one dtype per level): upcast where
    they differ, exactly, and only then."""
    pairs = [(x, y) if x.dtype == y.dtype else (x.to(accumulation_dtype(x, y)),
                                                 y.to(accumulation_dtype(x, y)))
             for x, y in zip(X, Y)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _mean_sq_diff(impl: str, X: list[Tensor], Y: list[Tensor]) -> list[Tensor]:
    """Per level (N, HW): mean over channels of (X - Y)^2, eqs. (7) and (8)."""
    pix, _ = imitation_stats(impl, *_same_dtype(X, Y))
    return [p[:, IMIT_PIX.sq_d] / x.shape[1] for p, x in zip(pix, X)]


def pfi_fused(impl: str, feats_S: list[Tensor], feats_T: list[Tensor], probs_S: list[Tensor],
              probs_T: list[Tensor]) -> PFITerms:
    """PFI from the imitation statistics of ``impl`` ('cpp', 'triton' or 'torch')."""
    with torch.autocast(feats_S[0].device.type, enabled=False):
        F_dif = _mean_sq_diff(impl, feats_S, [t.detach() for t in feats_T])
        P_dif = _mean_sq_diff(impl, [p.detach() for p in probs_S], [p.detach() for p in probs_T])
        # eq. (9) per level, averaged over the images: sum over n, ij / (N * H_l * W_l)
        levels = torch.stack([(p.to(f.dtype) * f).square().sum() / f.numel()
                              for p, f in zip(P_dif, F_dif)])
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
