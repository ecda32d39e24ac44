"""FKDLoss (one feature level) and MultiLevelFKDLoss (a pyramid, one op call for all levels).

FKDLoss.forward -> fkd_pyramid_table (check inputs, gather parameters) ->
fgdkern.ops.fkd.fkd_table (dispatch, imitation passes or reference) ->
weighted sum of the (L, K) table. What each term is, the parameter names and the presets:
docs/fkd.md.
"""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

from torch import Tensor, nn

from fgdkern import _checks
from fgdkern.ops import dispatch
from fgdkern import _device
from fgdkern.ops.fkd import check_variant, fkd_table
from fgdkern.reference.fkd import (CodeParams, FKDCodeTerms, FKDPaperTerms,
                                   NonLocalDistillParams, NonLocalParams, PaperParams,
                                   non_local)

# docs/fkd.md, "Presets" (the paper's section 4.1): temp, alpha, beta, gamma
PRESETS = {
    "one_stage": (0.5, 4e-4, 2e-2, 4e-4),
    "two_stage": (0.1, 7e-5, 4e-3, 7e-5),
}
# docs/fkd.md, "The code variant", "The paper variant": the weighted terms' names, weights
TERM_KEYS = {"code": ("feat", "channel", "spatial", "nonlocal"),
             "paper": ("at", "am", "nonlocal")}


def preset(detector: str) -> dict:
    """The paper's hyper-parameters for "one_stage" or "two_stage" detectors (docs/fkd.md)."""
    if detector not in PRESETS:
        raise ValueError(f"detector must be one of {sorted(PRESETS)}, got {detector!r}")
    return dict(zip(("temp", "alpha", "beta", "gamma"), PRESETS[detector]))


def _check_temp(temp) -> float:
    if isinstance(temp, bool) or not isinstance(temp, Real) or not temp > 0:
        raise ValueError(f"temp must be a positive number, got {temp!r}")
    return float(temp)


class NonLocalBlock2d(nn.Module):
    """The dot-product non-local block of L_NL (docs/fkd.md, "The non-local block").

    Parameter names as in the published code: ``g.0``, ``theta``, ``phi.0`` (1x1
    convs C -> inter), ``W.0`` (1x1 conv inter -> C), ``W.1`` (BatchNorm2d(C),
    weight and bias zero at initialisation). The max pool of keys and values
    holds no parameters and is chosen per map size (docs/fkd.md).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels, self.inter_channels = channels, max(channels // 2, 1)
        C, inter = channels, self.inter_channels
        self.g = nn.Sequential(nn.Conv2d(C, inter, kernel_size=1))
        self.theta = nn.Conv2d(C, inter, kernel_size=1)
        self.phi = nn.Sequential(nn.Conv2d(C, inter, kernel_size=1))
        self.W = nn.Sequential(nn.Conv2d(inter, C, kernel_size=1), nn.BatchNorm2d(C))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.g[0], self.theta, self.phi[0], self.W[0]):
            conv.reset_parameters()
        self.W[1].reset_parameters()
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def functional_params(self) -> NonLocalParams:
        """The tensors of the block for fgdkern.reference.fkd.non_local. In training mode
        this counts one batch in the BatchNorm, as its own forward would."""
        bn = self.W[1]
        momentum = bn.momentum
        if self.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative average, as nn.BatchNorm2d
                momentum = 1.0 / float(bn.num_batches_tracked)
        return NonLocalParams(self.theta.weight, self.theta.bias, self.phi[0].weight,
                              self.phi[0].bias, self.g[0].weight, self.g[0].bias,
                              self.W[0].weight, self.W[0].bias, bn.weight, bn.bias,
                              bn.running_mean, bn.running_var, float(momentum or 0.0),
                              bn.eps, self.training or bn.running_mean is None)

    def forward(self, x: Tensor) -> Tensor:
        return non_local(x, self.functional_params())


def fkd_pyramid_table(levels, feats_S, feats_T, backend: str,
                      check_finite: bool = False) -> Tensor:
    """The (L, K) unweighted terms (fgdkern.ops.fkd.fkd_table); ``levels`` are FKDLoss
    modules of one variant and one non_local setting."""
    if not _checks.is_compiling():
        _checks.check_pyramid(levels, feats_S, feats_T)
    return fkd_table(backend, levels[0].variant, list(feats_S), list(feats_T),
                     [m.adaptation_params() for m in levels],
                     [m.non_local_params() for m in levels], [m.temp for m in levels],
                     check_finite)


def fkd_pyramid_terms(levels, feats_S, feats_T, backend: str, check_finite: bool = False):
    """Unweighted FKD terms of every level (FKDCodeTerms or FKDPaperTerms; nonlocal_loss 0
    without the non-local term)."""
    table = fkd_pyramid_table(levels, feats_S, feats_T, backend, check_finite)
    kind = FKDCodeTerms if levels[0].variant == "code" else FKDPaperTerms
    missing = [table.new_zeros(())] * (len(kind._fields) - table.shape[1])
    return [kind(*row, *missing) for row in table]


def weighted_sums(levels, table: Tensor) -> dict[str, Tensor]:
    """Each weighted term of the (L, K) table summed over levels, by name (one multiply and
    one reduction for every level)."""
    weights = _device.device_values([m.weights() for m in levels], table.dtype, table.device)
    return dict(zip(levels[0].term_keys(), (weights * table).sum(0).unbind()))


class FKDLoss(nn.Module):
    """Feature-based knowledge distillation of one feature level (docs/fkd.md).

    forward(preds_S (N, Cs, H, W), preds_T (N, Ct, H, W)) -> float32 scalar:
    variant "code" (default, the published code): beta * feat + alpha * (channel
    + spatial) + gamma * nonlocal; variant "paper": alpha * L_AT (eq. 1) + beta *
    L_AM (eq. 2) + gamma * L_NLD. non_local=False leaves the non-local term and
    its layers out. check_finite: raise ValueError on NaN/Inf features (one host
    sync); by default they propagate into the loss.
    """

    def __init__(self, student_channels: int, teacher_channels: int, variant: str = "code",
                 temp: float = 0.5, alpha: float = 4e-4, beta: float = 2e-2,
                 gamma: float = 4e-4, non_local: bool = True, backend: str = "auto",
                 check_finite: bool = False):
        super().__init__()
        dispatch.check_backend("imitation", backend)
        check_variant(variant)
        _checks.check_flag("non_local", non_local)
        _checks.check_flag("check_finite", check_finite)
        for name, value in (("student_channels", student_channels),
                            ("teacher_channels", teacher_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.variant, self.temp, self.non_local = variant, _check_temp(temp), non_local
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.backend, self.check_finite = backend, check_finite
        Cs, Ct = student_channels, teacher_channels
        if variant == "code":
            self.adaptation = nn.Conv2d(Cs, Ct, kernel_size=1)
            self.channel_adaptation = nn.Linear(Cs, Ct)
            self.spatial_adaptation = nn.Conv2d(1, 1, kernel_size=3, padding=1)
        else:
            self.align = nn.Conv2d(Cs, Ct, kernel_size=1) if Cs != Ct else None
        if non_local:
            self.student_non_local = NonLocalBlock2d(Cs)
            self.teacher_non_local = NonLocalBlock2d(Ct)
            self.non_local_adaptation = nn.Conv2d(Cs, Ct, kernel_size=1)

    @classmethod
    def for_detector(cls, detector: str, student_channels: int, teacher_channels: int, **kwargs):
        """A loss with the paper's hyper-parameters for ``detector`` ("one_stage" or
        "two_stage", docs/fkd.md, "Presets"); kwargs override."""
        return cls(student_channels, teacher_channels, **{**preset(detector), **kwargs})

    def adaptation_params(self) -> CodeParams | PaperParams:
        """The adaptation layers of the variant as tensors (fgdkern.reference.fkd)."""
        if self.variant == "code":
            return CodeParams(self.adaptation.weight, self.adaptation.bias,
                              self.channel_adaptation.weight, self.channel_adaptation.bias,
                              self.spatial_adaptation.weight, self.spatial_adaptation.bias)
        if self.align is None:
            return PaperParams(None, None)
        return PaperParams(self.align.weight, self.align.bias)

    def non_local_params(self) -> NonLocalDistillParams | None:
        """L_NL's layers as tensors, None when non_local=False."""
        if not self.non_local:
            return None
        return NonLocalDistillParams(self.student_non_local.functional_params(),
                                     self.teacher_non_local.functional_params(),
                                     self.non_local_adaptation.weight,
                                     self.non_local_adaptation.bias)

    def term_keys(self) -> tuple[str, ...]:
        """The names of the weighted terms (docs/fkd.md, "The code variant"); no "nonlocal"
        when non_local=False."""
        return TERM_KEYS[self.variant][:None if self.non_local else -1]

    def weights(self) -> list[float]:
        """The weights of the terms, in term_keys order."""
        w = ([self.beta, self.alpha, self.alpha] if self.variant == "code"
             else [self.alpha, self.beta])
        return w + [self.gamma] * self.non_local

    def weighted_parts(self, terms: FKDCodeTerms | FKDPaperTerms) -> dict[str, Tensor]:
        """Weighted terms by name of one level's terms."""
        return {k: w * t for k, w, t in zip(self.term_keys(), self.weights(), terms)}

    def terms(self, preds_S: Tensor, preds_T: Tensor) -> FKDCodeTerms | FKDPaperTerms:
        """The unweighted terms of one evaluation (float32 scalars)."""
        return fkd_pyramid_terms([self], [preds_S], [preds_T], self.backend,
                                 self.check_finite)[0]

    def weighted_terms(self, preds_S: Tensor, preds_T: Tensor) -> dict[str, Tensor]:
        """The weighted terms of one evaluation; their sum is forward's value."""
        return weighted_sums([self], fkd_pyramid_table([self], [preds_S], [preds_T],
                                                       self.backend, self.check_finite))

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        return sum(self.weighted_terms(preds_S, preds_T).values())

    def extra_repr(self) -> str:
        return (f"student_channels={self.student_channels}, teacher_channels="
                f"{self.teacher_channels}, variant={self.variant!r}, temp={self.temp}, "
                f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
                f"non_local={self.non_local}, backend={self.backend!r}")


def _level_temps(temp, num_levels: int) -> list[float]:
    """One temperature per level: a number for all, or a sequence of num_levels."""
    if isinstance(temp, (list, tuple)):
        if len(temp) != num_levels:
            raise ValueError(f"temp has {len(temp)} values, the loss has {num_levels} levels")
        return [_check_temp(t) for t in temp]
    return [_check_temp(temp)] * num_levels


class MultiLevelFKDLoss(nn.Module):
    """FKD over a feature pyramid: per-level parameters under ``levels.<k>.``, one op call.

    feats_S / feats_T: sequences of per-level maps, or mappings such as a
    torchvision FPN OrderedDict (the first ``num_levels`` entries, in order).
    student_channels / teacher_channels and temp: one value for every level, or one per level. The result is the sum of the
    per-level weighted losses (docs/fkd.md, "Multi-level").
    """

    def __init__(self, num_levels: int, student_channels: int | Sequence[int],
                 teacher_channels: int | Sequence[int], variant: str = "code",
                 temp: float | list = 0.5, alpha: float = 4e-4, beta: float = 2e-2,
                 gamma: float = 4e-4, non_local: bool = True, backend: str = "auto",
                 check_finite: bool = False):
        super().__init__()
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels must be a positive int, got {num_levels!r}")
        temps = _level_temps(temp, num_levels)
        widths_S = _checks.level_widths("student_channels", student_channels, num_levels)
        widths_T = _checks.level_widths("teacher_channels", teacher_channels, num_levels)
        self.num_levels, self.variant = num_levels, variant
        self.backend, self.check_finite = backend, check_finite
        self.levels = nn.ModuleList(
            FKDLoss(cs, ct, variant, t, alpha, beta, gamma, non_local, backend, check_finite)
            for cs, ct, t in zip(widths_S, widths_T, temps))

    @classmethod
    def for_detector(cls, detector: str, num_levels: int, student_channels: int | Sequence[int],
                     teacher_channels: int | Sequence[int], **kwargs):
        """The paper's hyper-parameters for ``detector`` (docs/fkd.md, "Presets");
        kwargs override."""
        return cls(num_levels, student_channels, teacher_channels,
                   **{**preset(detector), **kwargs})

    def terms(self, feats_S, feats_T) -> list:
        """Unweighted terms per level (FKDCodeTerms or FKDPaperTerms)."""
        S = _checks.as_level_list("feats_S", feats_S, self.num_levels)
        T = _checks.as_level_list("feats_T", feats_T, self.num_levels)
        return fkd_pyramid_terms(list(self.levels), S, T, self.backend, self.check_finite)

    def weighted_terms(self, feats_S, feats_T) -> dict[str, Tensor]:
        """The weighted terms of one evaluation summed over levels; their sum is forward's value."""
        S = _checks.as_level_list("feats_S", feats_S, self.num_levels)
        T = _checks.as_level_list("feats_T", feats_T, self.num_levels)
        levels = list(self.levels)
        return weighted_sums(levels, fkd_pyramid_table(levels, S, T, self.backend,
                                                       self.check_finite))

    def forward(self, feats_S, feats_T) -> Tensor:
        return sum(self.weighted_terms(feats_S, feats_T).values())
