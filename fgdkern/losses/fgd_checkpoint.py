"""Checkpoints of the widely used FGD code: load them into MultiLevelFGDLoss, export to them.

That code keeps one loss module per distilled FPN level under
``distill_losses.<loss name>.`` with ``<loss name>`` = ``loss_fgd_fpn_<k>``,
and the parameter names below the level are ours (docs/fgd.md, "Parameters
and initialisation" and "Checkpoints of the widely used code"). Loading maps
``<any prefix>loss_fgd_fpn_<k>.<param>`` to ``levels.<k>.<param>`` by the
number ``k`` in the name, never by the order of the keys (the configs list
the levels 4, 3, 2, 1, 0).
"""
from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from fgdkern import _checks
from fgdkern.losses.fgd import MultiLevelFGDLoss

# Group 1: the level number k; group 2: the parameter name below the level.
DEFAULT_NAME_PATTERN = r"(?:.*\.)?loss_fgd_fpn_(\d+)\.(.+)"
DEFAULT_PREFIX = "distill_losses."
DEFAULT_NAME = "loss_fgd_fpn_{k}"
_EXAMPLES = 5  # how many checkpoint keys an error message shows


class FGDLoadResult(NamedTuple):
    """What a non-strict load left out, like ``nn.Module.load_state_dict``'s result.

    missing_keys: parameters of the loss (``levels.<k>.<param>``) the checkpoint
    did not provide; unexpected_keys: checkpoint keys (as written there) that
    matched the name pattern but name no parameter of the loss.
    """
    missing_keys: list
    unexpected_keys: list


def compile_name_pattern(name_pattern) -> re.Pattern:
    """``name_pattern`` as a regex with a level group and a parameter group.

    Accepted forms: a compiled pattern or a regex string with groups named
    ``level`` and ``param``, or with exactly two groups (level, parameter); or
    a loss-name template containing ``{k}`` such as ``"loss_fgd_p{k}"``, which
    matches ``<any prefix>loss_fgd_p<k>.<param>`` (the form export takes).
    """
    if name_pattern is None:
        name_pattern = DEFAULT_NAME_PATTERN
    if isinstance(name_pattern, str) and "{k}" in name_pattern:
        name_pattern = _template_regex(name_pattern)
    if isinstance(name_pattern, str):
        try:
            name_pattern = re.compile(name_pattern)
        except re.error as e:
            raise ValueError(f"name_pattern {name_pattern!r} is not a valid regex: {e}") from None
    if not isinstance(name_pattern, re.Pattern):
        raise TypeError("name_pattern must be a regex string, a compiled pattern or a template "
                        f"with '{{k}}', got {type(name_pattern).__name__}")
    named = {"level", "param"} <= set(name_pattern.groupindex)
    if not named and name_pattern.groups != 2:
        raise ValueError(f"name_pattern {name_pattern.pattern!r} must have groups named 'level' "
                         f"and 'param', or exactly two groups; it has {name_pattern.groups}")
    return name_pattern


def _template_regex(template: str) -> str:
    if template.count("{k}") != 1:
        raise ValueError(f"name_pattern template {template!r} must contain '{{k}}' exactly once")
    before, after = template.split("{k}")
    return rf"(?:.*\.)?{re.escape(before)}(\d+){re.escape(after)}\.(.+)"


def _split_key(pattern: re.Pattern, key: str):
    """(level, param) of a checkpoint key, or None when the key is not a loss key."""
    m = pattern.fullmatch(key)
    if m is None:
        return None
    level, param = (m["level"], m["param"]) if "level" in pattern.groupindex else m.groups()
    try:
        return int(level), param
    except (TypeError, ValueError):
        raise ValueError(f"name_pattern {pattern.pattern!r} matched {key!r} but its level group "
                         f"gave {level!r}, not a level number") from None


def read_checkpoint(checkpoint) -> Mapping:
    """The flat state dict of ``checkpoint``: a path or a dict, with or without ``state_dict``."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = _torch_load(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise TypeError("checkpoint must be a path or a dict (a state dict, or a dict with "
                        f"'state_dict'), got {type(checkpoint).__name__}")
    inner = checkpoint.get("state_dict")
    return inner if isinstance(inner, Mapping) else checkpoint


def _torch_load(path):
    """torch.load on CPU, tensors and plain containers only (weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TypeError as e:
        if "weights_only" not in str(e):
            raise
    warnings.warn(f"torch {torch.__version__} has no weights_only option in torch.load, so "
                  f"{os.fspath(path)!r} is unpickled in full, which can run code from the "
                  "file: load only checkpoints you trust, or upgrade torch", stacklevel=3)
    return torch.load(path, map_location="cpu")


def _loss_entries(state: Mapping, pattern: re.Pattern) -> dict:
    """``levels.<k>.<param>`` -> (checkpoint key, tensor) for every key the pattern matches."""
    entries = {}
    for key, value in state.items():
        split = _split_key(pattern, key) if isinstance(key, str) else None
        if split is None:
            continue
        if not isinstance(value, Tensor):
            raise ValueError(f"checkpoint key {key!r} holds a {type(value).__name__}, not a tensor")
        target = f"levels.{split[0]}.{split[1]}"
        if target in entries:
            raise ValueError(f"checkpoint keys {entries[target][0]!r} and {key!r} both map to "
                             f"{target!r} (name_pattern {pattern.pattern!r})")
        entries[target] = (key, value)
    if not entries:
        examples = [k for k in state if isinstance(k, str)][:_EXAMPLES]
        raise ValueError(f"no checkpoint key matches name_pattern {pattern.pattern!r} (it has "
                         f"{len(state)} keys, e.g. {examples}); is the pattern the right one "
                         "for this checkpoint's loss names?")
    return entries


def _level_of(target: str) -> int:
    return int(target.split(".", 2)[1])


def _ranges(levels) -> str:
    """Sorted level numbers written compactly: 0..3, 5."""
    levels, parts, i = sorted(set(levels)), [], 0
    while i < len(levels):
        j = i
        while j + 1 < len(levels) and levels[j + 1] == levels[j] + 1:
            j += 1
        parts.append(str(levels[i]) if i == j else f"{levels[i]}..{levels[j]}")
        i = j + 1
    return ", ".join(parts) or "none"


def _mismatch_message(expected: dict, entries: dict, missing, unexpected, pattern) -> str:
    """Levels found vs expected, then per level the missing and unexpected parameters."""
    found = {_level_of(t) for t in entries}
    want = {_level_of(t) for t in expected}
    lines = [f"the checkpoint does not match the loss (name_pattern {pattern.pattern!r}): "
             f"it has levels {_ranges(found)} ({len(found)}), the loss has levels "
             f"{_ranges(want)} ({len(want)})"]
    for level in sorted({_level_of(t) for t in list(missing) + list(unexpected)}):
        miss = [t.split(".", 2)[2] for t in missing if _level_of(t) == level]
        extra = [entries[t][0] for t in unexpected if _level_of(t) == level]
        per_level = sum(1 for t in expected if _level_of(t) == level)
        if miss and len(miss) == per_level:
            lines.append(f"  level {level}: missing, all {per_level} parameters")
        elif miss:
            lines.append(f"  level {level}: missing {', '.join(miss)}")
        if extra:
            lines.append(f"  level {level}: unexpected {', '.join(extra)}")
    return "\n".join(lines)


def _check_shapes(expected: dict, entries: dict) -> None:
    """Shape mismatches are an error whatever ``strict`` says, as in load_state_dict."""
    bad = [f"{entries[t][0]!r} is {tuple(entries[t][1].shape)}, {t!r} of the loss is "
           f"{tuple(expected[t].shape)}"
           for t in entries if t in expected and entries[t][1].shape != expected[t].shape]
    if bad:
        more = f"; and {len(bad) - _EXAMPLES} more" if len(bad) > _EXAMPLES else ""
        raise ValueError(f"{len(bad)} checkpoint shapes differ from the loss's: "
                         + "; ".join(bad[:_EXAMPLES]) + more)


def load_fgd_checkpoint(loss: MultiLevelFGDLoss, checkpoint, strict: bool = True,
                        name_pattern=DEFAULT_NAME_PATTERN) -> FGDLoadResult:
    """Load the per-level loss parameters of a checkpoint of the widely used FGD code.

    checkpoint: a path (read with ``torch.load(map_location="cpu",
    weights_only=True)``) or a dict, with or without a top-level
    ``state_dict``. Keys matching ``name_pattern`` (see compile_name_pattern;
    default ``<any prefix>loss_fgd_fpn_<k>.<param>``) load into
    ``levels.<k>.<param>``; other keys (student, teacher) are ignored.
    strict=True: a ValueError when a parameter is missing or a matched key
    names none. strict=False: what matches loads and the rest is returned.
    No matching key at all, or a shape mismatch, is always a ValueError.
    """
    if not isinstance(loss, MultiLevelFGDLoss):
        raise TypeError(f"loss must be a fgdkern.MultiLevelFGDLoss, got {type(loss).__name__}")
    _checks.check_flag("strict", strict)
    pattern = compile_name_pattern(name_pattern)
    entries = _loss_entries(read_checkpoint(checkpoint), pattern)
    expected = loss.state_dict()
    missing = [t for t in expected if t not in entries]
    unexpected = sorted((t for t in entries if t not in expected), key=_level_of)
    _check_shapes(expected, entries)
    if strict and (missing or unexpected):
        raise ValueError(_mismatch_message(expected, entries, missing, unexpected, pattern))
    loss.load_state_dict({t: v for t, (_, v) in entries.items() if t in expected}, strict=False)
    return FGDLoadResult(missing, [entries[t][0] for t in unexpected])


def export_fgd_checkpoint(loss: MultiLevelFGDLoss, prefix: str = DEFAULT_PREFIX,
                          name: str = DEFAULT_NAME) -> "OrderedDict[str, Tensor]":
    """The loss's parameters as a flat state dict in the layout of the widely used code.

    ``levels.<k>.<param>`` becomes ``<prefix><name with k>.<param>``, by default
    ``distill_losses.loss_fgd_fpn_<k>.<param>``; the tensors are detached
    copies on the CPU. load_fgd_checkpoint(..., name_pattern=name) reads it back.
    """
    if not isinstance(loss, MultiLevelFGDLoss):
        raise TypeError(f"loss must be a fgdkern.MultiLevelFGDLoss, got {type(loss).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    if not isinstance(name, str) or name.count("{k}") != 1:
        raise ValueError(f"name must be a str containing '{{k}}' exactly once, got {name!r}")
    out = OrderedDict()
    for k, level in enumerate(loss.levels):
        base = prefix + name.replace("{k}", str(k))
        for param, value in level.state_dict().items():
            out[f"{base}.{param}"] = value.detach().to("cpu", copy=True)
    return out
