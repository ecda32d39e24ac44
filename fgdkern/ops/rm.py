"""The Rank Mimicking op: the entry RankMimickingLoss calls (docs/rm.md).

RM reads a few thousand scores, not feature maps, so it has no fused pass:
every backend runs the vectorised reference (fgdkern/reference/rm.py), which
is O(P log P) tensor work with a closed-form gradient. The "rm" row of
fgdkern/ops/dispatch.py keeps the project's one ``backend=`` vocabulary.
"""
from __future__ import annotations

from torch import Tensor

from fgdkern.ops import dispatch
from fgdkern.reference.rm import RMTerms, rm_reference


def rm_loss(backend: str, scores_S: Tensor, scores_T: Tensor, instance_ids: Tensor) -> RMTerms:
    """The unweighted RM loss of (P,) student and teacher logits and (P,) instance ids."""
    impl = dispatch.resolve("rm", backend, scores_S.device, scores_S.dtype)
    assert impl == "reference", impl
    return rm_reference(scores_S, scores_T, instance_ids)
