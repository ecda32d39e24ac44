"""fgdkern.ultralytics against the real Ultralytics package: a YOLOv8n student and a YOLOv8s
teacher built from YAML, a tiny dataset in a temporary directory, the real DetectionTrainer,
offline (docs/trainers.md, "Ultralytics trainer").

Without ultralytics these tests skip, except in CI (CI=true), where they fail: CI installs
requirements-dev.txt, so a missing package there is a broken set-up, not a reason to skip.
"""
from __future__ import annotations

import copy
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from tests.integrations import yolo

if os.environ.get("CI") == "true":
    import ultralytics  # noqa: F401
else:
    pytest.importorskip("ultralytics", reason="the Ultralytics integration needs ultralytics "
                        "(pip install 'fgdkern[ultralytics]')")

from ultralytics import YOLO  # noqa: E402
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.distill_model import DistillationModel  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import DEFAULT_CFG  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

import fgdkern  # noqa: E402
from fgdkern.ultralytics import DistillationTrainer, NeckDistillationModel  # noqa: E402
from fgdkern.ultralytics import LOSSES, register_loss  # noqa: E402
from fgdkern.ultralytics.losses import loss_config  # noqa: E402


class Interrupted(Exception):
    """Stands in for a run killed after its first epoch."""


@pytest.fixture(scope="module", autouse=True)
def offline():
    with yolo.no_network() as attempts, yolo.torch_global_state():
        yield
    assert not attempts, f"the tests tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    return yolo.write_dataset(root), yolo.write_teacher(root), root


def live_state(trainer) -> dict:
    return {k: v.clone() for k, v in unwrap_model(trainer.model).distill_loss.state_dict().items()}


@pytest.fixture(scope="module", params=["fgd", "fkd"])
def interrupted_run(stand_ins, request):
    """A run of 2 epochs killed as its second starts: its last.pt (a copy, before resume
    writes over it) and the live state of the loss when it was saved. FKD's non-local
    blocks hold BatchNorm buffers besides parameters."""
    data, teacher, root = stand_ins
    loss = request.param
    seen = {"saves": 0, "loss_name": loss}

    def stop(trainer):
        if trainer.epoch == 1:
            seen["loss"], seen["trainer"] = live_state(trainer), trainer
            raise Interrupted

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_start", lambda trainer: seen.update(initial=live_state(trainer)))
    model.add_callback("on_train_epoch_start", stop)
    model.add_callback("on_model_save", lambda trainer: seen.update(saves=seen["saves"] + 1))
    trainer = DistillationTrainer if loss == "fgd" else DistillationTrainer.with_loss(loss)
    with pytest.raises(Interrupted):   # SGD from the first step (no warm-up): the loss learns
        model.train(trainer=trainer, distill_model=str(teacher),
                    **yolo.train_args(data, root / "runs", loss, epochs=2, optimizer="SGD",
                                      lr0=0.01, warmup_epochs=0, nbs=4))
    last = root / "runs" / loss / "weights" / "last.pt"
    shutil.copy(last, root / f"mid-run-{loss}.pt")
    return {**seen, "last": last, "mid_run": root / f"mid-run-{loss}.pt", "data": data}


def test_the_distillation_term_is_in_the_loss_and_the_logs(interrupted_run):
    trainer = interrupted_run["trainer"]
    assert trainer.loss_names == ("box_loss", "cls_loss", "dfl_loss", "dis_loss")
    dis = float(trainer.tloss["dis_loss"])
    assert 0 < dis < 10 and float(trainer.loss_items["dis_loss"]) > 0
    csv = trainer.csv.read_text().splitlines()
    column = csv[0].split(",").index("train/dis_loss")
    assert float(csv[1].split(",")[column]) == pytest.approx(dis, rel=1e-4)
    assert interrupted_run["saves"] == 1   # save_model returned True: the callbacks ran


def test_the_checkpoint_of_the_run_holds_the_loss_as_plain_data(interrupted_run):
    ckpt = torch.load(interrupted_run["mid_run"], map_location="cpu", weights_only=False)
    assert type(ckpt["ema"]) is DistillationModel and ckpt["ema"].teacher_model is None
    record = ckpt["ema"].fgdkern
    loss = interrupted_run["loss_name"]
    assert (record["loss"], record["preset"], record["options"]) == (
        loss, next(iter(LOSSES[loss].presets)), {})
    live, initial = interrupted_run["loss"], interrupted_run["initial"]
    assert record["state_dict"].keys() == live.keys() and len(live) > 0
    assert any(not torch.equal(initial[k], live[k]) for k in live)   # it was trained
    assert all(torch.equal(record["state_dict"][k], live[k]) for k in live)
    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(interrupted_run["mid_run"]))
    assert not [n for n in names if n.startswith("fgdkern")], names


@pytest.fixture(scope="module")
def resumed_run(interrupted_run):
    """The interrupted run resumed to its end; the trainer's state as training restarted."""
    seen = {}

    def grab(trainer):
        seen["loss"], seen["trainer"] = live_state(trainer), trainer
        seen["optimizer"] = copy.deepcopy(trainer.optimizer.state_dict())

    model = YOLO(interrupted_run["last"])
    model.add_callback("on_train_start", grab)
    model.train(resume=True, trainer=DistillationTrainer)
    return seen


def test_resume_restores_the_loss_and_its_optimizer_state(interrupted_run, resumed_run):
    mid = torch.load(interrupted_run["mid_run"], map_location="cpu", weights_only=False)
    saved, trainer = mid["ema"].fgdkern["state_dict"], resumed_run["trainer"]
    assert all(torch.equal(resumed_run["loss"][k], saved[k]) for k in saved)   # bit for bit
    assert trainer.start_epoch == 1 and trainer.epoch == 1
    ids = {id(p) for p in unwrap_model(trainer.model).distill_loss.parameters()}
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    index = [i for i, p in enumerate(params) if id(p) in ids]
    restored, state = resumed_run["optimizer"]["state"], mid["optimizer"]["state"]
    assert len(index) == len(ids) and all(i in state and i in restored for i in index)
    for i in index:   # Ultralytics saves the moments in float16; they come back exactly
        for key, value in state[i].items():
            assert torch.equal(restored[i][key], value.to(restored[i][key].dtype)), (i, key)


def test_the_final_checkpoints_load_without_fgdkern(interrupted_run, resumed_run, tmp_path):
    """After the resumed run: last.pt and best.pt are plain student checkpoints; they, and
    the run's mid-training checkpoint, load where fgdkern cannot be imported."""
    weights = interrupted_run["last"].parent
    for path in (weights / "last.pt", weights / "best.pt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert type(ckpt["model"]) is DetectionModel and ckpt["ema"] is None
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        assert not [n for n in names if "fgdkern" in n or "distill" in n], names
    paths = [weights / "last.pt", weights / "best.pt", interrupted_run["mid_run"]]
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", yolo.without("fgdkern") + LOAD, *map(str, paths)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["DetectionModel", "DetectionModel", "DistillationModel"]


LOAD = """
import numpy as np
from ultralytics import YOLO
from ultralytics.nn.tasks import torch_safe_load
for path in sys.argv[1:]:
    torch_safe_load(path, safe_only=True)   # weights_only: Ultralytics' and torch's classes only
    model = YOLO(path)
    model.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)
    print(type(model.model).__name__)
"""


@pytest.mark.parametrize("loss", ["fkd", "score_l2", "cwd", "pkd", "mgd"])
def test_every_loss_trains_in_the_trainer(stand_ins, loss):
    data, teacher, root = stand_ins
    model = YOLO("yolov8n.yaml")
    model.train(trainer=DistillationTrainer.with_loss(loss), distill_model=str(teacher),
                **yolo.train_args(data, root / "runs", f"{loss}-one-epoch"))
    trainer = model.trainer
    assert type(unwrap_model(trainer.model).distill_loss) is LOSSES[loss].module
    assert trainer.loss_items["dis_loss"].dtype == torch.float32
    assert 0 < float(trainer.tloss["dis_loss"]) < 100
    ckpt = torch.load(trainer.last, map_location="cpu", weights_only=False)
    assert type(ckpt["model"]) is DetectionModel


def student(imgsz: int = 64) -> DetectionModel:
    """A YOLOv8n as the trainer hands it over: with its training arguments attached."""
    model = DetectionModel("yolov8n.yaml", nc=len(yolo.NAMES), verbose=False)
    model.args = get_cfg(DEFAULT_CFG, {"imgsz": imgsz})
    return model


def batch(size: int = 64) -> dict:
    """Two letterboxed images and three boxes, as a training batch holds them."""
    return {"img": torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)),
            "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
            "cls": torch.tensor([[0.0], [1.0], [1.0]]),
            "bboxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2],
                                    [0.5, 0.5, 0.5, 0.4]])}


def test_score_l2_is_ultralytics_builtin_distillation(stand_ins):
    """The same student, teacher, projector weights and batch: the same distillation term
    and the same loss as Ultralytics' own DistillationModel."""
    teacher, model = str(stand_ins[1]), student()
    builtin = DistillationModel(teacher, copy.deepcopy(model)).train()
    ours = NeckDistillationModel(teacher, copy.deepcopy(model), loss_config("score_l2")).train()
    ours.distill_loss.projector.load_state_dict(builtin.projector.state_dict())
    loss_builtin, items_builtin = builtin.loss(batch())
    loss_ours, items_ours = ours.loss(batch())
    assert float(items_builtin["dis_loss"]) > 0
    torch.testing.assert_close(items_ours["dis_loss"], items_builtin["dis_loss"], rtol=1e-6, atol=0)
    torch.testing.assert_close(loss_ours, loss_builtin, rtol=1e-6, atol=0)


def test_the_fgd_term_is_fgd_of_the_maps_that_feed_detect(stand_ins):
    ours = NeckDistillationModel(str(stand_ins[1]), student(), loss_config("fgd")).train()
    levels = ours.distill_loss.levels
    assert [(m.student_channels, m.teacher_channels) for m in levels] == [
        (64, 128), (128, 256), (256, 512)]          # YOLOv8n and YOLOv8s at strides 8, 16, 32
    assert (levels[0].alpha_fgd, levels[0].gamma_fgd) == (1e-3, 5e-4)   # the ppyoloe preset
    loss, items = ours.loss(batch())
    step = ours.step(batch())
    assert [tuple(f.shape[-2:]) for f in step.feats_T] == [(8, 8), (4, 4), (2, 2)]
    boxes, shapes = fgdkern.targets.from_ultralytics(batch())
    assert [len(b) for b in boxes] == [2, 1] and shapes == [(64, 64)] * 2
    fgd = ours.distill_loss(step.feats_S, step.feats_T, boxes, shapes)
    torch.testing.assert_close(items["dis_loss"], fgd.reshape(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss[-1], 2 * fgd, rtol=1e-6, atol=0)   # times the batch size
    loss.sum().backward()
    assert all(p.grad is not None for p in ours.distill_loss.parameters())
    assert ours.student_model.model[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ours.teacher_model.parameters())


def test_a_registered_loss_is_selectable(stand_ins, monkeypatch):
    """docs/trainers.md, "Adding a loss to the trainer": a module and a terms function."""
    class MeanL2(torch.nn.Module):
        def __init__(self, num_levels, student_channels, teacher_channels, weight=1.0):
            super().__init__()
            self.weight = weight
            self.align = torch.nn.ModuleList(torch.nn.Conv2d(s, t, 1) for s, t in
                                             zip(student_channels, teacher_channels))

        def forward(self, feats_S, feats_T):
            return self.weight * sum(((a(s) - t) ** 2).mean()
                                     for a, s, t in zip(self.align, feats_S, feats_T))

    monkeypatch.setitem(LOSSES, "mean_l2", None)   # removed again after the test
    register_loss("mean_l2", MeanL2, lambda m, step: {"l2": m(step.feats_S, step.feats_T)},
                  {"default": {}})
    trainer = DistillationTrainer.with_loss("mean_l2", weight=2.0)
    ours = NeckDistillationModel(str(stand_ins[1]), student(), trainer.distill).train()
    assert ours.distill_loss.weight == 2.0 and len(ours.distill_loss.align) == 3
    assert float(ours.loss(batch())[1]["dis_loss"]) > 0


@pytest.mark.parametrize("loss,options,error,match", [
    ("no_such_loss", {}, ValueError, "loss must be one of"),
    ("fgd", {"preset": "retinanet"}, ValueError, "preset of 'fgd' must be one of"),
    ("fgd", {"alpha": 1.0}, TypeError, "'alpha' is not an option of 'fgd'"),
    ("fkd", {"temp": object()}, TypeError, "option temp="),
])
def test_with_loss_checks_its_arguments(loss, options, error, match):
    with pytest.raises(error, match=match):
        DistillationTrainer.with_loss(loss, **options)


def test_the_trainer_needs_a_teacher(stand_ins):
    data, _, root = stand_ins
    with pytest.raises(ValueError, match="distill_model must name the teacher"):
        YOLO("yolov8n.yaml").train(trainer=DistillationTrainer,
                                   **yolo.train_args(data, root / "runs", "no-teacher"))


def test_resume_keeps_the_run_loss(interrupted_run, tmp_path):
    path = tmp_path / "last.pt"
    shutil.copy(interrupted_run["mid_run"], path)
    other = "score_l2"   # neither of the interrupted runs' losses
    with pytest.raises(ValueError, match="resume continues the run's loss"):
        YOLO(path).train(resume=True, trainer=DistillationTrainer.with_loss(other))


def test_a_trainer_with_its_loss_travels_to_ddp_workers(tmp_path):
    """Ultralytics ships the trainer's class to its DDP workers with cloudpickle; a class made
    by with_loss arrives with its loss, in another process. Plain pickle refuses it."""
    import cloudpickle
    cls = DistillationTrainer.with_loss("fkd", alpha=1e-3)
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(cls)
    script = ("import sys, cloudpickle\n"
              "cls = cloudpickle.loads(sys.stdin.buffer.read())\n"
              "print(cls.__mro__[1].__name__, cls.distill.as_record())\n")
    out = subprocess.run([sys.executable, "-c", script], input=cloudpickle.dumps(cls),
                         cwd=tmp_path, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    name, record = out.stdout.decode().split(" ", 1)
    assert name == "DistillationTrainer"
    assert record.strip() == "{'loss': 'fkd', 'preset': 'one_stage', 'options': {'alpha': 0.001}}"
