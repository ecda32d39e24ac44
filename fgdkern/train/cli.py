"""Command line of ``python -m fgdkern.train`` (docs/training.md, "Options").

parse_args: flags -> one namespace (flag, else preset value, else BASE),
validated with argparse errors (exit code 2). main: runs the roles
(fgdkern.train.roles) with the SIGTERM/SIGINT handlers of fgdkern.train.preempt
installed, and turns what the user can fix into one line on stderr and an exit
code: 2 for options, files and data (errors.UsageError, and an OSError naming a
file), 3 for a non-finite loss, 128 + the signal number when a signal stopped
the run. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from fgdkern.train import distill, errors, preempt, presets

EXIT_USAGE = 2  # as argparse
EXIT_NON_FINITE = 3


def _flag(group, *names, **kw):
    """An option whose default is None, so an explicit value can be told from a preset's."""
    kw.setdefault("default", None)
    group.add_argument(*names, **kw)


def _add_run(p) -> None:
    g = p.add_argument_group("run")
    _flag(g, "--preset", choices=sorted(presets.PRESETS), help=f"default {presets.DEFAULT}")
    _flag(g, "--role", choices=("all", "teacher", "student", "distilled"))
    _flag(g, "--out", "--output-dir", dest="out", metavar="DIR")
    _flag(g, "--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    _flag(g, "-j", "--workers", type=int, metavar="N", help="data loading processes")
    _flag(g, "--seed", type=int)
    _flag(g, "--resume", action="store_true", help="continue from <out>/<role>/checkpoint.pth")
    _flag(g, "--test-only", action="store_true", help="evaluate the roles' checkpoints only")
    _flag(g, "--print-freq", type=int, metavar="N")
    _flag(g, "--ckpt-every", type=int, metavar="N", help="checkpoint every N steps (0: end)")
    _flag(g, "--report-images", type=int, metavar="N", help="validation images in the PNG")
    _flag(g, "--attention-level", type=int, metavar="K", help="FPN level shown in the PNG")


def _add_data(p) -> None:
    g = p.add_argument_group("data")
    _flag(g, "--data-path", metavar="DIR",
          help="COCO layout: annotations/instances_{train,val}.json + images")
    _flag(g, "--data-cache", metavar="DIR", help="built-in dataset dir (default <out>/data)")
    _flag(g, "--num-train", type=int)
    _flag(g, "--num-val", type=int)
    _flag(g, "--image-size", type=int)
    _flag(g, "--data-seed", type=int)
    _flag(g, "--aspect-ratio-group-factor", type=int, metavar="K", help="-1: no grouping")
    _flag(g, "--strict-data", action="store_true",
          help="an image that is missing or cannot be decoded is an error (default: it is "
               "skipped with a warning)")


def _add_model(p) -> None:
    from fgdkern.train.models import ARCHS, BACKBONES, NORMS
    g = p.add_argument_group("models")
    _flag(g, "--arch", choices=ARCHS)
    names = ", ".join(BACKBONES)
    _flag(g, "--teacher-backbone", choices=BACKBONES, metavar="NAME", help=names)
    _flag(g, "--student-backbone", choices=BACKBONES, metavar="NAME", help="the same names")
    _flag(g, "--teacher-fpn-channels", type=int)
    _flag(g, "--student-fpn-channels", type=int)
    _flag(g, "--min-size", type=int)
    _flag(g, "--max-size", type=int)
    _flag(g, "--anchor-scale", type=float, help="anchor sizes = (32..512) x this")
    _flag(g, "--norm", choices=NORMS)
    _flag(g, "--trainable-backbone-layers", type=int, metavar="N")
    _flag(g, "--teacher", metavar="PATH", help="a trained teacher: skip training one")
    _flag(g, "--teacher-weights", metavar="PATH")
    _flag(g, "--teacher-weights-backbone", metavar="PATH")
    _flag(g, "--weights", metavar="PATH", help="initial student detector weights")
    _flag(g, "--weights-backbone", metavar="PATH", help="initial student backbone weights")


def _distill_choice(text: str) -> str:
    """--distill's value in canonical form (argparse turns the ValueError into exit code 2)."""
    try:
        return distill.name_of(distill.parse_choice(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_distill(p) -> None:
    g = p.add_argument_group("distillation")
    _flag(g, "--distill", type=_distill_choice, metavar="LOSSES",
          help="the distilled role's losses: fgd, fkd, pfi, rm, cwd, pkd, mgd, a combination "
               "joined with + (pfi+rm: the PFI/RM paper's), or none (no distilled role); "
               "default fgd")
    g = p.add_argument_group("FKD (--distill fkd)")
    _flag(g, "--fkd-variant", choices=("code", "paper"))
    _flag(g, "--fkd-temp", type=float)
    _flag(g, "--alpha-fkd", type=float)
    _flag(g, "--beta-fkd", type=float)
    _flag(g, "--gamma-fkd", type=float)
    _flag(g, "--fkd-levels", type=int, metavar="N")
    _flag(g, "--fkd-backend", choices=("auto", "reference", "fused", "triton", "cpp", "torch"))
    g = p.add_argument_group("PFI and RM (--distill pfi, rm; RetinaNet)")
    _flag(g, "--pfi-weight", type=float, help="PFI's loss weight (default 1.5)")
    _flag(g, "--pfi-backend", choices=("auto", "reference", "fused", "triton", "cpp", "torch"))
    _flag(g, "--rm-weight", type=float, help="RM's loss weight (default 4.0)")
    _flag(g, "--rm-backend", choices=("auto", "reference"))
    backends = ("auto", "reference", "fused", "triton", "cpp", "torch")
    g = p.add_argument_group("CWD, PKD and MGD (--distill cwd, pkd, mgd; every FPN level)")
    _flag(g, "--cwd-tau", type=float, help="CWD's temperature (default 1)")
    _flag(g, "--cwd-weight", type=float, help="CWD's loss weight (default 10)")
    _flag(g, "--cwd-backend", choices=backends)
    _flag(g, "--pkd-weight", type=float,
          help="PKD's loss weight (default 10 for RetinaNet, 6 for Faster R-CNN)")
    _flag(g, "--pkd-backend", choices=backends)
    _flag(g, "--mgd-alpha", type=float, help="MGD's alpha_mgd (default 2e-5)")
    _flag(g, "--mgd-lambda", type=float, help="MGD's drop rate lambda_mgd (default 0.65)")
    _flag(g, "--mgd-backend", choices=backends)


def _add_fgd(p) -> None:
    g = p.add_argument_group("FGD (--distill fgd)")
    _flag(g, "--fgd-temp", type=float)
    _flag(g, "--alpha-fgd", type=float)
    _flag(g, "--beta-fgd", type=float)
    _flag(g, "--gamma-fgd", type=float)
    _flag(g, "--lambda-fgd", type=float)
    _flag(g, "--fgd-levels", type=int, metavar="N")
    _flag(g, "--fgd-backend", choices=("auto", "reference", "fused", "triton", "cpp"))


def _add_optim(p) -> None:
    g = p.add_argument_group("optimisation")
    _flag(g, "-b", "--batch-size", type=int, help="images per process and step")
    _flag(g, "--epochs", type=int)
    _flag(g, "--steps", type=int, help="optimizer steps (overrides --epochs)")
    _flag(g, "--teacher-schedule", type=float, metavar="FACTOR",
          help="the teacher trains FACTOR x the steps (lr steps stretched alike)")
    _flag(g, "--lr", type=float)
    _flag(g, "--lr-steps", type=float, nargs="*", metavar="EPOCH", help="epochs of lr decay")
    _flag(g, "--lr-gamma", type=float)
    _flag(g, "--warmup-steps", type=int)
    _flag(g, "--warmup-factor", type=float)
    _flag(g, "--momentum", type=float)
    _flag(g, "--wd", "--weight-decay", dest="weight_decay", type=float)
    _flag(g, "--clip-grad", type=float, metavar="MAX_NORM", help="0: no clipping")
    _flag(g, "--amp", action="store_true", help="float16 (CUDA) / bfloat16 (CPU) autocast")
    _flag(g, "--eval-batch-size", type=int)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fgdkern.train",
        description="Train a teacher, a student and a distilled student (FGD, FKD, PFI, "
                    "RM); evaluate COCO "
                    "mAP; write report.json and report.png (docs/training.md).")
    for add in (_add_run, _add_data, _add_model, _add_distill, _add_fgd, _add_optim):
        add(p)
    return p


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Argument errors argparse cannot see alone (p.error exits with code 2)."""
    positive = ("batch_size", "num_train", "num_val", "image_size", "min_size", "max_size",
                "teacher_fpn_channels", "student_fpn_channels", "report_images")
    for name in positive:
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.steps is None and not a.epochs:
        p.error("give --steps or --epochs (>= 1)")
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps must be >= 1, got {a.steps}")
    for name in ("lr", "warmup_factor", "lr_gamma", "teacher_schedule"):
        if not getattr(a, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    for name in ("warmup_steps", "workers", "ckpt_every", "clip_grad", "weight_decay"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    if a.preset == "paper" and not a.data_path:
        p.error("--preset paper trains on COCO: give --data-path")
    if a.teacher and (a.teacher_weights or a.teacher_weights_backbone):
        p.error("--teacher gives a trained teacher; --teacher-weights/-backbone would be unused")
    if a.resume and a.test_only:
        p.error("--resume and --test-only exclude each other")
    _check_distill(p, a)


def _check_distill(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    losses = distill.parse_choice(a.distill)
    head = [x for x in losses if x in distill.HEAD_LOSSES]
    if head and a.arch != "retinanet":
        p.error(f"--distill {a.distill}: {'+'.join(head)} reads RetinaNet's classification "
                f"head; --arch {a.arch} has none (use fgd or fkd)")
    if not losses and a.role == "distilled":
        p.error("--role distilled needs a distillation loss, not --distill none")
    for name in ("pfi_weight", "rm_weight"):
        if not getattr(a, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    for name in ("alpha_fkd", "beta_fkd", "gamma_fkd"):
        if getattr(a, name) is not None and getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    for name in ("cwd_tau", "cwd_weight", "pkd_weight", "mgd_alpha"):
        if getattr(a, name) is not None and not getattr(a, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    if not 0 <= a.mgd_lambda < 1:
        p.error(f"--mgd-lambda must lie in [0, 1), got {a.mgd_lambda}")
    if a.fkd_temp is not None and not a.fkd_temp > 0:
        p.error(f"--fkd-temp must be positive, got {a.fkd_temp}")
    if a.fkd_levels is not None and not 1 <= a.fkd_levels <= 5:
        p.error(f"--fkd-levels must lie in 1..5 (the FPN has 5), got {a.fkd_levels}")


def parse_args(argv=None) -> argparse.Namespace:
    """The run's options: explicit flags over the preset's values over presets.BASE."""
    p = build_parser()
    given = p.parse_args(argv)
    preset = given.preset or presets.DEFAULT
    values = {**presets.BASE, **presets.PRESETS[preset]}
    values.update({k: v for k, v in vars(given).items() if v is not None})
    values["preset"] = preset
    args = argparse.Namespace(**values)
    if args.steps is not None and given.epochs is not None and given.steps is None:
        args.steps = None  # an explicit --epochs beats the preset's step count
    _check(p, args)
    unused = distill.unused_flags(distill.parse_choice(args.distill), vars(given))
    if unused:
        p.error(f"{', '.join(unused)}: unused with --distill {args.distill}")
    return args


def _error(message: str, code: int = EXIT_USAGE) -> int:
    print(f"fgdkern.train: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv=None) -> int:
    """Parse, run every requested role, write the report; the process exit code."""
    args = parse_args(argv)
    with preempt.Signals() as signals:
        try:
            return _run(args, signals)
        except errors.UsageError as exc:
            return _error(errors.one_line(exc))
        except OSError as exc:
            if exc.filename is None:
                raise  # not about a file: a bug until shown otherwise
            return _error(str(exc))  # e.g. "[Errno 13] Permission denied: 'out/report.json'"
        except preempt.Stopped as exc:
            if exc.show:
                print(f"fgdkern.train: {exc.line}", file=sys.stderr, flush=True)
            return exc.exit_code


def _run(args, signals: preempt.Signals) -> int:
    from fgdkern.train import require_all
    try:
        require_all()
    except ImportError as exc:  # the [train] extra is not installed
        raise errors.UsageError(str(exc)) from None
    from fgdkern.train import roles
    from fgdkern.train.engine import NonFiniteLossError
    try:
        roles.run(args, signals)
    except NonFiniteLossError as exc:
        return _error(str(exc), EXIT_NON_FINITE)
    return 0
