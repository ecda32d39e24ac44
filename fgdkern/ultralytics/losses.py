"""The losses the Ultralytics trainer can distil with, and how each reads a YOLO step.

Every entry builds an fgdkern loss for the widths of the maps that feed the
Detect heads of a student and a teacher (one map per stride), and turns one
training step into its weighted terms. A new loss that fits a YOLO neck is one
``register_loss`` call (docs/trainers.md, "Adding a loss to the trainer").
Nothing here imports Ultralytics.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor, nn

from fgdkern import targets
from fgdkern.losses import fkd
from fgdkern.losses.fgd import MultiLevelFGDLoss
from fgdkern.losses.fkd import MultiLevelFKDLoss
from fgdkern.losses.score_l2 import ScoreWeightedL2Loss
from fgdkern.ultralytics.necks import NeckCWD, NeckMGD, NeckPKD


class NeckStep(NamedTuple):
    """What a loss may read in one training step."""
    feats_S: list[Tensor]    # the student's maps that feed Detect, (N, C_l, H_l, W_l) per stride
    feats_T: list[Tensor]    # the teacher's, same strides (computed without gradient)
    batch: Mapping           # the preprocessed batch: "img", "batch_idx", "bboxes", "cls"
    teacher_head: object     # the teacher Detect head's output (its class scores)


@dataclass(frozen=True)
class NeckLoss:
    """A selectable loss: ``module(num_levels, widths_S, widths_T, **options)`` builds it,
    ``terms(module, step)`` gives its weighted terms (their sum is the distillation term)."""
    module: type
    terms: Callable[[nn.Module, NeckStep], dict]
    presets: Mapping[str, Mapping]       # name -> options; the first is the default
    sources: Mapping[str, str] = field(default_factory=dict)   # preset -> where it comes from


LOSSES: dict[str, NeckLoss] = {}


def register_loss(name: str, module: type, terms: Callable, presets: Mapping[str, Mapping],
                  sources: Mapping[str, str] | None = None) -> None:
    """Make ``name`` selectable: DistillationTrainer.with_loss(name, ...)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if not presets:
        raise ValueError(f"presets of {name!r} must name at least one set of options")
    LOSSES[name] = NeckLoss(module, terms, dict(presets), dict(sources or {}))


def teacher_scores(head_output, sizes) -> list[Tensor]:
    """Per stride (N, H, W): the teacher's highest class probability at each cell, read
    from its Detect output in eval mode (docs/score-l2.md, "The teacher's scores")."""
    preds = head_output[1] if isinstance(head_output, tuple) else head_output
    # an end-to-end head has two branches; Ultralytics averages their logits
    branches = [preds[b] for b in ("one2many", "one2one") if b in preds] or [preds]
    logits = sum(b["scores"] for b in branches) / len(branches)          # (N, nc, sum HW)
    parts = logits.detach().split([h * w for h, w in sizes], dim=-1)
    return [p.sigmoid().amax(1).reshape(-1, h, w) for p, (h, w) in zip(parts, sizes)]


def _fgd_terms(loss: MultiLevelFGDLoss, step: NeckStep) -> dict:
    boxes, shapes = targets.from_ultralytics(step.batch)   # letterboxed pixels: what the maps span
    return loss.weighted_terms(step.feats_S, step.feats_T, boxes, shapes)


def _score_l2_terms(loss: ScoreWeightedL2Loss, step: NeckStep) -> dict:
    sizes = [tuple(t.shape[-2:]) for t in step.feats_T]
    return {"score_l2": loss(step.feats_S, step.feats_T, teacher_scores(step.teacher_head, sizes))}


# docs/trainers.md, "Presets for YOLO": the published configs, and where a value is a
# starting point rather than a published one
register_loss("fgd", MultiLevelFGDLoss, _fgd_terms, {
    "ppyoloe": dict(temp=0.5, alpha_fgd=1e-3, beta_fgd=5e-4, gamma_fgd=5e-4, lambda_fgd=5e-6),
    "yolox": dict(temp=0.5, alpha_fgd=2e-3, beta_fgd=1e-3, gamma_fgd=1e-3, lambda_fgd=1e-5),
}, {"ppyoloe": "PaddleDetection, PP-YOLOE+ FGD distillation config",
    "yolox": "the FGD authors' YOLOX-L -> YOLOX-M config"})
register_loss("fkd", MultiLevelFKDLoss,
              lambda loss, step: loss.weighted_terms(step.feats_S, step.feats_T),
              {"one_stage": fkd.preset("one_stage")},
              {"one_stage": "the FKD paper's one-stage values; a starting point on YOLO"})
register_loss("score_l2", ScoreWeightedL2Loss, _score_l2_terms, {"ultralytics": dict(weight=6.0)},
              {"ultralytics": "Ultralytics' default dis=6.0 of its built-in distillation"})
for _name, _module, _presets, _sources in (
        ("cwd", NeckCWD, {"rtmdet": dict(tau=1.0, loss_weight=1.0, normalize=True)},
         {"rtmdet": "mmyolo's RTMDet neck distillation configs"}),
        ("pkd", NeckPKD, {"retinanet": dict(loss_weight=10.0)},
         {"retinanet": "mmrazor's RetinaNet FPN config; a starting point on YOLO"}),
        ("mgd", NeckMGD, {"retinanet": dict(alpha_mgd=2e-5, lambda_mgd=0.65)},
         {"retinanet": "the MGD authors' RetinaNet config; a starting point on YOLO"})):
    register_loss(_name, _module,
                  lambda loss, step, name=_name: {name: loss(step.feats_S, step.feats_T)},
                  _presets, _sources)


@dataclass(frozen=True)
class LossConfig:
    """A loss of LOSSES, a preset of it and options that override the preset."""
    name: str
    preset: str
    options: Mapping

    def kwargs(self) -> dict:
        return {**LOSSES[self.name].presets[self.preset], **self.options}

    def build(self, widths_S: list[int], widths_T: list[int]) -> nn.Module:
        """The loss for these widths, one per stride."""
        return LOSSES[self.name].module(len(widths_S), widths_S, widths_T, **self.kwargs())

    def as_record(self) -> dict:
        """Plain data, for a checkpoint that loads without fgdkern."""
        return {"loss": self.name, "preset": self.preset, "options": dict(self.options)}


def _plain(value) -> bool:
    """What a checkpoint can hold and load without unpickling code."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def loss_config(loss: str = "fgd", preset: str | None = None, **options) -> LossConfig:
    """Check a choice of loss, preset and options (ValueError/TypeError naming the argument)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    entry = LOSSES[loss]
    preset = next(iter(entry.presets)) if preset is None else preset
    if preset not in entry.presets:
        raise ValueError(f"preset of {loss!r} must be one of {sorted(entry.presets)}, "
                         f"got {preset!r}")
    known = list(inspect.signature(entry.module).parameters)[3:]   # after num_levels and widths
    for key, value in options.items():
        if key not in known:
            raise TypeError(f"{key!r} is not an option of {loss!r}; its options: {known}")
        if not _plain(value):
            raise TypeError(f"option {key}={value!r}: use numbers, strings, bools or lists "
                            "(it is saved with the run)")
    return LossConfig(loss, preset, dict(options))
