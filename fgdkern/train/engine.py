"""The training loop of one role and its step (docs/training.md, "One student pass").

TrainStep.forward runs the detector once: transform -> backbone -> head losses;
for the distilled role the frozen teacher's backbone (and, for PFI and RM, its
classification head) reads the same transformed batch under no_grad and the
chosen losses (fgdkern.train.distill) compare the two. ``Trainer``
drives SGD with linear warm-up and step decay, gradient clipping, AMP,
checkpoints, the JSONL log and the progress bar; it stops with
NonFiniteLossError when a loss is NaN or infinite, and on SIGTERM/SIGINT at the
next step boundary, after a checkpoint of that step (fgdkern.train.preempt).
"""
from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

import fgdkern
from fgdkern import targets as fgd_targets
from fgdkern.train import checkpoint as ckpt
from fgdkern.train import distill, distributed, logs, models, preempt

# Steps at whose start each distillation loss is compared with the task loss
# (fgdkern.check_loss_scale).
SCALE_CHECK_STEPS = 10


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message names the role and the step."""


@dataclass
class Schedule:
    """Optimisation settings of a role (the same for every role of a run)."""
    steps: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: list = field(default_factory=list)  # steps at which lr *= lr_gamma
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    clip_grad: float = 35.0
    amp: bool = False
    ckpt_every: int = 0
    print_freq: int = 20
    seed: int = 0


class WarmupMultiStep:
    """lr factor at a step: linear warm-up from warmup_factor to 1, then gamma per milestone."""

    def __init__(self, warmup_steps: int, warmup_factor: float, milestones, gamma: float):
        self.warmup_steps, self.warmup_factor = warmup_steps, warmup_factor
        self.milestones, self.gamma = sorted(milestones), gamma

    def __call__(self, step: int) -> float:
        factor = self.gamma ** bisect.bisect_right(self.milestones, step)
        if step < self.warmup_steps:
            t = step / self.warmup_steps
            factor *= self.warmup_factor * (1 - t) + t
        return factor


class TrainStep(nn.Module):
    """The trained modules of a role (detector, distillation losses) behind one forward, for
    one DDP.

    forward(images, targets) -> dict of loss tensors: "task/<name>" for the
    detector's losses and, when distilling, each chosen loss's weighted terms
    (docs/training.md, "--distill"): "fgd/fg", "fgd/bg", "fgd/mask", "fgd/rela";
    "fkd/<term>"; "pfi/imitation"; "rm/rank".
    """

    def __init__(self, model: nn.Module, fgd: nn.Module | None = None,
                 teacher: nn.Module | None = None, losses: nn.ModuleDict | None = None):
        super().__init__()
        self.model = model
        self.fgd = fgd
        self.distill = losses if losses is not None else nn.ModuleDict()
        if (fgd is None and not len(self.distill)) != (teacher is None):
            raise ValueError("distilling needs both a distillation loss and a teacher")
        # Frozen and shared: kept out of the module tree, so out of state_dict and DDP.
        self.__dict__["teacher"] = teacher

    @property
    def needs_head(self) -> bool:
        return distill.needs_head(self.distill)

    def forward(self, images, targets) -> dict:
        images, targets = self.model.transform(images, targets)
        feats = self.model.backbone(images.tensors)
        head = {} if self.needs_head else None
        losses = models.task_losses(self.model, images, feats, targets, keep=head)
        out = {f"task/{k}": v for k, v in losses.items()}
        if self.teacher is not None:
            out.update(self.distill_losses(images.tensors, targets, feats, head))
        return out

    def distill_losses(self, batch: torch.Tensor, targets, feats_S, head) -> dict:
        """Every chosen loss's weighted terms; the teacher runs once, under no_grad."""
        with torch.no_grad():
            feats_T = self.teacher.backbone(batch)
            logits_T = distill.teacher_logits(self.teacher, feats_T) if head is not None \
                else None
        out = {}
        if self.fgd is not None:
            out.update(self.fgd_losses(batch, targets, feats_S, feats_T))
        if "fkd" in self.distill:
            out.update(distill.fkd_terms(self.distill["fkd"], feats_S, feats_T))
        if "pfi" in self.distill:
            out.update(distill.pfi_terms(self.distill["pfi"], self.model, feats_S, feats_T,
                                         head["outputs"]["cls_logits"], logits_T))
        if "rm" in self.distill:
            out.update(distill.rm_terms(self.distill["rm"], self.model, head, targets,
                                        logits_T))
        for name in distill.CHANNEL_TERMS:
            if name in self.distill:
                out.update(distill.channel_terms(name, self.distill[name], feats_S, feats_T))
        return out

    def fgd_losses(self, batch: torch.Tensor, targets, feats_S, feats_T) -> dict:
        """Weighted FGD terms summed over levels, from one evaluation of the loss."""
        boxes, shapes = fgd_targets.from_torchvision(targets, batch.shape[-2:])
        terms = self.fgd.weighted_terms(feats_S, feats_T, boxes, shapes)
        return {f"fgd/{name}": value for name, value in terms.items()}


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: how the teacher runs while distilling."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def epoch_loader(loader, epoch: int, skip: int):
    """The batches of ``epoch`` after the first ``skip``, as a DataLoader.

    The batch list comes from the loader's batch sampler (a pure function of
    seed, epoch, rank, world); the new loader draws its worker seed from its
    own generator, so making it leaves the global RNG untouched (exact resume).
    """
    loader.batch_sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    batches = [list(b) for b in loader.batch_sampler][skip:]
    return torch.utils.data.DataLoader(
        loader.dataset, batch_sampler=batches, collate_fn=loader.collate_fn,
        num_workers=loader.num_workers, pin_memory=loader.pin_memory,
        generator=torch.Generator().manual_seed(epoch))


def to_device(images, targets, device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return images, targets


def _amp_dtype(device: torch.device):
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def log_values(losses: dict, ctx: distributed.Context) -> dict:
    """Every loss as a float, averaged over processes (one small all-reduce, one sync)."""
    names = list(losses)
    task = sum(v for k, v in losses.items() if k.startswith("task/"))
    stacked = torch.stack([losses[k].detach().float() for k in names] + [task.detach().float()])
    values = distributed.mean_over_ranks(stacked, ctx).tolist()
    out = dict(zip(names, values))
    out["loss_task"] = values[-1]
    for loss in distill.LOSSES:   # "fgd": the sum of its "fgd/..." terms, and so on
        terms = [out[k] for k in names if k.startswith(f"{loss}/")]
        if terms:
            out[loss] = sum(terms)
    out["loss"] = out["loss_task"] + sum(out.get(loss, 0.0) for loss in distill.LOSSES)
    return out


def check_finite(values: dict, role: str, step: int) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(f"{role}: non-finite loss at step {step} ({bad}); training "
                                 "stopped (try a lower --lr, more --warmup-steps, or no --amp)")


class Trainer:
    """Trains one role: optimizer, schedule, scaler, position, log; ``run`` is the loop."""

    def __init__(self, role: str, step_module: TrainStep, loader, sched: Schedule, role_dir,
                 ctx: distributed.Context, meta: dict, signals: preempt.Signals | None = None):
        self.role, self.module, self.loader, self.s = role, step_module, loader, sched
        self.role_dir, self.ctx, self.meta = role_dir, ctx, meta
        self.signals = signals or preempt.Signals()  # one never installed never fires
        self.stop_signal = 0
        # What the first save does with the files there (ckpt.write); later saves rotate.
        # Training from scratch: they belong to a training started over.
        self.previous = "drop"
        self.params = [p for p in step_module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=sched.lr, momentum=sched.momentum,
                                         weight_decay=sched.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, WarmupMultiStep(
            sched.warmup_steps, sched.warmup_factor, sched.lr_milestones, sched.lr_gamma))
        self.amp = sched.amp
        use_scaler = sched.amp and ctx.device.type == "cuda"  # bfloat16 on CPU needs none
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_scaler)
        self.pos = ckpt.Position()

    def resume(self, found: ckpt.Found) -> None:
        """Continue from a checkpoint (its compatibility checked by the caller)."""
        self.pos = ckpt.restore(found.state, self.module, self.optimizer, self.scheduler,
                                self.scaler)
        # Resumed from checkpoint.prev.pth, the newest file is damaged: it must not become
        # the previous one.
        self.previous = "rotate" if found.is_newest else "keep"

    def save(self, finished: bool) -> None:
        if self.ctx.main:
            state = ckpt.training_state(self.module, self.optimizer, self.scheduler, self.scaler,
                                        self.pos, role=self.role, finished=finished,
                                        meta=self.meta)
            ckpt.write(state, self.role_dir, self.previous)
        self.previous = "rotate"
        distributed.barrier(self.ctx)

    def step(self, net, images, targets) -> dict:
        """One optimizer step on one batch; returns the logged values."""
        images, targets = to_device(images, targets, self.ctx.device)
        with torch.autocast(self.ctx.device.type, _amp_dtype(self.ctx.device), enabled=self.amp):
            losses = net(images, targets)
        total = sum(losses.values())
        values = log_values(losses, self.ctx)
        check_finite(values, self.role, self.pos.step + 1)
        if self.pos.step < SCALE_CHECK_STEPS:
            for loss in distill.LOSSES:
                if loss in values:
                    fgdkern.check_loss_scale(values[loss], values["loss_task"],
                                             name=loss.upper())
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.s.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.s.clip_grad, norm_type=2.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {**values, "lr": lr}

    def wrapped(self):
        if not self.ctx.distributed:
            return self.module
        ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.module, device_ids=ids)

    def run(self) -> None:
        """Train from self.pos to the last step; checkpoint every ckpt_every steps and at the
        end. A signal stops it at a step boundary, after the checkpoint of that step: Stopped.
        """
        with self.signals.deferred():
            self._train()
            self.save(finished=self.pos.step >= self.s.steps)
            # one that came during that save, so after the last boundary
            self.stop_signal = self.stop_signal or self._agreed_signal()
            if self.stop_signal:
                raise self._stopped()

    def _train(self) -> None:
        net = self.wrapped()
        net.train()
        log = logs.JsonlLog(self.role_dir / "log.jsonl", self.pos.step, enabled=self.ctx.main)
        bar = logs.Progress(self.role, self.s.steps, self.pos.step, self.s.print_freq,
                            self.ctx.main)
        try:
            while self.pos.step < self.s.steps and not self.stop_signal:
                self._epoch(net, log, bar)
        finally:
            bar.close()
            log.close()

    def _agreed_signal(self) -> int:
        """The signal that stops training here, 0 for none: the same on every rank, so that
        all stop at the same step (and rank 0 saves that step)."""
        return distributed.max_over_ranks(self.signals.signum, self.ctx)

    def _stopped(self) -> preempt.Stopped:
        line = (f"{self.role}: stopped by {preempt.name(self.stop_signal)} after step "
                f"{self.pos.step} of {self.s.steps}; saved {ckpt.path_of(self.role_dir)}; to "
                "continue, run the same command with --resume")
        return preempt.Stopped(self.stop_signal, line, show=self.ctx.main)

    def _at_boundary(self) -> bool:
        """After a step: True when training stops here (the last step, or a signal); else the
        periodic checkpoint, when due."""
        self.stop_signal = self._agreed_signal()
        if self.stop_signal or self.pos.step >= self.s.steps:
            return True
        if self.s.ckpt_every > 0 and self.pos.step % self.s.ckpt_every == 0:
            self.save(finished=False)
        return False

    def _epoch(self, net, log, bar) -> None:
        """The rest of the current epoch (or up to the last step); advances self.pos."""
        batches = epoch_loader(self.loader, self.pos.epoch, self.pos.batch)
        if self.pos.batch == 0 and len(batches) == 0:
            raise ValueError("the training set has fewer images than one batch per process "
                             "(lower -b/--batch-size)")
        tick = time.perf_counter()
        for images, targets in batches:
            data_time = time.perf_counter() - tick
            values = self.step(net, images, targets)
            self.pos.step += 1
            self.pos.batch += 1
            step_time = time.perf_counter() - tick
            log.write({"step": self.pos.step, "epoch": self.pos.epoch, **values,
                       "step_time": step_time, "data_time": data_time})
            shown = ("loss", "loss_task", *distill.LOSSES, "lr")
            bar.update(self.pos.step, {k: values[k] for k in shown if k in values})
            if self._at_boundary():
                return
            tick = time.perf_counter()
        self.pos.epoch += 1
        self.pos.batch = 0
