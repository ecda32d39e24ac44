"""Input validation shared by the loss modules: clear errors naming the argument."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _check_float_tensor(name: str, x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def check_feature(name: str, F, channels: int) -> None:
    _check_float_tensor(name, F)
    if F.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(F.shape)}")
    if F.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N == 0)")
    if F.shape[1] != channels:
        raise ValueError(f"{name} has {F.shape[1]} channels, the loss was built for {channels}")
    if F.shape[2] == 0 or F.shape[3] == 0:
        raise ValueError(f"{name} has an empty feature map, shape {tuple(F.shape)}")


def check_map(name: str, x) -> None:
    """x: a non-empty (N, C, H, W) float tensor of any width (losses that read maps whose
    channels are not fixed when they are built)."""
    _check_float_tensor(name, x)
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if 0 in x.shape:
        raise ValueError(f"{name} is empty, shape {tuple(x.shape)}")


def check_pair(S, T, student_channels: int, teacher_channels: int, level: str = "") -> None:
    """preds_S / preds_T of one level: types, shapes, devices."""
    s, t = f"preds_S{level}", f"preds_T{level}"
    check_feature(s, S, student_channels)
    check_feature(t, T, teacher_channels)
    if S.shape[0] != T.shape[0] or S.shape[2:] != T.shape[2:]:
        raise ValueError(f"{s} {tuple(S.shape)} and {t} {tuple(T.shape)} must have the same "
                         "batch size and spatial size")
    if S.device != T.device:
        raise ValueError(f"{s} is on {S.device} but {t} is on {T.device}")


def level_suffixes(levels: int) -> list[str]:
    """How errors name each level: "" for a single level, "[k]" for several."""
    return [f"[{k}]" if levels > 1 else "" for k in range(levels)]


def check_pyramid(levels, feats_S, feats_T) -> None:
    """preds_S / preds_T of every level (check_pair against the level module's
    student_channels / teacher_channels), all levels on the device of preds_S[0]."""
    for m, S, T, sfx in zip(levels, feats_S, feats_T, level_suffixes(len(levels))):
        check_pair(S, T, m.student_channels, m.teacher_channels, sfx)
        if S.device != feats_S[0].device:
            raise ValueError(f"preds_S{sfx} is on {S.device} but preds_S[0] on "
                             f"{feats_S[0].device}: every level must be on one device")


def level_widths(name: str, value, num_levels: int) -> list:
    """One channel count per level: one value for every level, or a sequence of num_levels
    ints (necks such as YOLO's widen with the stride). The level's loss checks each range."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * num_levels
    if len(value) != num_levels:
        raise ValueError(f"{name} has {len(value)} widths for {num_levels} levels: "
                         "give one per level, or one int for all")
    for k, width in enumerate(value):
        if isinstance(width, bool) or not isinstance(width, int):
            raise ValueError(f"{name}[{k}] must be an int, got {width!r}")
    return list(value)


def check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")


def check_batch(name: str, N: int, gt_bboxes) -> None:
    """The features' batch size N against the number of per-image box tensors."""
    if isinstance(gt_bboxes, (list, tuple)) and len(gt_bboxes) != N:
        raise ValueError(f"gt_bboxes has {len(gt_bboxes)} images but {name} has batch size "
                         f"{N}: pass one (K, 4) box tensor per image of the batch")


def check_finite(name: str, F: Tensor) -> None:
    if not bool(torch.isfinite(F).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def as_level_list(name: str, feats, num_levels: int) -> list:
    """A sequence, or a mapping such as a torchvision FPN OrderedDict (first levels in order)."""
    if isinstance(feats, Tensor):
        raise TypeError(f"{name} must be a list or dict of per-level tensors, got a single Tensor")
    if isinstance(feats, Mapping):
        feats = list(feats.values())
    elif isinstance(feats, Sequence):
        feats = list(feats)
    else:
        raise TypeError(f"{name} must be a list or dict of per-level tensors, "
                        f"got {type(feats).__name__}")
    if len(feats) < num_levels:
        raise ValueError(f"{name} has {len(feats)} levels, the loss was built for {num_levels}")
    return feats[:num_levels]
