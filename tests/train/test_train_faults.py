"""Damaged checkpoints and bad data: a fallback or a skip with a warning, else one line and
exit code 2, never a traceback.

The smoke run's student holds checkpoint.pth (step 3, finished) and checkpoint.prev.pth
(step 2, the periodic one); the data tests damage a copy of the built-in dataset.
"""
import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

from fgdkern.train import cli  # noqa: E402
from tests.train.helpers import (  # noqa: E402
    assert_same_state, load_checkpoint, losses_of, read_log, run_cli, smoke_args)

ZIP_DAMAGED = "PytorchStreamReader failed reading zip archive: failed finding central directory"


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.fixture
def student_copy(smoke_run, tmp_path):
    """--out of a copy of the smoke run's student."""
    out = tmp_path / "out"
    shutil.copytree(smoke_run / "student", out / "student")
    return out


def test_damaged_checkpoint_resumes_from_the_previous(smoke_run, data_cache, student_copy,
                                                      capsys):
    role_dir = student_copy / "student"
    truncate(role_dir / "checkpoint.pth")
    argv = smoke_args(student_copy, data_cache, "--role", "student", "--resume")
    assert run_cli(argv) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"fgdkern.train: warning: student: {role_dir / 'checkpoint.pth'} is damaged "
        f"({ZIP_DAMAGED}); using {role_dir / 'checkpoint.prev.pth'} (step 2)"]
    reference = smoke_run / "student"
    assert_same_state(load_checkpoint(role_dir / "checkpoint.pth")["model"],
                      load_checkpoint(reference / "checkpoint.pth")["model"])
    assert losses_of(read_log(role_dir / "log.jsonl")) == \
        losses_of(read_log(reference / "log.jsonl"))
    # The damaged file was replaced; the good previous one stays the previous one.
    assert load_checkpoint(role_dir / "checkpoint.prev.pth")["step"] == 2


def test_no_usable_checkpoint_is_one_line(data_cache, student_copy, capsys):
    role_dir = student_copy / "student"
    newest, previous = role_dir / "checkpoint.pth", role_dir / "checkpoint.prev.pth"
    truncate(newest)
    truncate(previous)
    argv = smoke_args(student_copy, data_cache, "--role", "student", "--resume")
    assert run_cli(argv) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"fgdkern.train: error: student: no usable checkpoint: {newest} is damaged "
        f"({ZIP_DAMAGED}); {previous} is damaged ({ZIP_DAMAGED})\n")
    previous.unlink()
    assert run_cli(argv) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"fgdkern.train: error: student: no usable checkpoint: {newest} is damaged "
        f"({ZIP_DAMAGED}); there is no {previous}\n")


@pytest.fixture
def dataset(smoke_run, data_cache, tmp_path):
    """A copy of the built-in dataset (the smoke run makes it)."""
    return shutil.copytree(data_cache, tmp_path / "data")


def test_annotation_file_that_is_not_json(dataset, tmp_path):
    """Run as a user runs it: exit code 2 and one line on stderr, no traceback."""
    annotations = dataset / "annotations" / "instances_train.json"
    annotations.write_text('{"images": [1,]}')
    argv = smoke_args(tmp_path / "out", tmp_path / "unused", "--data-path", dataset)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "fgdkern.train", *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == cli.EXIT_USAGE
    assert proc.stderr == (f"fgdkern.train: error: {annotations}: not valid JSON: Expecting "
                           "value at line 1 column 15\n")


def test_unreadable_images_are_skipped_and_counted(dataset, tmp_path, capsys):
    garbage, missing = (dataset / "train" / f"00000000000{i}.png" for i in (3, 6))
    garbage.write_bytes(b"not an image at all")
    missing.unlink()
    out = tmp_path / "out"
    argv = smoke_args(out, tmp_path / "unused", "--data-path", dataset, "--role", "student")
    assert run_cli(argv) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"fgdkern.train: warning: skipping image {garbage}: not an image (no format PIL reads)",
        f"fgdkern.train: warning: skipping image {missing}: no such file"]
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_images"] == {"train": 2, "val": 0}
    assert report["student"]["steps"] == 3

    assert run_cli(argv + ["--strict-data"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"fgdkern.train: error: {garbage}: not an image (no format PIL reads) (2 of the 8 "
        "train images cannot be read; without --strict-data they are skipped)\n")
