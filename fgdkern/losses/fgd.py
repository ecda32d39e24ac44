"""FGDLoss (one FPN level) and MultiLevelFGDLoss (a whole pyramid, one fused call).

FGDLoss.forward -> fgd_pyramid_terms -> fgdkern.ops.fgd (fused passes) or
fgdkern.reference.fgd (ground truth). Parameter names and initialisation
follow SPEC 1.4, so state dicts of the widely used FGD implementations load.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fgdkern import _checks
from fgdkern._ext import HAS_EXT
from fgdkern.ops import fgd as fused
from fgdkern.ops.fgd import FGDTerms
from fgdkern.ops.rasterize import rasterize_boxes
from fgdkern.reference.fgd import fgd_reference

BACKENDS = ("auto", "reference", "fused", "triton", "cpp")

# SPEC 1.5: (temp, alpha, beta, gamma, lambda, number of levels distilled)
PRESETS = {
    "two_stage": (0.5, 5e-5, 2.5e-5, 5e-5, 5e-7, 4),
    "retinanet": (0.5, 1e-3, 5e-4, 5e-4, 5e-6, 5),
    "reppoints": (0.5, 1.6e-3, 8e-4, 8e-4, 8e-6, 5),
    "fcos": (0.8, 1.6e-3, 8e-4, 8e-4, 8e-6, 5),
}
ALIASES = {"faster_rcnn": "two_stage", "mask_rcnn": "two_stage", "cascade_rcnn": "two_stage",
           "gfl": "retinanet", "solo": "retinanet", "anchor_free": "reppoints"}


def preset(detector: str) -> dict:
    """Hyper-parameters of the official FGD configs for a detector family (SPEC 1.5)."""
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
    if backend == "cpp":
        return HAS_EXT and torch._C._dispatch_has_kernel_for_dispatch_key(
            "fgdkern::fgd_stats_cpp", "CPU")
    return fused.triton_available()


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The implementation that runs for ``backend`` on ``device`` (SPEC 3).

    The fused kernels read float16, bfloat16 and float32; float64 (used for
    gradcheck) runs on the reference under "auto".
    """
    if backend in ("reference", "torch"):  # "torch": the fused passes' PyTorch contract
        return backend
    if backend == "auto":
        wanted = {"cuda": "triton", "cpu": "cpp"}.get(device.type)
        ok = wanted and dtype != torch.float64 and fused_backend_available(wanted)
        return wanted if ok else "reference"
    if backend == "fused":
        backend = "triton" if device.type == "cuda" else "cpp"
    fused.check_backend_device(backend, device)
    if dtype == torch.float64:
        raise TypeError(f"backend={backend!r} reads float16, bfloat16 or float32 features, "
                        "got float64 (use backend='reference')")
    return backend


def _same_dtype(S: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
    """S and T in one dtype: both upcast (exactly) when they differ, a copy only then."""
    if S.dtype == T.dtype:
        return S, T
    dtype = torch.promote_types(torch.promote_types(S.dtype, T.dtype), torch.float32)
    return S.to(dtype), T.to(dtype)


def fgd_pyramid_terms(levels, feats_S, feats_T, gt_bboxes, img_shapes, backend: str,
                      validate: bool = True) -> list[FGDTerms]:
    """Unweighted FGD terms of every level; ``levels`` are FGDLoss modules (parameters)."""
    compiling = _checks.is_compiling()
    checking = validate and not compiling
    suffix = [f"[{k}]" if len(levels) > 1 else "" for k in range(len(levels))]
    if not compiling:
        for m, S, T, sfx in zip(levels, feats_S, feats_T, suffix):
            _checks.check_pair(S, T, m.student_channels, m.teacher_channels, sfx)
            if S.device != feats_S[0].device:
                raise ValueError(f"preds_S{sfx} is on {S.device} but preds_S[0] on "
                                 f"{feats_S[0].device}: every level must be on one device")
    S_list = [S if m.align is None else m.align(S) for m, S in zip(levels, feats_S)]
    T_list = [T.detach() for T in feats_T]
    pairs = [_same_dtype(S, T) for S, T in zip(S_list, T_list)]
    S_list, T_list = [p[0] for p in pairs], [p[1] for p in pairs]
    device = S_list[0].device
    masks = rasterize_boxes(gt_bboxes, img_shapes, [tuple(S.shape[-2:]) for S in S_list])
    fg = [f.to(device) for f, _ in masks]
    bg = [b.to(device) for _, b in masks]
    temp = levels[0].temp
    impl = resolve_backend(backend, device, S_list[0].dtype)
    if impl == "reference":
        if checking:
            for S, T, sfx in zip(S_list, T_list, suffix):
                _checks.check_finite(f"preds_S{sfx}", S)
                _checks.check_finite(f"preds_T{sfx}", T)
        return [fgd_reference(S, T, f, b, m, temp) for S, T, f, b, m in
                zip(S_list, T_list, fg, bg, levels)]
    w_s = [m.conv_mask_s.weight.reshape(-1).float() for m in levels]
    w_t = [m.conv_mask_t.weight.reshape(-1).float() for m in levels]
    b_s = [m.conv_mask_s.bias for m in levels]
    b_t = [m.conv_mask_t.bias for m in levels]
    with torch.autocast(device.type, enabled=False):
        pix, chan = fused.fgd_stats(impl, S_list, T_list, fg, bg, w_s, w_t, b_s, b_t, temp)
        if checking:
            _check_stats_finite(pix, suffix)
        return [fused.fgd_terms(p, c, m.channel_add_conv_s, m.channel_add_conv_t, temp)
                for p, c, m in zip(pix, chan, levels)]


def _check_stats_finite(pix: list[Tensor], suffix: list[str]) -> None:
    """A non-finite value in S (T) makes its per-pixel mean |S| (|T|) non-finite: one sync."""
    bad = torch.stack([~torch.isfinite(p[:, :2]).all((0, 2)) for p in pix]).cpu()
    for sfx, (bad_s, bad_t) in zip(suffix, bad.tolist()):
        for name, flag in ((f"preds_S{sfx}", bad_s), (f"preds_T{sfx}", bad_t)):
            if flag:
                raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


class FGDLoss(nn.Module):
    """Focal and Global Distillation loss of one feature level (SPEC 1, 3).

    forward(preds_S (N, Cs, H, W), preds_T (N, Ct, H, W), gt_bboxes: list of N
    (K_n, 4) xyxy pixel boxes, img_shapes: list of N (h, w)) -> float32 scalar
    alpha * fg_loss + beta * bg_loss + gamma * mask_loss + lambda * rela_loss.
    """

    def __init__(self, student_channels: int, teacher_channels: int, temp: float = 0.5,
                 alpha_fgd: float = 1e-3, beta_fgd: float = 5e-4, gamma_fgd: float = 1e-3,
                 lambda_fgd: float = 5e-6, backend: str = "auto", validate: bool = True):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for name, value, least in (("student_channels", student_channels, 1),
                                   ("teacher_channels", teacher_channels, 2)):
            if not isinstance(value, int) or value < least:  # the GcBlock MLP halves C
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if not temp > 0:
            raise ValueError(f"temp must be positive, got {temp!r}")
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.temp, self.backend, self.validate = float(temp), backend, validate
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
        """A loss with the official config of ``detector`` (SPEC 1.5); kwargs override."""
        params = preset(detector)
        params.pop("num_levels")
        return cls(student_channels, teacher_channels, **{**params, **kwargs})

    def reset_parameters(self) -> None:
        """SPEC 1.4: conv_mask kaiming-normal fan_in, bias 0; last conv of each MLP zero."""
        for conv in (self.conv_mask_s, self.conv_mask_t):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in")
            nn.init.zeros_(conv.bias)
        for mlp in (self.channel_add_conv_s, self.channel_add_conv_t):
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)

    def weighted(self, terms: FGDTerms) -> Tensor:
        return (self.alpha_fgd * terms.fg_loss + self.beta_fgd * terms.bg_loss
                + self.gamma_fgd * terms.mask_loss + self.lambda_fgd * terms.rela_loss)

    def terms(self, preds_S, preds_T, gt_bboxes, img_shapes) -> FGDTerms:
        """The four unweighted terms (fg_loss, bg_loss, mask_loss, rela_loss)."""
        return fgd_pyramid_terms([self], [preds_S], [preds_T], gt_bboxes, img_shapes,
                                 self.backend, self.validate)[0]

    def forward(self, preds_S, preds_T, gt_bboxes, img_shapes) -> Tensor:
        return self.weighted(self.terms(preds_S, preds_T, gt_bboxes, img_shapes))

    def extra_repr(self) -> str:
        return (f"student_channels={self.student_channels}, teacher_channels="
                f"{self.teacher_channels}, temp={self.temp}, alpha_fgd={self.alpha_fgd}, "
                f"beta_fgd={self.beta_fgd}, gamma_fgd={self.gamma_fgd}, "
                f"lambda_fgd={self.lambda_fgd}, backend={self.backend!r}")


class MultiLevelFGDLoss(nn.Module):
    """FGD over a feature pyramid: per-level parameters under ``levels.<k>.``, one fused call.

    feats_S / feats_T: sequences of per-level maps, or mappings such as a
    torchvision FPN OrderedDict (the first ``num_levels`` entries, in order).
    The result is the sum of the per-level weighted losses (SPEC 2).
    """

    def __init__(self, num_levels: int, student_channels: int, teacher_channels: int,
                 temp: float = 0.5, alpha_fgd: float = 1e-3, beta_fgd: float = 5e-4,
                 gamma_fgd: float = 1e-3, lambda_fgd: float = 5e-6, backend: str = "auto",
                 validate: bool = True):
        super().__init__()
        if not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels must be a positive int, got {num_levels!r}")
        self.num_levels, self.backend, self.validate = num_levels, backend, validate
        self.levels = nn.ModuleList(
            FGDLoss(student_channels, teacher_channels, temp, alpha_fgd, beta_fgd, gamma_fgd,
                    lambda_fgd, backend, validate) for _ in range(num_levels))

    @classmethod
    def for_detector(cls, detector: str, student_channels: int, teacher_channels: int, **kwargs):
        """Official config of ``detector`` (SPEC 1.5), its number of levels unless given."""
        return cls(student_channels=student_channels, teacher_channels=teacher_channels,
                   **{**preset(detector), **kwargs})

    def terms(self, feats_S, feats_T, gt_bboxes, img_shapes) -> list[FGDTerms]:
        """Unweighted terms per level."""
        S = _checks.as_level_list("feats_S", feats_S, self.num_levels)
        T = _checks.as_level_list("feats_T", feats_T, self.num_levels)
        return fgd_pyramid_terms(list(self.levels), S, T, gt_bboxes, img_shapes,
                                 self.backend, self.validate)

    def forward(self, feats_S, feats_T, gt_bboxes, img_shapes) -> Tensor:
        terms = self.terms(feats_S, feats_T, gt_bboxes, img_shapes)
        return sum(m.weighted(t) for m, t in zip(self.levels, terms))
