"""--distill: every choice end to end on the smoke preset, one student pass, usage errors.

The end-to-end runs train the distilled role only (2 steps) against the smoke
run's teacher (--teacher); "none" trains the student only.
"""
import json
import shutil

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

import fgdkern  # noqa: E402
from fgdkern import retinanet  # noqa: E402
from fgdkern.train import checkpoint as ckpt  # noqa: E402
from fgdkern.train import cli, distill, engine, models  # noqa: E402
from tests.train.helpers import load_checkpoint, read_log, run_cli, smoke_args  # noqa: E402

TERMS = {"fkd": ["fkd/feat", "fkd/channel", "fkd/spatial", "fkd/nonlocal"],
         "pfi": ["pfi/imitation"], "rm": ["rm/rank"]}
STEPS = 2


def short_run(smoke_run, data_cache, out, choice):
    role = "student" if choice == "none" else "distilled"
    argv = smoke_args(out, data_cache, "--role", "all" if choice == "none" else role,
                      "--distill", choice, "--teacher", smoke_run / "teacher" / "checkpoint.pth",
                      "--steps", STEPS, "--report-images", 1)
    assert run_cli(argv) == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("choice", ["fkd", "pfi", "rm", "pfi+rm"])
def test_each_choice_end_to_end(smoke_run, data_cache, tmp_path, choice):
    report = short_run(smoke_run, data_cache, tmp_path / "out", choice)
    assert report["distillation"] == report["distilled"]["distillation"] == choice
    assert "student" not in report and "comparable" not in report
    assert report["distilled"]["model"]["distill"]["losses"] == choice.split("+")
    assert (tmp_path / "out" / "report.png").read_bytes()[:4] == b"\x89PNG"
    losses = choice.split("+")
    keys = [k for loss in losses for k in TERMS[loss]]
    records = read_log(tmp_path / "out" / "distilled" / "log.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert not any(k.startswith("fgd") for k in r)
        for loss in losses:
            terms = [r[k] for k in TERMS[loss]]
            assert all(v >= 0 for v in terms) and r[loss] == pytest.approx(sum(terms), rel=1e-6)
        assert r["loss"] == pytest.approx(r["loss_task"] + sum(r[x] for x in losses), rel=1e-6)
        assert set(keys) <= set(r)
    # the first step's task loss is the plain student's: the pass is the same
    assert records[0]["loss_task"] == read_log(smoke_run / "student" / "log.jsonl")[0]["loss_task"]
    state = load_checkpoint(tmp_path / "out" / "distilled" / "checkpoint.pth")
    assert state["distill_config"]["losses"] == losses and state["fgd"] is None
    with_params = [x for x in losses if x in ("fkd", "pfi")]   # PFI: the align conv 16 -> 32
    assert sorted({k.split(".")[0] for k in state["distill"]}) == with_params


def test_none_trains_no_distilled_role(smoke_run, data_cache, tmp_path):
    report = short_run(smoke_run, data_cache, tmp_path / "out", "none")
    assert report["distillation"] == "none"
    assert set(report) >= {"teacher", "student"} and "distilled" not in report
    assert not (tmp_path / "out" / "distilled").exists()
    record = read_log(tmp_path / "out" / "student" / "log.jsonl")[0]
    assert not [k for k in record if "/" in k and not k.startswith("task/")]


def test_resume_with_another_choice_is_a_usage_error(smoke_run, data_cache, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(smoke_run / "distilled", out / "distilled")
    argv = smoke_args(out, data_cache, "--role", "distilled", "--distill", "pfi", "--resume",
                      "--teacher", smoke_run / "teacher" / "checkpoint.pth")
    assert run_cli(argv) == cli.EXIT_USAGE
    assert "was written with another distill_config" in capsys.readouterr().err


def test_checkpoints_from_before_distill_read_as_fgd():
    old = {"fgd_config": {"temp": 0.5}, "model_config": {}}
    ckpt.check_compatible(old, {"distill_config": {"losses": ["fgd"]}}, "old.pth")
    ckpt.check_compatible({"fgd_config": None}, {"distill_config": None}, "old.pth")
    with pytest.raises(ValueError, match="another distill_config"):
        ckpt.check_compatible(old, {"distill_config": {"losses": ["pfi"]}}, "old.pth")


@pytest.mark.parametrize("argv, message", [
    (["--distill", "pfi", "--arch", "fasterrcnn"], "reads RetinaNet's classification head"),
    (["--distill", "fgd+rm", "--arch", "fasterrcnn"], "rm reads RetinaNet's"),
    (["--distill", "kd"], "unknown loss 'kd'"),
    (["--distill", "pfi+pfi"], "named twice"),
    (["--distill", "none+rm"], "unknown loss 'none'"),
    (["--distill", "none", "--role", "distilled"], "needs a distillation loss"),
    (["--distill", "pfi", "--rm-weight", "2"], "--rm-weight: unused with --distill pfi"),
    (["--alpha-fgd", "1", "--distill", "fkd"], "--alpha-fgd: unused"),
    (["--distill", "rm", "--rm-weight", "0"], "--rm-weight must be positive"),
    (["--distill", "fkd", "--fkd-temp", "0"], "--fkd-temp must be positive"),
    (["--distill", "fkd", "--fkd-levels", "6"], "--fkd-levels must lie in 1..5"),
    (["--distill", "fkd", "--fkd-variant", "other"], "invalid choice"),
    (["--distill", "rm", "--rm-backend", "cpp"], "invalid choice"),
])
def test_distill_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--preset", "smoke", *argv])
    assert exc.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_choice_values():
    args = cli.parse_args(["--preset", "smoke", "--distill", "rm+pfi"])
    assert args.distill == "pfi+rm" and args.pfi_weight == 1.5 and args.rm_weight == 4.0
    assert cli.parse_args(["--preset", "smoke"]).distill == "fgd"
    assert distill.parse_choice("rm+fgd") == ("fgd", "rm") and distill.parse_choice("none") == ()
    fkd = distill.fkd_config(cli.parse_args(["--distill", "fkd", "--arch", "fasterrcnn",
                                              "--beta-fkd", "0.5"]), 16, 32)
    assert fkd == dict(detector="two_stage", num_levels=4, student_channels=16,
                       teacher_channels=32, variant="code", backend="auto", temp=0.1,
                       alpha=7e-5, beta=0.5, gamma=7e-5)


def small_pair():
    cfg = dict(arch="retinanet", backbone="resnet18", num_classes=4, min_size=64, max_size=64,
               anchor_scale=0.25)
    torch.manual_seed(0)
    student = models.build_detector(models.DetectorConfig(fpn_channels=16, **cfg))
    teacher = engine.freeze(models.build_detector(models.DetectorConfig(fpn_channels=32, **cfg)))
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 4.0, 60.0, 20.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return student, teacher, images, targets


def test_one_student_pass_gives_the_losses_of_a_direct_computation(monkeypatch):
    """pfi+rm: the student's backbone and head run once, the teacher's head once; the terms
    equal the losses computed from the fgdkern.retinanet helpers on separate passes."""
    student, teacher, images, targets = small_pair()
    losses = distill.build(distill.config(cli.parse_args(["--distill", "pfi+rm"]), 16, 32))
    step = engine.TrainStep(student, None, teacher, losses)
    calls = {"student": 0, "teacher": 0}
    for name, head in (("student", student.head), ("teacher", teacher.head.classification_head)):
        forward = head.forward
        monkeypatch.setattr(head, "forward", lambda x, f=forward, n=name: (
            calls.__setitem__(n, calls[n] + 1), f(x))[1])
    out = step(images, targets)
    assert calls == {"student": 1, "teacher": 1}
    assert set(out) == {"task/classification", "task/bbox_regression", "pfi/imitation",
                        "rm/rank"}
    il, tg = student.transform(images, targets)
    feats_S = student.backbone(il.tensors)
    with torch.no_grad():
        feats_T = teacher.backbone(il.tensors)
        logits_T = teacher.head.classification_head(list(feats_T.values()))
    logits_S = student.head(list(feats_S.values()))["cls_logits"]
    anchors = student.anchor_generator(il, list(feats_S.values()))
    A = student.head.classification_head.num_anchors
    pfi = losses["pfi"](feats_S, feats_T, retinanet.probability_maps(logits_S, feats_S, A),
                        retinanet.probability_maps(logits_T, feats_T, A))
    rm = losses["rm"](*retinanet.rank_mimicking_inputs(student, anchors, tg, logits_S,
                                                       logits_T, teacher=teacher))
    assert torch.equal(out["pfi/imitation"], pfi) and torch.equal(out["rm/rank"], rm)
    task = student.compute_loss(tg, student.head(list(feats_S.values())), anchors)
    assert all(torch.equal(out[f"task/{k}"], v) for k, v in task.items())
    assert isinstance(losses["rm"], fgdkern.RankMimickingLoss)


def test_fkd_terms_are_the_weighted_terms():
    student, teacher, images, targets = small_pair()
    losses = distill.build(distill.config(cli.parse_args(["--distill", "fkd"]), 16, 32))
    out = engine.TrainStep(student, None, teacher, losses)(images, targets)
    il, _ = student.transform(images, targets)
    with torch.no_grad():
        direct = losses["fkd"].weighted_terms(student.backbone(il.tensors),
                                              teacher.backbone(il.tensors))
    assert sorted(out) == sorted(["task/classification", "task/bbox_regression"]
                                 + [f"fkd/{k}" for k in direct])
    for k, v in direct.items():
        torch.testing.assert_close(out[f"fkd/{k}"].detach(), v, rtol=0, atol=0)
