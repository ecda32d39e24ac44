"""--resume after a killed run repeats the uninterrupted run exactly (CPU: bitwise).

The uninterrupted run is the smoke run's distilled role (3 steps, checkpoint
every 2). Here the same role is trained against the same teacher (--teacher),
killed while it takes step 3 (after the checkpoint of step 2), and resumed: the
logged losses of all steps and the final detector and FGD parameters must be
identical to the last bit.
"""
import json

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

from fgdkern.train import engine  # noqa: E402
from tests.train.helpers import (  # noqa: E402
    assert_same_state, load_checkpoint, losses_of, read_log, run_cli, smoke_args)


class Killed(BaseException):
    """Stands for the process being killed (not an Exception, so nothing catches it)."""


def test_resume_repeats_the_uninterrupted_run(smoke_run, data_cache, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = smoke_args(out, data_cache, "--role", "distilled",
                      "--teacher", smoke_run / "teacher" / "checkpoint.pth")
    step = engine.Trainer.step

    def killed_at_step_3(self, *a, **kw):
        if self.pos.step == 2:
            raise Killed
        return step(self, *a, **kw)

    monkeypatch.setattr(engine.Trainer, "step", killed_at_step_3)
    with pytest.raises(Killed):
        run_cli(args)
    assert load_checkpoint(out / "distilled" / "checkpoint.pth")["step"] == 2
    assert len(read_log(out / "distilled" / "log.jsonl")) == 2
    monkeypatch.setattr(engine.Trainer, "step", step)

    assert run_cli(args + ["--resume"]) == 0
    reference = smoke_run / "distilled"
    assert losses_of(read_log(out / "distilled" / "log.jsonl")) == \
        losses_of(read_log(reference / "log.jsonl"))
    resumed = load_checkpoint(out / "distilled" / "checkpoint.pth")
    uninterrupted = load_checkpoint(reference / "checkpoint.pth")
    assert resumed["step"] == uninterrupted["step"] and resumed["finished"]
    assert_same_state(resumed["model"], uninterrupted["model"])
    assert_same_state(resumed["fgd"], uninterrupted["fgd"])
    report = json.loads((out / "report.json").read_text())
    assert report["distilled"]["source"] == "resumed"
    assert report["teacher"]["source"] == "--teacher"

    # A finished role is not retrained on --resume.
    before = (out / "distilled" / "checkpoint.pth").stat().st_mtime_ns
    assert run_cli(args + ["--resume"]) == 0
    assert (out / "distilled" / "checkpoint.pth").stat().st_mtime_ns == before
    assert json.loads((out / "report.json").read_text())["distilled"]["source"] == "checkpoint"
