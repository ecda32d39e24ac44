"""Argument errors, a non-finite loss, and the import boundary of fgdkern.train."""
import math
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

from fgdkern.train import cli, engine, require  # noqa: E402
from tests.train.helpers import read_log, run_cli, smoke_args  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--preset", "paper"], "--data-path"),
    (["--arch", "yolo"], "invalid choice"),
    (["--resume", "--test-only"], "exclude each other"),
    (["--steps", "two"], "invalid int value"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_preset_values_and_explicit_flags():
    args = cli.parse_args(["--preset", "smoke", "--lr", "0.5"])
    assert args.lr == 0.5 and args.steps == 3 and args.min_size == 64
    assert cli.parse_args(["--preset", "smoke", "--epochs", "2"]).steps is None
    assert cli.parse_args([]).preset == "small"


def test_missing_files_are_usage_errors(data_cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(smoke_args(out, data_cache, "--role", "distilled",
                              "--teacher", tmp_path / "none.pth")) == cli.EXIT_USAGE
    assert "--teacher: no such file" in capsys.readouterr().err
    assert run_cli(smoke_args(out, data_cache, "--role", "student",
                              "--test-only")) == cli.EXIT_USAGE
    assert "--test-only: no checkpoint" in capsys.readouterr().err


def test_resume_refuses_another_model(smoke_run, data_cache, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(smoke_run / "student", out / "student")
    argv = smoke_args(out, data_cache, "--role", "student", "--resume",
                      "--student-fpn-channels", 8)
    assert run_cli(argv) == cli.EXIT_USAGE
    assert "was written with another model_config" in capsys.readouterr().err


def test_non_finite_loss_stops_the_run(data_cache, tmp_path, monkeypatch, capsys):
    """A NaN loss at step 2 stops the role with exit code 3, naming the role and the step."""
    task_losses = engine.models.task_losses
    calls = []

    def nan_at_second_step(*a, **kw):
        losses = task_losses(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            losses = {k: v * math.nan for k, v in losses.items()}
        return losses

    monkeypatch.setattr(engine.models, "task_losses", nan_at_second_step)
    out = tmp_path / "out"
    assert run_cli(smoke_args(out, data_cache, "--role", "student")) == cli.EXIT_NON_FINITE
    err = capsys.readouterr().err
    assert "student: non-finite loss at step 2" in err
    assert [r["step"] for r in read_log(out / "student" / "log.jsonl")] == [1]
    assert not (out / "report.json").exists()


def test_check_finite_names_role_and_step():
    with pytest.raises(engine.NonFiniteLossError, match="distilled: non-finite loss at step 7"):
        engine.check_finite({"loss": 1.0, "fgd/fg": math.inf}, "distilled", 7)


def test_missing_dependency_message():
    with pytest.raises(ImportError, match=r"needs no_such_module .*fgdkern\[train\]"):
        require("no_such_module")


def test_import_fgdkern_needs_no_training_dependency():
    code = ("import sys, torch\n"
            "before = set(sys.modules)  # torch itself may import tqdm\n"
            "import fgdkern, fgdkern.train, fgdkern.train.cli\n"
            "new = set(sys.modules) - before\n"
            "heavy = {'torchvision', 'pycocotools', 'matplotlib', 'tqdm'} & new\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)
