"""Bad data: a skip with a warning, else one line and exit code 2, never a traceback.

The tests damage a copy of the built-in dataset.
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
from tests.train.helpers import run_cli, smoke_args  # noqa: E402


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
