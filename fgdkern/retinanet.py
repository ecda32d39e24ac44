"""Inputs of PFI and RM from a torchvision RetinaNet (docs/integrations.md, "PFI and RM").

Reads the head's ``cls_logits`` output, (N, sum_l H_l W_l A, K) with the
anchors of a level in (H, W, A) order, the FPN maps it was computed from, the
model's anchors and its ``proposal_matcher``; writes

- ``probability_maps``: per level the (N, A*K, H_l, W_l) sigmoid probabilities
  that ``PFILoss`` compares (papers/002, eqs. 7-9; RetinaNet's focal-loss head
  scores each class with a sigmoid);
- ``rank_mimicking_inputs``: the flat (P,) logits of student and teacher at the
  positive anchors of every ground-truth instance, for the instance's class, and
  the (P,) instance ids that ``RankMimickingLoss`` groups them by (eqs. 5-6).

Positive anchors are assigned as RetinaNet's own loss assigns them
(``match_anchors``: the matcher on ``box_iou(gt_boxes, anchors)``, matched
index >= 0). torchvision is imported only when a function needs it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

ANCHOR_KEYS = ("sizes", "aspect_ratios")


class Positives(NamedTuple):
    """The positive anchors of a batch, flat (P,) int64 tensors, image by image."""
    image: Tensor      # index of the image in the batch
    anchor: Tensor     # index of the anchor in that image's anchors (the head's flat order)
    instance: Tensor   # running offset of the image's boxes + index of the matched box
    label: Tensor      # class of the matched box (a column of cls_logits)


def _maps(name: str, features) -> list[Tensor]:
    """The FPN maps of a list, tuple or mapping (an OrderedDict from model.backbone)."""
    if isinstance(features, Mapping):
        features = list(features.values())
    if isinstance(features, Tensor) or not isinstance(features, Sequence) or not features:
        raise TypeError(f"{name} must be a non-empty list or dict of (N, C, H, W) maps")
    for k, f in enumerate(features):
        if not isinstance(f, Tensor) or f.dim() != 4:
            raise ValueError(f"{name}[{k}] must be an (N, C, H, W) tensor, got "
                             f"{type(f).__name__ if not isinstance(f, Tensor) else tuple(f.shape)}")
    return list(features)


def _check_logits(name: str, cls_logits) -> None:
    if not isinstance(cls_logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cls_logits).__name__}")
    if cls_logits.dim() != 3:
        raise ValueError(f"{name} must be the head's (N, anchors, classes) output, got shape "
                         f"{tuple(cls_logits.shape)}")


def level_maps(cls_logits: Tensor, features, num_anchors: int) -> list[Tensor]:
    """The head's flat logits split per FPN level, back in the conv's (N, A*K, H_l, W_l) layout.

    ``features``: the maps the head read (list or dict), for their sizes only;
    ``num_anchors``: A, anchors per position (``model.head.classification_head.num_anchors``).
    Channel a*K + k of a level's map is anchor a, class k, as the head's last conv gives it.
    """
    _check_logits("cls_logits", cls_logits)
    maps = _maps("features", features)
    if isinstance(num_anchors, bool) or not isinstance(num_anchors, int) or num_anchors < 1:
        raise TypeError(f"num_anchors must be an int >= 1, got {num_anchors!r}")
    N, total, K = cls_logits.shape
    sizes = [f.shape[-2] * f.shape[-1] * num_anchors for f in maps]
    if sum(sizes) != total or any(f.shape[0] != N for f in maps):
        raise ValueError(f"cls_logits {tuple(cls_logits.shape)} does not fit features of sizes "
                         f"{[tuple(f.shape[-2:]) for f in maps]} with {num_anchors} anchors per "
                         f"position and batch size {[f.shape[0] for f in maps]}: expected "
                         f"({N}, {sum(sizes)}, K)")
    out = []
    for chunk, f in zip(cls_logits.split(sizes, dim=1), maps):
        H, W = f.shape[-2:]
        out.append(chunk.reshape(N, H, W, num_anchors, K).permute(0, 3, 4, 1, 2)
                   .reshape(N, num_anchors * K, H, W))
    return out


def probability_maps(cls_logits: Tensor, features, num_anchors: int) -> list[Tensor]:
    """Per level, the classification probabilities (N, A*K, H_l, W_l): sigmoid of level_maps.

    What ``PFILoss`` reads as probs (papers/002, eq. 7 averages over this axis).
    """
    return [m.sigmoid() for m in level_maps(cls_logits, features, num_anchors)]


def _anchor_config(model) -> dict:
    gen = getattr(model, "anchor_generator", None)
    if gen is None:
        raise TypeError(f"{type(model).__name__} has no anchor_generator: a torchvision "
                        "RetinaNet is needed")
    head = model.head.classification_head
    return {"generator": type(gen).__name__,
            **{k: getattr(gen, k, None) for k in ANCHOR_KEYS},
            "num_anchors": head.num_anchors, "num_classes": head.num_classes}


def check_same_anchors(student, teacher) -> None:
    """ValueError unless both RetinaNets place the same anchors and score the same classes.

    With the same transformed batch and FPN strides, the teacher's cls_logits then
    score the student's anchors, row for row.
    """
    s, t = _anchor_config(student), _anchor_config(teacher)
    bad = [k for k in s if s[k] != t[k]]
    if bad:
        raise ValueError("student and teacher must use the same anchors and classes; they "
                         f"differ in {', '.join(f'{k} ({s[k]!r} vs {t[k]!r})' for k in bad)}")


def _check_targets(anchors, targets) -> None:
    if not isinstance(anchors, Sequence) or not all(isinstance(a, Tensor) for a in anchors):
        raise TypeError("anchors must be a list of (A, 4) tensors, one per image "
                        "(model.anchor_generator(images, features))")
    if not isinstance(targets, Sequence) or not all(isinstance(t, Mapping) for t in targets):
        raise TypeError("targets must be a list of dicts with 'boxes' and 'labels'")
    if len(anchors) != len(targets):
        raise ValueError(f"anchors has {len(anchors)} images, targets {len(targets)}")
    for k, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{k}] needs 'boxes' and 'labels'")


def match_anchors(model, anchors: Sequence[Tensor], targets) -> list[Tensor]:
    """Per image, the matched box index of every anchor, as RetinaNet's loss assigns them.

    ``model.proposal_matcher`` on ``box_iou(boxes, anchors)``; >= 0 is positive,
    -1 negative, -2 ignored; an image without boxes gets -1 everywhere. Pass the
    result to ``model.head.compute_loss`` too, so the task loss matches only once.
    """
    from torchvision.ops import box_iou
    _check_targets(anchors, targets)
    matcher = getattr(model, "proposal_matcher", None)
    if matcher is None:
        raise TypeError(f"{type(model).__name__} has no proposal_matcher: a torchvision "
                        "RetinaNet is needed")
    out = []
    for a, t in zip(anchors, targets):
        if t["boxes"].numel() == 0:
            out.append(torch.full((a.shape[0],), -1, dtype=torch.int64, device=a.device))
        else:
            out.append(matcher(box_iou(t["boxes"], a)))
    return out


def positive_anchors(matched_idxs: Sequence[Tensor], targets) -> Positives:
    """The positive anchors of every image, flat; instance ids count boxes across images."""
    _check_targets(matched_idxs, targets)
    if not targets:
        raise ValueError("targets is empty: a batch of at least one image is needed")
    parts, offset = [], 0
    for n, (m, t) in enumerate(zip(matched_idxs, targets)):
        anchor = torch.nonzero(m >= 0).squeeze(1)
        box = m[anchor]
        parts.append((torch.full_like(anchor, n), anchor, box + offset,
                      t["labels"].to(anchor.device, torch.int64)[box]))
        offset += t["boxes"].reshape(-1, 4).shape[0]
    return Positives(*(torch.cat(p) for p in zip(*parts)))


def _check_logit_pair(cls_logits_S, cls_logits_T, anchors) -> None:
    _check_logits("cls_logits_S", cls_logits_S)
    _check_logits("cls_logits_T", cls_logits_T)
    if cls_logits_S.shape != cls_logits_T.shape:
        raise ValueError(f"cls_logits_S {tuple(cls_logits_S.shape)} and cls_logits_T "
                         f"{tuple(cls_logits_T.shape)} differ: student and teacher must score "
                         "the same anchors (same batch, anchor generator and classes)")
    N, A = cls_logits_S.shape[:2]
    rows = [a.shape[0] for a in anchors]
    if len(rows) != N or any(r != A for r in rows):
        raise ValueError(f"anchors ({len(rows)} images of {sorted(set(rows))} anchors) do not "
                         f"fit cls_logits of {N} images and {A} anchors")


def rank_mimicking_inputs(model, anchors, targets, cls_logits_S: Tensor, cls_logits_T: Tensor,
                          *, teacher=None, matched_idxs=None):
    """(scores_S, scores_T, instance_ids): flat (P,) inputs of ``RankMimickingLoss``.

    ``model``: the student RetinaNet (its matcher); ``anchors``: its anchors of
    the batch; ``cls_logits_S`` / ``cls_logits_T``: the heads' cls_logits on the
    same transformed batch. ``teacher``: checked with check_same_anchors when
    given. ``matched_idxs``: match_anchors' result, when already computed. The
    teacher's scores are detached; images without boxes contribute nothing.
    """
    if teacher is not None:
        check_same_anchors(model, teacher)
    _check_targets(anchors, targets)
    _check_logit_pair(cls_logits_S, cls_logits_T, anchors)
    if matched_idxs is None:
        matched_idxs = match_anchors(model, anchors, targets)
    pos = positive_anchors(matched_idxs, targets)
    index = (pos.image, pos.anchor, pos.label)
    return cls_logits_S[index], cls_logits_T.detach()[index], pos.instance
