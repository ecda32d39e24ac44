"""Step time of a YOLO student trained alone, with Ultralytics' built-in distillation, and
with each loss of fgdkern's Ultralytics trainer: one run, one machine.

    python bench/ultralytics_steps.py [--imgsz 320] [--batch 8] [--steps 4] [--warmup 2]
                                      [--rounds 4] [--student yolov8n.yaml]
                                      [--teacher yolov8s.yaml] [--out DIR] [--allow-dirty]

Every configuration trains the same student (built from YAML, random weights) in
Ultralytics' own trainer on the same synthetic dataset (tests/integrations/yolo.py),
one epoch of warmup + steps batches, SGD stepping every batch. A step is the time
from Ultralytics' on_train_batch_start callback to its on_train_batch_end: the
forward passes, the losses, backward, the optimizer step and the EMA update (the
loader's work is outside it). The configurations run in rounds, one after the other
in each round, so that a slow phase of the machine spreads over all of them; the
median and quartiles are over every timed step of every round. Then, outside the
trainer, round-robin: the distillation wrapper's loss forward and backward (teacher,
student, losses; no optimizer or EMA) for Ultralytics' own and each fgdkern loss, and
each fgdkern term alone on the maps of one batch. Prints the table of
docs/trainers.md, "Step time" and writes <DIR>/ultralytics-<device>-<date>.json
(to bench/results/ only from a clean checkout, unless --allow-dirty).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integrations import yolo  # noqa: E402  (offline settings, before ultralytics)

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.distill_model import DistillationModel  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import DEFAULT_CFG  # noqa: E402

import meta  # noqa: E402
from fgdkern.ultralytics import LOSSES, DistillationTrainer, NeckDistillationModel  # noqa: E402
from fgdkern.ultralytics.losses import loss_config  # noqa: E402


class StepTimer:
    """Seconds of every training step after the first ``warmup`` of a run."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self._start = warmup, [], 0.0

    def start(self, trainer) -> None:
        self._start = time.perf_counter()

    def end(self, trainer) -> None:
        self.times.append(time.perf_counter() - self._start)

    def timed(self) -> list[float]:
        return self.times[self.warmup:]


def configurations(teacher: Path) -> dict:
    """name -> (trainer class, extra training arguments)."""
    runs = {"student alone": (DetectionTrainer, {}),
            "Ultralytics built-in distillation": (DetectionTrainer,
                                                  {"distill_model": str(teacher)})}
    for name in LOSSES:
        runs[f"fgdkern {name}"] = (DistillationTrainer.with_loss(name),
                                   {"distill_model": str(teacher)})
    return runs


def time_run(args, data: Path, project: Path, name: str, trainer, extra: dict) -> list[float]:
    timer = StepTimer(args.warmup)
    model = YOLO(args.student)
    model.add_callback("on_train_batch_start", timer.start)
    model.add_callback("on_train_batch_end", timer.end)
    model.train(trainer=trainer, **yolo.train_args(
        data, project, name.replace(" ", "-"), imgsz=args.imgsz, batch=args.batch,
        optimizer="SGD", lr0=0.01, warmup_epochs=0, nbs=args.batch, val=False, **extra))
    return timer.timed()


def synthetic_batch(args) -> dict:
    """A training batch of random images, three boxes each."""
    g = torch.Generator().manual_seed(0)
    n_boxes = 3 * args.batch
    return {"img": torch.rand(args.batch, 3, args.imgsz, args.imgsz, generator=g),
            "batch_idx": torch.arange(args.batch).repeat_interleave(3).float(),
            "cls": torch.zeros(n_boxes, 1),
            "bboxes": torch.cat([torch.rand(n_boxes, 2, generator=g) * 0.6 + 0.2,
                                 torch.rand(n_boxes, 2, generator=g) * 0.3 + 0.05], 1)}


def frozen_step(model: NeckDistillationModel, batch: dict):
    """The maps of one forward, detached (the student's requiring gradient): what the
    term alone is timed on."""
    with torch.no_grad():
        model.teacher_model(batch["img"])
        model.student_model(batch["img"])
    step = model.step(batch)
    return step._replace(feats_S=[s.detach().requires_grad_() for s in step.feats_S],
                         feats_T=[t.detach() for t in step.feats_T])


def model_times(args, teacher: Path, reps: int = 8) -> dict:
    """Seconds of the wrapper's loss forward and backward (teacher, student, detection and
    distillation losses; no optimizer, no EMA) for Ultralytics' DistillationModel and for
    each fgdkern loss, and of each fgdkern term alone; round-robin, after the training runs
    (with the threads Ultralytics' trainer left set)."""
    student = DetectionModel(args.student, nc=len(yolo.NAMES), verbose=False)
    student.args = get_cfg(DEFAULT_CFG, {"imgsz": args.imgsz})
    batch = synthetic_batch(args)
    models = {"Ultralytics built-in distillation":
              DistillationModel(str(teacher), copy.deepcopy(student)).train()}
    calls = {}
    for name in LOSSES:
        model = NeckDistillationModel(str(teacher), copy.deepcopy(student), loss_config(name))
        models[f"fgdkern {name}"] = model.train()
        step = frozen_step(model, batch)
        calls[f"fgdkern {name} (term alone)"] = (
            lambda loss=model.distill_loss, step=step, name=name:
            sum(LOSSES[name].terms(loss, step).values()).backward())
    for name, model in models.items():
        calls[name] = lambda model=model: model.loss(batch)[0].sum().backward()
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def table(results: dict) -> str:
    """The markdown table: median and quartiles per step, and the ratios."""
    medians = {name: statistics.median(t) for name, t in results.items()}
    student, builtin = medians["student alone"], medians["Ultralytics built-in distillation"]
    lines = ["| run | step (median) | quartiles | x student alone | x built-in |",
             "|---|---|---|---|---|"]
    for name, times in results.items():
        q1, _, q3 = statistics.quantiles(times, n=4)
        lines.append(f"| {name} | {medians[name] * 1e3:.0f} ms | {q1 * 1e3:.0f}-{q3 * 1e3:.0f} ms "
                     f"| {medians[name] / student:.2f} | {medians[name] / builtin:.2f} |")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps per run")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--teacher", default="yolov8s.yaml")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--allow-dirty", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    start = meta.git_state()
    if args.out == REPO / "bench" / "results" and not (start["clean"] or args.allow_dirty):
        sys.exit(f"bench/results takes runs of a clean checkout ({meta.describe_dirty(start)}); "
                 "commit, pass --out elsewhere, or --allow-dirty")
    load_at_start = os.getloadavg()   # other work on the machine shows in the spread
    root = Path(tempfile.mkdtemp(prefix="fgdkern-ultralytics-steps-"))
    data = yolo.write_dataset(root, n_train=args.batch * (args.warmup + args.steps),
                              n_val=args.batch, size=args.imgsz)
    teacher = yolo.write_teacher(root, args.teacher)
    runs = configurations(teacher)
    results = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (trainer, extra) in runs.items():
            results[name] += time_run(args, data, root / "runs", name, trainer, extra)
    print(table(results))
    models = model_times(args, teacher)
    print("\n".join(f"{name}: loss forward+backward {statistics.median(t) * 1e3:.1f} ms "
                    f"(median of {len(t)})" for name, t in models.items()))
    now = datetime.datetime.now()
    record = dict(**meta.machine(torch.device("cpu")), **meta.software(),
                  date=now.isoformat(timespec="seconds"), **meta.code_state(
                      start, meta.git_state(), args.allow_dirty),
                  load_average_start=load_at_start, load_average_end=os.getloadavg(),
                  settings={k: str(v) for k, v in vars(args).items()}, steps_s=results,
                  loss_fwd_bwd_s=models, torch_threads=torch.get_num_threads())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ultralytics-cpu-{now:%Y-%m-%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
