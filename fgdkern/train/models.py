"""Detectors of the training script: torchvision RetinaNet and Faster R-CNN on ResNet-FPN.

``DetectorConfig`` says what to build (it is stored in every checkpoint so the
model can be rebuilt); ``build_detector`` builds it; ``task_losses`` runs the
detection head and its losses on FPN features computed by the caller, so one
backbone pass serves both the detector and the FGD loss (docs/training.md,
"One student pass").
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from fgdkern.train import require
from fgdkern.train.checkpoint import load_given
from fgdkern.train.errors import UsageError, brief

ARCHS = ("retinanet", "fasterrcnn")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
             "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
NORMS = ("auto", "group", "frozen_bn")
# The FGD preset of each architecture (docs/fgd.md, "Presets").
FGD_DETECTOR = {"retinanet": "retinanet", "fasterrcnn": "two_stage"}


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that decides a detector's architecture (not its weights' values)."""
    arch: str = "retinanet"
    backbone: str = "resnet50"
    num_classes: int = 91
    fpn_channels: int = 256
    min_size: int = 800
    max_size: int = 1333
    anchor_scale: float = 1.0
    norm: str = "group"
    trainable_layers: int = 5

    def __post_init__(self):
        for name, value, allowed in (("arch", self.arch, ARCHS),
                                     ("backbone", self.backbone, BACKBONES),
                                     ("norm", self.norm, NORMS[1:])):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not isinstance(self.fpn_channels, int) or self.fpn_channels < 2:
            raise ValueError(f"fpn_channels must be an int >= 2, got {self.fpn_channels!r}")
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"trainable_layers must lie in 0..5, got {self.trainable_layers}")
        if not self.anchor_scale > 0:
            raise ValueError(f"anchor_scale must be positive, got {self.anchor_scale}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_norm(norm: str, weights_backbone) -> str:
    """"auto": GroupNorm from scratch, FrozenBatchNorm2d under pretrained backbone weights."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "auto":
        return "frozen_bn" if weights_backbone else "group"
    return norm


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when ``channels`` is not a multiple of 32)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _norm_layer(norm: str):
    ops = require("torchvision.ops")
    return group_norm if norm == "group" else ops.FrozenBatchNorm2d


def load_state(path: str, what: str) -> dict:
    """A state dict from a local file (a bare state dict, or a checkpoint's "model" entry)."""
    state = load_given(path, what)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UsageError(f"{what}: {path!r} does not hold a state dict")
    return state


def _resnet(cfg: DetectorConfig, weights_backbone):
    """The torchvision ResNet trunk, its normalisation layers, frozen stages as in torchvision."""
    models = require("torchvision.models")
    # From scratch, each residual branch starts at zero (its last norm's weight), so every
    # block starts as the identity; pretrained weights overwrite this.
    body = getattr(models, cfg.backbone)(weights=None, norm_layer=_norm_layer(cfg.norm),
                                         zero_init_residual=cfg.norm == "group")
    if weights_backbone:
        state = {k: v for k, v in load_state(weights_backbone, "--weights-backbone").items()
                 if not k.startswith("fc.")}
        missing, unexpected = body.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise UsageError(f"--weights-backbone {weights_backbone!r} does not fit "
                             f"{cfg.backbone}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:cfg.trainable_layers]
    if cfg.trainable_layers == 5:
        trained.append("bn1")
    for name, p in body.named_parameters():
        p.requires_grad_(any(name.startswith(t) for t in trained))
    return body


def build_backbone(cfg: DetectorConfig, weights_backbone=None):
    """ResNet + FPN: P3-P7 for RetinaNet (LastLevelP6P7), P2-P5 + pool for Faster R-CNN.

    norm "group": GroupNorm in the ResNet (and RetinaNet's head), as detectors trained
    from scratch use; "frozen_bn": torchvision's set-up for pretrained backbones.
    """
    require("torchvision")
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import feature_pyramid_network as fpn

    body = _resnet(cfg, weights_backbone)
    returned = [2, 3, 4] if cfg.arch == "retinanet" else [1, 2, 3, 4]
    stage2 = body.inplanes // 8  # the channels of layer1's output
    in_channels = [stage2 * 2 ** (i - 1) for i in returned]
    extra = (fpn.LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels) if cfg.arch == "retinanet"
             else fpn.LastLevelMaxPool())
    # No norm layer in the FPN, as in torchvision and mmdet: GroupNorm there squeezes the
    # spatial spread of mean_c |F| that FGD's attention reads (docs/training-runs.md,
    # "Findings on the small preset").
    return BackboneWithFPN(body, {f"layer{k}": str(v) for v, k in enumerate(returned)},
                           in_channels, cfg.fpn_channels, extra_blocks=extra)


def _retinanet(cfg: DetectorConfig, backbone):
    from torchvision.models.detection import retinanet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    s = cfg.anchor_scale
    sizes = tuple(tuple(x * s * 2 ** (i / 3) for i in range(3)) for x in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = retinanet.RetinaNetHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0],
                                   cfg.num_classes, norm_layer=group_norm)
    return retinanet.RetinaNet(backbone, cfg.num_classes, min_size=cfg.min_size,
                               max_size=cfg.max_size, anchor_generator=anchors, head=head)


def _fasterrcnn(cfg: DetectorConfig, backbone):
    from torchvision.models.detection import faster_rcnn
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple((x * cfg.anchor_scale,) for x in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return faster_rcnn.FasterRCNN(backbone, cfg.num_classes, min_size=cfg.min_size,
                                  max_size=cfg.max_size, rpn_anchor_generator=anchors)


def build_detector(cfg: DetectorConfig, weights=None, weights_backbone=None) -> nn.Module:
    """The detector of ``cfg``; ``weights`` / ``weights_backbone``: local state-dict files."""
    backbone = build_backbone(cfg, None if weights else weights_backbone)
    model = (_retinanet if cfg.arch == "retinanet" else _fasterrcnn)(cfg, backbone)
    if weights:
        load_weights(model, load_state(weights, "--weights"), cfg, f"--weights {weights!r}")
    return model


def load_weights(model: nn.Module, state: dict, cfg: DetectorConfig, given: str) -> None:
    """``model.load_state_dict(state)``; UsageError naming ``given`` (the option and its file)
    when the weights do not fit ``cfg``."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:  # names or shapes that do not fit
        raise UsageError(f"{given} does not fit a {cfg.arch} {cfg.backbone} with "
                         f"{cfg.fpn_channels} FPN channels: {brief(exc, 300)}") from None


def task_losses(model: nn.Module, images, features: "OrderedDict[str, torch.Tensor]",
                targets, keep: dict | None = None) -> dict:
    """The detector's training losses from FPN ``features`` of the transformed ``images``.

    RetinaNet: head, anchor_generator, the matches of its compute_loss
    (fgdkern.retinanet.match_anchors), the head's losses; ``keep``, when given,
    receives "outputs" (the head's), "anchors" and "matched_idxs" for the
    distillation losses that read them. Faster R-CNN: rpn, roi_heads.
    """
    if hasattr(model, "rpn"):
        proposals, rpn_losses = model.rpn(images, features, targets)
        _, roi_losses = model.roi_heads(features, proposals, images.image_sizes, targets)
        return {**rpn_losses, **roi_losses}
    from fgdkern import retinanet
    feats = list(features.values())
    head_outputs = model.head(feats)
    anchors = model.anchor_generator(images, feats)
    matched = retinanet.match_anchors(model, anchors, targets)
    if keep is not None:
        keep.update(outputs=head_outputs, anchors=anchors, matched_idxs=matched)
    return model.head.compute_loss(targets, head_outputs, anchors, matched)


def check_same_transform(student: nn.Module, teacher: nn.Module) -> None:
    """The teacher reads the student's transformed batch: both transforms must agree."""
    keys = ("min_size", "max_size", "image_mean", "image_std", "size_divisible")
    s, t = student.transform, teacher.transform
    bad = [k for k in keys if getattr(s, k) != getattr(t, k)]
    if bad:
        raise ValueError(f"teacher and student resize/normalise images differently ({bad}): "
                         "give both the same --min-size / --max-size")


def fpn_level_names(model: nn.Module) -> list[str]:
    """The names of the FPN outputs, in order (RetinaNet: 0,1,2,p6,p7; Faster R-CNN: 0..3,pool)."""
    if hasattr(model, "rpn"):
        return ["0", "1", "2", "3", "pool"]
    return ["0", "1", "2", "p6", "p7"]
