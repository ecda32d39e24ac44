"""FGDLoss (one FPN level) and MultiLevelFGDLoss (a whole pyramid, one fused call).

FGDLoss.forward -> fgd_pyramid_table (check, align, gather parameters) ->
fgdkern.ops.fgd.fgd_terms (masks, dispatch, fused passes or reference) ->
weighted sum. Parameter names and initialisation follow docs/fgd.md,
"Parameters and initialisation", so state dicts of the widely used FGD
implementations load.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fgdkern import _checks, _device
from fgdkern.ops import dispatch
from fgdkern.ops.fgd import fgd_terms
from fgdkern.ops.rasterize import check_border
from fgdkern.reference.fgd import FGDTerms, GcBlockParams
from fgdkern.reference.pfi import same_dtype

# docs/fgd.md, "Presets": (temp, alpha, beta, gamma, lambda, number of levels distilled)
PRESETS = {
    "two_stage": (0.5, 5e-5, 2.5e-5, 5e-5, 5e-7, 4),
    "retinanet": (0.5, 1e-3, 5e-4, 5e-4, 5e-6, 5),
    "reppoints": (0.5, 1.6e-3, 8e-4, 8e-4, 8e-6, 5),
    "fcos": (0.8, 1.6e-3, 8e-4, 8e-4, 8e-6, 5),
}
ALIASES = {"faster_rcnn": "two_stage", "mask_rcnn": "two_stage", "cascade_rcnn": "two_stage",
           "gfl": "retinanet", "solo": "retinanet", "anchor_free": "reppoints"}


def preset(detector: str) -> dict:
    """Hyper-parameters of the official FGD configs for a detector family (docs/fgd.md, "Presets")."""
    key = ALIASES.get(detector, detector)
    if key not in PRESETS:
        names = sorted(PRESETS) + sorted(ALIASES)
        raise ValueError(f"detector must be one of {names}, got {detector!r}")
    temp, alpha, beta, gamma, lam, levels = PRESETS[key]
    return dict(temp=temp, alpha_fgd=alpha, beta_fgd=beta, gamma_fgd=gamma, lambda_fgd=lam,
                num_levels=levels)


def _channel_add_conv(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels // 2, kernel_size=1),
        nn.LayerNorm([channels // 2, 1, 1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels // 2, channels, kernel_size=1),
    )


def fused_backend_available(backend: str) -> bool:
    """True when the fused FGD implementation ``backend`` ('cpp' or 'triton') is built here."""
    return dispatch.available("fgd", backend)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The FGD implementation that runs for ``backend`` on ``device`` (fgdkern.ops.dispatch)."""
    return dispatch.resolve("fgd", backend, device, dtype)


def gc_params(conv_mask: nn.Conv2d, channel_add_conv: nn.Sequential) -> GcBlockParams:
    """The tensors of one GcBlock, in the order fgdkern.reference.fgd.GcBlockParams names them."""
    conv1, norm, _, conv2 = channel_add_conv
    return GcBlockParams(conv_mask.weight, conv_mask.bias, conv1.weight, conv1.bias,
                         norm.weight, norm.bias, norm.eps, conv2.weight, conv2.bias)


def fgd_pyramid_terms(levels, feats_S, feats_T, gt_bboxes, img_shapes, backend: str,
                      check_finite: bool = False, border: str = "clip") -> list[FGDTerms]:
    """Unweighted FGD terms of every level; ``levels`` are FGDLoss modules (parameters)."""
    table = fgd_pyramid_table(levels, feats_S, feats_T, gt_bboxes, img_shapes, backend,
                              check_finite, border)
    return [FGDTerms(*row.unbind()) for row in table.unbind(0)]


def fgd_pyramid_table(levels, feats_S, feats_T, gt_bboxes, img_shapes, backend: str,
                      check_finite: bool = False, border: str = "clip") -> Tensor:
    """The unweighted FGD terms of every level as an (L, 4) table, a row per level in the
    order of FGDTerms; ``levels`` are FGDLoss modules (parameters).

    What is checked, and when: docs/fgd.md, "Validation".
    """
    if not _checks.is_compiling():
        _checks.check_pyramid(levels, feats_S, feats_T)
        for S, sfx in zip(feats_S, _checks.level_suffixes(len(levels))):
            _checks.check_batch(f"preds_S{sfx}", S.shape[0], gt_bboxes)
    S_list = [S if m.align is None else m.align(S) for m, S in zip(levels, feats_S)]
    pairs = [same_dtype(S, T.detach()) for S, T in zip(S_list, feats_T)]
    return fgd_terms(backend, [p[0] for p in pairs], [p[1] for p in pairs], gt_bboxes,
                     img_shapes, [m.gc_block("s") for m in levels],
                     [m.gc_block("t") for m in levels], [m.temp for m in levels], check_finite,
                     border)


def weighted_sum(levels, table: Tensor) -> Tensor:
    """(4,) the terms of an (L, 4) table weighted by each level's weights, summed over levels."""
    return weighted(levels, table).sum(0)


def weighted(levels, table: Tensor) -> Tensor:
    """The (L, 4) table times each level's weights: the loss is its sum (one reduction)."""
    return _device.device_values([m.weights() for m in levels], table.dtype, table.device) * table


class FGDLoss(nn.Module):
    """Focal and Global Distillation loss of one feature level (docs/fgd.md).

    forward(preds_S (N, Cs, H, W), preds_T (N, Ct, H, W), gt_bboxes: list of N
    (K_n, 4) xyxy pixel boxes, img_shapes: list of N (h, w)) -> float32 scalar
    alpha * fg_loss + beta * bg_loss + gamma * mask_loss + lambda * rela_loss.

    check_finite: raise ValueError when a feature or box is NaN or infinite
    (one host sync per call); by default such values propagate into the loss,
    as in PyTorch's own losses, so that an AMP GradScaler can skip the step
    (docs/fgd.md, "Validation"). border: "clip" (default) or "wrap", the
    widely used code's painting of boxes across the top or left border
    (docs/fgd.md, "Masks from boxes").
    """

    def __init__(self, student_channels: int, teacher_channels: int, temp: float = 0.5,
                 alpha_fgd: float = 1e-3, beta_fgd: float = 5e-4, gamma_fgd: float = 1e-3,
                 lambda_fgd: float = 5e-6, backend: str = "auto", check_finite: bool = False,
                 border: str = "clip"):
        super().__init__()
        dispatch.check_backend("fgd", backend)
        _checks.check_flag("check_finite", check_finite)
        check_border(border)
        for name, value, least in (("student_channels", student_channels, 1),
                                   ("teacher_channels", teacher_channels, 2)):
            if not isinstance(value, int) or value < least:  # the GcBlock MLP halves C
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if not temp > 0:
            raise ValueError(f"temp must be positive, got {temp!r}")
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.temp, self.backend, self.check_finite = float(temp), backend, check_finite
        self.border = border
        self.alpha_fgd, self.beta_fgd = alpha_fgd, beta_fgd
        self.gamma_fgd, self.lambda_fgd = gamma_fgd, lambda_fgd
        C = teacher_channels
        self.align = (nn.Conv2d(student_channels, C, kernel_size=1)
                      if student_channels != teacher_channels else None)
        self.conv_mask_s = nn.Conv2d(C, 1, kernel_size=1)
        self.conv_mask_t = nn.Conv2d(C, 1, kernel_size=1)
        self.channel_add_conv_s = _channel_add_conv(C)
        self.channel_add_conv_t = _channel_add_conv(C)
        self.reset_parameters()

    @classmethod
    def for_detector(cls, detector: str, student_channels: int, teacher_channels: int, **kwargs):
        """A loss with the official config of ``detector`` (docs/fgd.md, "Presets"); kwargs override."""
        params = preset(detector)
        params.pop("num_levels")
        return cls(student_channels, teacher_channels, **{**params, **kwargs})

    def reset_parameters(self) -> None:
        """conv_mask kaiming-normal fan_in, bias 0; last conv of each MLP zero (docs/fgd.md)."""
        for conv in (self.conv_mask_s, self.conv_mask_t):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in")
            nn.init.zeros_(conv.bias)
        for mlp in (self.channel_add_conv_s, self.channel_add_conv_t):
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)

    def gc_block(self, side: str) -> GcBlockParams:
        """The GcBlock parameters of the student ("s") or teacher ("t") side."""
        return gc_params(getattr(self, f"conv_mask_{side}"), getattr(self, f"channel_add_conv_{side}"))

    def weighted(self, terms: FGDTerms) -> Tensor:
        return sum(w * t for w, t in zip(self.weights(), terms))

    def weights(self) -> list[float]:
        """alpha_fgd, beta_fgd, gamma_fgd, lambda_fgd: the weights of the terms, in their order."""
        return [self.alpha_fgd, self.beta_fgd, self.gamma_fgd, self.lambda_fgd]

    def table(self, preds_S, preds_T, gt_bboxes, img_shapes) -> Tensor:
        """The unweighted terms as a (1, 4) table (fgd_pyramid_table)."""
        return fgd_pyramid_table([self], [preds_S], [preds_T], gt_bboxes, img_shapes,
                                 self.backend, self.check_finite, self.border)

    def terms(self, preds_S, preds_T, gt_bboxes, img_shapes) -> FGDTerms:
        """The four unweighted terms (fg_loss, bg_loss, mask_loss, rela_loss)."""
        return FGDTerms(*self.table(preds_S, preds_T, gt_bboxes, img_shapes)[0].unbind())

    def forward(self, preds_S, preds_T, gt_bboxes, img_shapes) -> Tensor:
        return weighted([self], self.table(preds_S, preds_T, gt_bboxes, img_shapes)).sum()

    def extra_repr(self) -> str:
        return (f"student_channels={self.student_channels}, teacher_channels="
                f"{self.teacher_channels}, temp={self.temp}, alpha_fgd={self.alpha_fgd}, "
                f"beta_fgd={self.beta_fgd}, gamma_fgd={self.gamma_fgd}, "
                f"lambda_fgd={self.lambda_fgd}, backend={self.backend!r}, border={self.border!r}")


class MultiLevelFGDLoss(nn.Module):
    """FGD over a feature pyramid: per-level parameters under ``levels.<k>.``, one fused call.

    feats_S / feats_T: sequences of per-level maps, or mappings such as a
    torchvision FPN OrderedDict (the first ``num_levels`` entries, in order).
    student_channels / teacher_channels: one int for every level, or one per level.
    The result is the sum of the per-level weighted losses (docs/fgd.md, "Multi-level and temperatures").
    """

    def __init__(self, num_levels: int, student_channels: int | Sequence[int],
                 teacher_channels: int | Sequence[int], temp: float = 0.5,
                 alpha_fgd: float = 1e-3, beta_fgd: float = 5e-4, gamma_fgd: float = 1e-3,
                 lambda_fgd: float = 5e-6, backend: str = "auto", check_finite: bool = False,
                 border: str = "clip"):
        super().__init__()
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels must be a positive int, got {num_levels!r}")
        widths_S = _checks.level_widths("student_channels", student_channels, num_levels)
        widths_T = _checks.level_widths("teacher_channels", teacher_channels, num_levels)
        self.num_levels, self.backend, self.check_finite = num_levels, backend, check_finite
        self.border = border
        self.levels = nn.ModuleList(
            FGDLoss(cs, ct, temp, alpha_fgd, beta_fgd, gamma_fgd, lambda_fgd, backend,
                    check_finite, border) for cs, ct in zip(widths_S, widths_T))

    @classmethod
    def for_detector(cls, detector: str, student_channels: int | Sequence[int],
                     teacher_channels: int | Sequence[int], **kwargs):
        """Official config of ``detector`` (docs/fgd.md, "Presets"), its number of levels unless given."""
        return cls(student_channels=student_channels, teacher_channels=teacher_channels,
                   **{**preset(detector), **kwargs})

    def table(self, feats_S, feats_T, gt_bboxes, img_shapes) -> Tensor:
        """Unweighted terms as an (L, 4) table, a row per level in the order of FGDTerms."""
        S = _checks.as_level_list("feats_S", feats_S, self.num_levels)
        T = _checks.as_level_list("feats_T", feats_T, self.num_levels)
        return fgd_pyramid_table(list(self.levels), S, T, gt_bboxes, img_shapes,
                                 self.backend, self.check_finite, self.border)

    def terms(self, feats_S, feats_T, gt_bboxes, img_shapes) -> list[FGDTerms]:
        """Unweighted terms per level."""
        table = self.table(feats_S, feats_T, gt_bboxes, img_shapes)
        return [FGDTerms(*row.unbind()) for row in table.unbind(0)]

    def weighted_terms(self, feats_S, feats_T, gt_bboxes, img_shapes) -> dict[str, Tensor]:
        """{"fg", "bg", "mask", "rela"}: each weighted term summed over levels (their sum
        is the loss), from one evaluation, e.g. to log them."""
        sums = weighted_sum(list(self.levels), self.table(feats_S, feats_T, gt_bboxes,
                                                          img_shapes)).unbind()
        return dict(zip(("fg", "bg", "mask", "rela"), sums))

    def forward(self, feats_S, feats_T, gt_bboxes, img_shapes) -> Tensor:
        table = self.table(feats_S, feats_T, gt_bboxes, img_shapes)
        return weighted(list(self.levels), table).sum()

    def load_fgd_checkpoint(self, checkpoint, strict: bool = True, name_pattern=None):
        """Load a checkpoint of the widely used FGD code (docs/fgd.md, "Checkpoints of the
        widely used code"): fgdkern.losses.fgd_checkpoint.load_fgd_checkpoint on this loss;
        name_pattern None is its default, ``<any prefix>loss_fgd_fpn_<k>.<param>``."""
        from fgdkern.losses import fgd_checkpoint
        return fgd_checkpoint.load_fgd_checkpoint(self, checkpoint, strict, name_pattern)

    def fgd_state_dict(self, prefix: str = "distill_losses.", name: str = "loss_fgd_fpn_{k}"):
        """The parameters in that code's layout, ``<prefix><name with k>.<param>`` on the CPU
        (fgdkern.losses.fgd_checkpoint.export_fgd_checkpoint)."""
        from fgdkern.losses import fgd_checkpoint
        return fgd_checkpoint.export_fgd_checkpoint(self, prefix, name)
