"""A smoke run of every role: report.json, report.png, log.jsonl, checkpoints; teacher reuse."""
import json
import math
import os
import shutil

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

from fgdkern.train import presets  # noqa: E402
from tests.train.helpers import (  # noqa: E402
    load_checkpoint, losses_of, read_log, run_cli, smoke_args)

ROLES = ("teacher", "student", "distilled")
STEPS = presets.PRESETS["smoke"]["steps"]


def test_report_has_every_role(smoke_report):
    for role in ROLES:
        r = smoke_report[role]
        for key in ("mAP", "AP50", "AP75"):
            assert 0.0 <= r[key] <= 1.0, (role, key, r[key])
        assert r["steps"] == STEPS and r["source"] == "trained"
        assert r["step_time_s"] > 0 and r["wall_time_s"] > 0
    assert "same seed" in smoke_report["comparable"]
    assert set(smoke_report["versions"]) >= {"python", "torch", "torchvision", "fgdkern"}
    assert smoke_report["device"] and smoke_report["settings"]["preset"] == "smoke"


def test_png_report(smoke_run):
    png = (smoke_run / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_logs_every_step(smoke_run):
    for role in ROLES:
        records = read_log(smoke_run / role / "log.jsonl")
        assert [r["step"] for r in records] == list(range(1, STEPS + 1))
        for r in records:
            assert math.isfinite(r["loss_task"]) and r["lr"] > 0 and r["step_time"] > 0
    distilled = read_log(smoke_run / "distilled" / "log.jsonl")
    for r in distilled:
        terms = [r[f"fgd/{k}"] for k in ("fg", "bg", "mask", "rela")]
        assert r["fgd"] == pytest.approx(sum(terms), rel=1e-6)
        assert r["loss"] == pytest.approx(r["loss_task"] + r["fgd"], rel=1e-6)


def test_student_and_distilled_start_alike(smoke_run):
    """Same initial weights and first batch: the first task losses agree exactly."""
    student = read_log(smoke_run / "student" / "log.jsonl")[0]
    distilled = read_log(smoke_run / "distilled" / "log.jsonl")[0]
    assert student["loss_task"] == distilled["loss_task"]


def test_checkpoints(smoke_run):
    for role in ROLES:
        state = load_checkpoint(smoke_run / role / "checkpoint.pth")  # weights_only loads it
        assert state["finished"] and state["step"] == STEPS and state["role"] == role
        assert (state["fgd"] is not None) == (role == "distilled")
        leftovers = [n for n in os.listdir(smoke_run / role) if n.endswith(".tmp")]
        assert not leftovers


def test_cached_teacher_is_reused(smoke_run, data_cache, tmp_path):
    """A finished teacher in --out is reused, not retrained; the distilled student trained
    against it repeats the smoke run's losses exactly."""
    out = tmp_path / "out"
    shutil.copytree(smoke_run / "teacher", out / "teacher")
    before = (out / "teacher" / "checkpoint.pth").stat().st_mtime_ns
    assert run_cli(smoke_args(out, data_cache, "--role", "distilled")) == 0
    assert (out / "teacher" / "checkpoint.pth").stat().st_mtime_ns == before
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["source"] == "cached" and "student" not in report
    assert report["teacher"]["mAP"] == pytest.approx(
        json.loads((smoke_run / "report.json").read_text())["teacher"]["mAP"])
    assert losses_of(read_log(out / "distilled" / "log.jsonl")) == \
        losses_of(read_log(smoke_run / "distilled" / "log.jsonl"))
