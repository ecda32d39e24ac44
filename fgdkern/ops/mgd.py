"""The MGD op: masked student, generation block in torch, the imitation pass for eq. (4).

``mgd_loss`` is what MGDLoss calls; it takes tensors only. For a fused
implementation (docs/mgd.md, "How it is computed"): the align conv, the mask
and the generation block run as torch ops (convolutions are already one kernel
each); the squared distance of the generated map G to the teacher's, the only
reduction over the (N, C, H, W) maps, is the ``sq_d`` row of the imitation
statistics pass (X = G, Y = T), whose backward writes dG in one sweep
(fgdkern/ops/imitation.py). Autograd carries dG through the convolutions.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fgdkern.ops import dispatch
from fgdkern.ops.imitation import imitation_stats
from fgdkern.reference.mgd import MGDParams, MGDTerms, generate, mgd_reference
from fgdkern.reference.pfi import accumulation_dtype
from fgdkern.rows import IMIT_PIX


def mgd_fused(impl: str, S: list[Tensor], T: list[Tensor], masks: list[Tensor],
              params: list[MGDParams]) -> MGDTerms:
    """MGD with eq. (4)'s reduction by the imitation pass of ``impl``."""
    with torch.autocast(S[0].device.type, enabled=False):
        dtypes = [accumulation_dtype(s, t) for s, t in zip(S, T)]
        G = [generate(s, m, p, d) for s, m, p, d in zip(S, masks, params, dtypes)]
        pix, _ = imitation_stats(impl, G, [t.detach().to(d) for t, d in zip(T, dtypes)])
        levels = torch.stack([p[:, IMIT_PIX.sq_d].sum() / s.shape[0] for p, s in zip(pix, S)])
    return MGDTerms(levels.sum(), levels)


def mgd_loss(backend: str, S: list[Tensor], T: list[Tensor], masks: list[Tensor],
             params: list[MGDParams]) -> MGDTerms:
    """The unweighted MGD loss (docs/mgd.md): per level the student (N, Cs, H, W), the
    teacher (N, Ct, H, W), the mask (N, 1, H, W) and the level's parameters.

    The implementation is ``dispatch.resolve("imitation", backend, ...)`` for the
    accumulation dtype of the inputs: float64 anywhere runs the reference under "auto"."""
    dtype = accumulation_dtype(*S, *T)
    impl = dispatch.resolve("imitation", backend, S[0].device, dtype)
    if impl == "reference":
        return mgd_reference(S, T, masks, params)
    return mgd_fused(impl, S, T, masks, params)
