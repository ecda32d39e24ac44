"""One invocation: data, then each role (build, train or reuse, evaluate), then the report.

Roles: "teacher" (the large detector), "student" (the small one, no
distillation) and "distilled" (the small one + the ``--distill`` losses against
the frozen teacher, fgdkern.train.distill). Student and distilled start from
the same weights and see the same batches in the same order for the same
number of steps, so their mAPs are comparable. Reads/writes
``<out>/<role>/{checkpoint.pth,log.jsonl}``, ``<out>/data`` (the built-in
dataset) and, on rank 0, the report files.
"""
from __future__ import annotations

import pathlib
import statistics
import time
from dataclasses import asdict, dataclass

import torch

import fgdkern
from fgdkern.train import checkpoint as ckpt
from fgdkern.train import distill, distributed, engine, logs, models, preempt
from fgdkern.train.errors import UsageError

ROLES = ("teacher", "student", "distilled")
MAX_WARNINGS = 20  # skipped images named one by one; a broken dataset is not a wall of lines


@dataclass
class Run:
    """What every role of one invocation shares."""
    args: object
    ctx: distributed.Context
    out: pathlib.Path
    train_set: object
    val_set: object
    train_loader: object
    val_loader: object
    schedules: dict  # role -> engine.Schedule
    data_meta: dict
    signals: preempt.Signals


def roles_needed(role: str, distill_choice: str = "fgd") -> list[str]:
    """--role all: the three (no distilled with --distill none); distilled needs its
    teacher; teacher/student alone."""
    roles = {"all": list(ROLES), "distilled": ["teacher", "distilled"]}.get(role, [role])
    return [r for r in roles if not (r == "distilled" and distill_choice == distill.NONE)]


def prepare_data(args, ctx: distributed.Context, out: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """The dataset root (the built-in one is made once, by rank 0) and what identifies it."""
    if args.data_path:
        root = pathlib.Path(args.data_path)
        if not (root / "annotations" / "instances_train.json").is_file():
            raise UsageError(f"--data-path {root}: no annotations/instances_train.json")
        return root, {"path": str(root.resolve())}
    from fgdkern.train.synthetic import make_synthetic_coco
    root = pathlib.Path(args.data_cache) if args.data_cache else out / "data"
    meta = {"synthetic": dict(num_train=args.num_train, num_val=args.num_val,
                              image_size=args.image_size, seed=args.data_seed)}
    if ctx.main:
        logs.say(f"data: built-in synthetic dataset in {root}")
        try:
            make_synthetic_coco(root, **meta["synthetic"])
        except FileExistsError as exc:  # --data-cache names a folder of other files
            raise UsageError(f"--data-cache: {exc}") from None
    distributed.barrier(ctx)
    return root, meta


def make_schedule(args, steps_per_epoch: int, factor: float = 1.0) -> engine.Schedule:
    """--steps (or --epochs x batches per epoch); --lr-steps are epochs, turned into steps.

    factor stretches the schedule (steps and lr milestones) as a "2x" schedule does.
    """
    steps = round(factor * (args.steps or args.epochs * steps_per_epoch))
    return engine.Schedule(
        steps=steps, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        lr_milestones=[round(factor * e * steps_per_epoch) for e in args.lr_steps],
        lr_gamma=args.lr_gamma, warmup_steps=args.warmup_steps,
        warmup_factor=args.warmup_factor, clip_grad=args.clip_grad, amp=args.amp,
        ckpt_every=args.ckpt_every, print_freq=args.print_freq, seed=args.seed)


def load_split(root: pathlib.Path, split: str, args, ctx: distributed.Context):
    """data.CocoDetection of one split; each image it skips (unreadable) said on stderr."""
    from fgdkern.train import data
    try:
        dataset = data.CocoDetection(root, split, train=split == "train", seed=args.seed,
                                     strict=args.strict_data)
    except FileNotFoundError as exc:  # no annotation file or image folder for the split
        raise UsageError(str(exc)) from None
    for line in dataset.skipped[:MAX_WARNINGS]:
        logs.warn(f"skipping image {line}", ctx.main)
    if len(dataset.skipped) > MAX_WARNINGS:
        logs.warn(f"... and {len(dataset.skipped) - MAX_WARNINGS} more {split} images skipped",
                  ctx.main)
    return dataset


def build_run(args, ctx: distributed.Context, signals: preempt.Signals) -> Run:
    from fgdkern.train import data
    out = pathlib.Path(args.out)
    root, data_meta = prepare_data(args, ctx, out)
    train_set = load_split(root, "train", args, ctx)
    val_set = load_split(root, "val", args, ctx)
    train_loader = data.build_loader(
        train_set, batch_size=args.batch_size, workers=args.workers, train=True, seed=args.seed,
        aspect_ratio_group_factor=args.aspect_ratio_group_factor, distributed=ctx.distributed)
    val_loader = data.build_loader(
        val_set, batch_size=args.eval_batch_size or args.batch_size, workers=args.workers,
        train=False, seed=args.seed, distributed=ctx.distributed)
    if len(train_loader) == 0:
        raise UsageError(f"the training set ({len(train_set)} images) has fewer images than "
                         f"one batch per process (-b {args.batch_size})")
    student = make_schedule(args, len(train_loader))
    schedules = {"teacher": make_schedule(args, len(train_loader), args.teacher_schedule),
                 "student": student, "distilled": student}
    return Run(args, ctx, out, train_set, val_set, train_loader, val_loader, schedules,
               data_meta, signals)


def model_config(args, role: str, num_classes: int) -> models.DetectorConfig:
    """The detector of ``role``: the teacher's or the student's backbone and FPN width."""
    teacher = role == "teacher"
    weights_backbone = args.teacher_weights_backbone if teacher else args.weights_backbone
    trainable = args.trainable_backbone_layers
    if trainable is None:
        trainable = 3 if weights_backbone else 5
    return models.DetectorConfig(
        arch=args.arch, backbone=args.teacher_backbone if teacher else args.student_backbone,
        num_classes=num_classes,
        fpn_channels=args.teacher_fpn_channels if teacher else args.student_fpn_channels,
        min_size=args.min_size, max_size=args.max_size, anchor_scale=args.anchor_scale,
        norm=models.resolve_norm(args.norm, weights_backbone), trainable_layers=trainable)


def fgd_config(args, student: models.DetectorConfig, teacher: models.DetectorConfig) -> dict:
    """The FGD loss: the architecture's official preset, each value overridable by a flag."""
    detector = models.FGD_DETECTOR[student.arch]
    p = fgdkern.preset(detector)
    flags = dict(temp=args.fgd_temp, alpha_fgd=args.alpha_fgd, beta_fgd=args.beta_fgd,
                 gamma_fgd=args.gamma_fgd, lambda_fgd=args.lambda_fgd,
                 num_levels=args.fgd_levels)
    p.update({k: v for k, v in flags.items() if v is not None})
    if not 1 <= p["num_levels"] <= 5:
        raise UsageError(f"--fgd-levels must lie in 1..5 (the FPN has 5), got {p['num_levels']}")
    return dict(detector=detector, student_channels=student.fpn_channels,
                teacher_channels=teacher.fpn_channels, backend=args.fgd_backend, **p)


def build_fgd(cfg: dict) -> torch.nn.Module:
    """MultiLevelFGDLoss from fgd_config (the engine stops on a non-finite loss itself)."""
    kw = {k: v for k, v in cfg.items() if k != "detector"}
    return fgdkern.MultiLevelFGDLoss.for_detector(cfg["detector"], **kw)


def load_teacher(path: str, cfg: models.DetectorConfig):
    """--teacher PATH: a checkpoint of this script (its own config) or a bare state dict."""
    state = ckpt.load_given(path, "--teacher")
    if isinstance(state, dict) and state.get("format") == ckpt.FORMAT:
        cfg = models.DetectorConfig.from_dict(state["model_config"])
        state = state["model"]
    model = models.build_detector(cfg)
    models.load_weights(model, state, cfg, f"--teacher {path!r}")
    return model, cfg


def _existing(run: Run, role: str):
    """The role's newest usable checkpoint (ckpt.Found), or None; a warning names each newer
    file passed over. Read only where it may be used: --resume, --test-only, the teacher."""
    args = run.args
    if not (args.resume or args.test_only or role == "teacher"):
        return None
    try:
        found = ckpt.latest(run.out / role)
    except ckpt.NoUsableCheckpoint as exc:
        if args.resume or args.test_only:
            raise UsageError(f"{role}: {exc}") from None
        logs.warn(f"{role}: {exc}; training it from scratch", run.ctx.main)
        return None
    if found is not None and not found.is_newest:
        logs.warn(f"{role}: {'; '.join(found.passed_over)}; using {found.path} "
                  f"(step {found.state['step']})", run.ctx.main)
    return found


def _same_training(state: dict, meta: dict) -> bool:
    return all(ckpt.saved(state, k) == meta[k]
               for k in ("model_config", "distill_config", "fgd_config", "schedule", "data"))


def decide(run: Run, role: str, state, meta: dict) -> str:
    """"train" (from scratch), "resume" (from the checkpoint) or "done" (reuse it)."""
    args = run.args
    if args.test_only:
        if state is None:
            raise UsageError(f"--test-only: no checkpoint {ckpt.path_of(run.out / role)}")
        return "done"
    if state is None:
        return "train"
    cached_teacher = role == "teacher" and _same_training(state, meta)
    if not (args.resume or cached_teacher):
        return "train"
    if state["step"] >= run.schedules[role].steps:
        return "done"
    return "resume"


def train_or_reuse(run: Run, role: str, step_module, meta: dict) -> str:
    """Trains ``step_module`` as the role's checkpoint says; returns how it was obtained."""
    role_dir = run.out / role
    found = _existing(run, role)
    state = found.state if found is not None else None
    how = decide(run, role, state, meta)
    trainer = engine.Trainer(role, step_module, run.train_loader, run.schedules[role], role_dir,
                             run.ctx, meta, run.signals)
    if how != "train":
        try:
            ckpt.check_compatible(state, meta, found.path)
        except ValueError as exc:  # a checkpoint of another configuration
            raise UsageError(str(exc)) from None
    if how == "done":
        ckpt.load_modules(state, step_module)
        logs.say(f"{role}: reusing {found.path} (step {state['step']})", run.ctx.main)
        return "cached" if role == "teacher" and not run.args.resume else "checkpoint"
    if how == "resume":
        trainer.resume(found)
        logs.say(f"{role}: resuming from step {trainer.pos.step}", run.ctx.main)
    else:
        ckpt.seed_everything(run.args.seed)
    trainer.run()
    return "resumed" if how == "resume" else "trained"


def build_role(run: Run, role: str, teacher=None, teacher_cfg=None):
    """The role's detector (and FGD loss) initialised from --seed; the meta saved with it."""
    args, num_classes = run.args, run.train_set.num_classes
    cfg = model_config(args, role, num_classes)
    ckpt.seed_everything(args.seed)  # student and distilled start from the same weights
    weights = args.teacher_weights if role == "teacher" else args.weights
    backbone_weights = (args.teacher_weights_backbone if role == "teacher"
                        else args.weights_backbone)
    model = models.build_detector(cfg, weights, backbone_weights).to(run.ctx.device)
    fgd = fcfg = dcfg = losses = None
    if role == "distilled":
        fgd, fcfg, losses, dcfg = build_distillation(args, model, cfg, teacher, teacher_cfg)
        fgd = fgd.to(run.ctx.device) if fgd is not None else None
        losses.to(run.ctx.device)
    schedule = {k: v for k, v in asdict(run.schedules[role]).items()
                if k not in ("print_freq", "ckpt_every")}
    meta = dict(model_config=cfg.to_dict(), distill_config=dcfg, fgd_config=fcfg,
                schedule=schedule, data=run.data_meta)
    return engine.TrainStep(model, fgd, teacher if role == "distilled" else None, losses), meta


def build_distillation(args, model, cfg, teacher, teacher_cfg):
    """The --distill losses of the distilled role: (FGD module or None, its config, the
    other losses' ModuleDict, the distillation config saved in the checkpoint)."""
    try:
        models.check_same_transform(model, teacher)
        dcfg = distill.config(args, cfg.fpn_channels, teacher_cfg.fpn_channels)
        if distill.needs_head(dcfg["losses"]):
            from fgdkern import retinanet
            retinanet.check_same_anchors(model, teacher)
        losses = distill.build(dcfg)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--distill {args.distill}: {exc}") from None
    if "fgd" not in dcfg["losses"]:
        return None, None, losses, dcfg
    fcfg = fgd_config(args, cfg, teacher_cfg)
    return build_fgd(fcfg), fcfg, losses, dcfg


def role_result(run: Run, role: str, model, how: str, cfg: dict, seconds: float) -> dict:
    """Metrics of the trained model on the val split plus what the report shows about it."""
    from fgdkern.train.evaluate import evaluate
    logs.say(f"{role}: evaluating on {len(run.val_set)} validation images", run.ctx.main)
    tick = time.perf_counter()
    metrics = evaluate(model, run.val_loader, run.val_set, run.ctx.device)
    records = logs.read_jsonl(run.out / role / "log.jsonl") if how != "--teacher" else []
    times = [r["step_time"] for r in records[2:]] or [r["step_time"] for r in records]
    result = {**metrics, "source": how, "steps": records[-1]["step"] if records else 0,
              "step_time_s": statistics.median(times) if times else None,
              "train_time_s": sum(r["step_time"] for r in records), "wall_time_s": seconds,
              "eval_time_s": time.perf_counter() - tick, "model": cfg,
              "parameters": sum(p.numel() for p in model.parameters())}
    logs.say(f"{role}: mAP {metrics['mAP']:.4f} AP50 {metrics['AP50']:.4f}", run.ctx.main)
    return result


def run_role(run: Run, role: str, teacher=None, teacher_cfg=None):
    """Build, train (or reuse) and evaluate one role; returns (model, its config, result)."""
    tick = time.perf_counter()
    args = run.args
    if role == "teacher" and args.teacher:
        cfg = model_config(args, role, run.train_set.num_classes)
        model, cfg = load_teacher(args.teacher, cfg)
        model.to(run.ctx.device)
        how, cfg_dict = "--teacher", {**cfg.to_dict(), "path": args.teacher}
    else:
        step_module, meta = build_role(run, role, teacher, teacher_cfg)
        how = train_or_reuse(run, role, step_module, meta)
        model, cfg = step_module.model, models.DetectorConfig.from_dict(meta["model_config"])
        cfg_dict = {**meta["model_config"], "fgd": meta["fgd_config"],
                    "distill": meta["distill_config"]}
    result = role_result(run, role, model, how, cfg_dict, time.perf_counter() - tick)
    return model, cfg, result


def run(args, signals: preempt.Signals | None = None) -> dict:
    """Every role of ``args.role`` in order, then report.json and report.png (rank 0).

    ``signals``: the SIGTERM/SIGINT handlers the caller installed (fgdkern.train.preempt).
    """
    ctx = distributed.init(args.device)
    try:
        wall = time.perf_counter()
        run_ = build_run(args, ctx, signals or preempt.Signals())
        trained, configs, results = {}, {}, {}
        for role in roles_needed(args.role, args.distill):
            teacher = trained.get("teacher")
            if teacher is not None:
                engine.freeze(teacher)
            trained[role], configs[role], results[role] = run_role(
                run_, role, teacher, configs.get("teacher"))
        if ctx.main:
            from fgdkern.train import report
            paths = report.write(run_, results, trained, time.perf_counter() - wall)
            logs.say(f"report: {', '.join(str(p) for p in paths)}")
        distributed.barrier(ctx)
        return results
    finally:
        distributed.shutdown(ctx)
