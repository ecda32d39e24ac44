"""The distillation losses of the distilled role: ``--distill`` (docs/training.md, "--distill").

``parse_choice`` reads ``fgd``, ``fkd``, ``pfi``, ``rm``, ``cwd``, ``pkd``, ``mgd``,
``none`` or a combination joined with ``+``; ``config`` turns the flags into the
settings saved in the checkpoint; ``build`` makes the other losses' modules (FGD keeps
its own, fgdkern.train.roles.build_fgd); the ``*_terms`` functions compute each
loss's logged terms from one student pass and one teacher pass
(fgdkern.train.engine.TrainStep).
"""
from __future__ import annotations

import torch
from torch import nn

import fgdkern
from fgdkern import retinanet
from fgdkern.losses import fkd as fkd_module

LOSSES = ("fgd", "fkd", "pfi", "rm", "cwd", "pkd", "mgd")   # also a combination's name order
NONE = "none"
# PFI and RM read RetinaNet's classification head (papers/002: one-stage detectors).
HEAD_LOSSES = ("pfi", "rm")
# The FKD preset of each architecture (docs/fkd.md, "Presets").
FKD_DETECTOR = {"retinanet": "one_stage", "fasterrcnn": "two_stage"}
# The flags that belong to each loss (dest names): given without the loss, they are unused.
FLAGS = {
    "fgd": ("fgd_temp", "alpha_fgd", "beta_fgd", "gamma_fgd", "lambda_fgd", "fgd_levels",
            "fgd_backend"),
    "fkd": ("fkd_variant", "fkd_temp", "alpha_fkd", "beta_fkd", "gamma_fkd", "fkd_levels",
            "fkd_backend"),
    "pfi": ("pfi_weight", "pfi_backend"),
    "rm": ("rm_weight", "rm_backend"),
    "cwd": ("cwd_tau", "cwd_weight", "cwd_backend"),
    "pkd": ("pkd_weight", "pkd_backend"),
    "mgd": ("mgd_alpha", "mgd_lambda", "mgd_backend"),
}
# CWD, PKD and MGD distil every FPN level (torchvision's FPNs have 5 outputs).
FPN_LEVELS = 5
# PKD's weight in the published FPN configs of each architecture (docs/pkd.md, "Parameters").
PKD_WEIGHT = {"retinanet": 10.0, "fasterrcnn": 6.0}


def parse_choice(text: str) -> tuple[str, ...]:
    """``"pfi+rm"`` -> ("pfi", "rm") in LOSSES order; ``"none"`` -> (); ValueError otherwise."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"--distill must be one of {', '.join(LOSSES)}, {NONE} or a "
                         f"combination such as pfi+rm, got {text!r}")
    if text == NONE:
        return ()
    parts = text.split("+")
    unknown = [p for p in parts if p not in LOSSES]
    if unknown:
        raise ValueError(f"--distill {text}: unknown loss {unknown[0]!r} (choose from "
                         f"{', '.join(LOSSES)}, or {NONE} alone)")
    if len(set(parts)) != len(parts):
        raise ValueError(f"--distill {text}: a loss is named twice")
    return tuple(x for x in LOSSES if x in parts)


def name_of(losses) -> str:
    """The canonical ``--distill`` value of a tuple of losses."""
    return "+".join(losses) or NONE


def unused_flags(losses, given: dict) -> list[str]:
    """The loss flags given explicitly (not None in ``given``) for losses not chosen."""
    return [f"--{d.replace('_', '-')}" for loss, dests in FLAGS.items() if loss not in losses
            for d in dests if given.get(d) is not None]


def fkd_config(args, student_channels: int, teacher_channels: int) -> dict:
    """MultiLevelFKDLoss's settings: the architecture's preset, each value overridable."""
    detector = FKD_DETECTOR[args.arch]
    p = fkd_module.preset(detector)
    flags = dict(temp=args.fkd_temp, alpha=args.alpha_fkd, beta=args.beta_fkd,
                 gamma=args.gamma_fkd)
    p.update({k: v for k, v in flags.items() if v is not None})
    levels = args.fkd_levels or fgdkern.preset(
        "retinanet" if args.arch == "retinanet" else "two_stage")["num_levels"]
    return dict(detector=detector, num_levels=levels, student_channels=student_channels,
                teacher_channels=teacher_channels, variant=args.fkd_variant,
                backend=args.fkd_backend, **p)


def config(args, student_channels: int, teacher_channels: int) -> dict:
    """What the distilled role saves about its losses besides FGD (checkpoint meta)."""
    losses = parse_choice(args.distill)
    cfg = {"losses": list(losses)}
    if "fkd" in losses:
        cfg["fkd"] = fkd_config(args, student_channels, teacher_channels)
    if "pfi" in losses:
        cfg["pfi"] = dict(student_channels=student_channels, teacher_channels=teacher_channels,
                          loss_weight=args.pfi_weight, backend=args.pfi_backend)
    if "rm" in losses:
        cfg["rm"] = dict(loss_weight=args.rm_weight, backend=args.rm_backend)
    widths = dict(student_channels=student_channels, teacher_channels=teacher_channels)
    if "cwd" in losses:
        cfg["cwd"] = dict(widths, tau=args.cwd_tau, loss_weight=args.cwd_weight,
                          backend=args.cwd_backend)
    if "pkd" in losses:
        weight = args.pkd_weight if args.pkd_weight is not None else PKD_WEIGHT[args.arch]
        cfg["pkd"] = dict(widths, loss_weight=weight, backend=args.pkd_backend)
    if "mgd" in losses:
        cfg["mgd"] = dict(widths, alpha_mgd=args.mgd_alpha, lambda_mgd=args.mgd_lambda,
                          backend=args.mgd_backend)
    return cfg


class Connected(nn.Module):
    """A loss that compares channel c with channel c (CWD, PKD) behind a 1x1 conv per level
    that maps the student's FPN width to the teacher's where they differ (``connector``,
    as the published configs connect different widths; docs/training.md, "--distill")."""

    def __init__(self, loss: nn.Module, student_channels: int, teacher_channels: int):
        super().__init__()
        self.loss = loss
        self.connector = None if student_channels == teacher_channels else nn.ModuleList(
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
            for _ in range(FPN_LEVELS))

    def forward(self, feats_S: list, feats_T: list):
        if self.connector is not None:
            feats_S = [c(s) for c, s in zip(self.connector, feats_S)]
        return self.loss(feats_S, feats_T)


def _channel_losses(cfg: dict, out: nn.ModuleDict) -> None:
    for name, cls in (("cwd", fgdkern.CWDLoss), ("pkd", fgdkern.PKDLoss)):
        if name in cfg:
            kw = dict(cfg[name])
            widths = kw.pop("student_channels"), kw.pop("teacher_channels")
            out[name] = Connected(cls(**kw), *widths)
    if "mgd" in cfg:
        kw = dict(cfg["mgd"])
        widths = [[kw.pop(k)] * FPN_LEVELS for k in ("student_channels", "teacher_channels")]
        out["mgd"] = fgdkern.MGDLoss(*widths, **kw)   # one block pair per level


def build(cfg: dict) -> nn.ModuleDict:
    """The FKD, PFI, RM, CWD, PKD and MGD modules of ``config``'s result (ValueError on a
    bad value)."""
    out = nn.ModuleDict()
    if "fkd" in cfg:
        kw = {k: v for k, v in cfg["fkd"].items() if k != "detector"}
        out["fkd"] = fgdkern.MultiLevelFKDLoss(**kw)
    if "pfi" in cfg:
        out["pfi"] = fgdkern.PFILoss(**cfg["pfi"])
    if "rm" in cfg:
        out["rm"] = fgdkern.RankMimickingLoss(**cfg["rm"])
    _channel_losses(cfg, out)
    return out


def needs_head(losses) -> bool:
    """Whether the teacher's classification head runs too (PFI, RM)."""
    return any(x in HEAD_LOSSES for x in losses)


def teacher_logits(teacher: nn.Module, feats_T) -> torch.Tensor:
    """The teacher head's cls_logits (N, anchors, K); the caller runs it under no_grad."""
    return teacher.head.classification_head(list(feats_T.values()))


def fkd_terms(loss: nn.Module, feats_S, feats_T) -> dict:
    """"fkd/<term>": the weighted terms summed over levels (docs/fkd.md, "The code variant")."""
    return {f"fkd/{k}": v for k, v in loss.weighted_terms(feats_S, feats_T).items()}


def pfi_terms(loss: nn.Module, model, feats_S, feats_T, logits_S, logits_T) -> dict:
    """"pfi/imitation": loss_weight * Loss_PFI (papers/002, eq. 9) on every FPN level.

    The probabilities only weight the imitation (P_dif, eq. 7, is detached by the
    loss), so the student's are taken detached and build no graph.
    """
    A = model.head.classification_head.num_anchors
    probs_S = retinanet.probability_maps(logits_S.detach(), feats_S, A)
    probs_T = retinanet.probability_maps(logits_T, feats_T, A)
    return {"pfi/imitation": loss(feats_S, feats_T, probs_S, probs_T)}


def rm_terms(loss: nn.Module, model, head: dict, targets, logits_T) -> dict:
    """"rm/rank": loss_weight * Loss_RM (papers/002, eq. 6) over the positive anchors that
    RetinaNet's own loss assigned this step (head["matched_idxs"])."""
    scores_S, scores_T, ids = retinanet.rank_mimicking_inputs(
        model, head["anchors"], targets, head["outputs"]["cls_logits"], logits_T,
        matched_idxs=head["matched_idxs"])
    return {"rm/rank": loss(scores_S, scores_T, ids)}


# The logged term of each loss on the FPN levels (docs/cwd.md, pkd.md, mgd.md).
CHANNEL_TERMS = {"cwd": "cwd/kl", "pkd": "pkd/pearson", "mgd": "mgd/generation"}


def channel_terms(name: str, loss: nn.Module, feats_S, feats_T) -> dict:
    """"<loss>/<term>": the weighted loss summed over every FPN level."""
    return {CHANNEL_TERMS[name]: loss(list(feats_S.values()), list(feats_T.values()))}
