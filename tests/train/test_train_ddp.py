"""Two processes under torchrun (gloo, CPU) train the same parameters as one process.

The distilled role (student + FGD module in one DistributedDataParallel) for 3
steps, without aspect-ratio grouping: 1 process with batch 4 against 2
processes with batch 2 each, so every step sees the same 4 images. Both take
per-image means of every loss, so the averaged gradients agree up to float32
rounding: the all-reduce adds in another order than one process does (and
each torchrun process runs one thread), a relative error of about 1e-7..1e-6
per step; after 3 SGD steps rtol 1e-4 / atol 1e-6 leaves a wide margin while a
wrong sharding or loss normalisation (a factor of 2, another batch) fails it.
"""
import json
import os
import subprocess

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

from tests.train.helpers import (  # noqa: E402
    load_checkpoint, read_log, run_cli, smoke_args, torchrun_command)

RTOL, ATOL = 1e-4, 1e-6


def run_torchrun(argv, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(torchrun_command(argv, nproc), env=env, capture_output=True,
                          text=True, timeout=300)


def test_two_processes_train_what_one_does(smoke_run, data_cache, tmp_path):
    def args(out, batch):
        return smoke_args(out, data_cache, "--role", "distilled", "--device", "cpu",
                          "--teacher", smoke_run / "teacher" / "checkpoint.pth",
                          "--aspect-ratio-group-factor", "-1", "-b", batch,
                          "--report-images", 1)

    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(args(one, 4)) == 0
    proc = run_torchrun(args(two, 2), nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = load_checkpoint(one / "distilled" / "checkpoint.pth")
    b = load_checkpoint(two / "distilled" / "checkpoint.pth")
    assert a["step"] == b["step"] == 3
    for part in ("model", "fgd"):
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=RTOL, atol=ATOL,
                                       msg=lambda m, k=k: f"{part}.{k}: {m}")
    log_a = read_log(one / "distilled" / "log.jsonl")
    log_b = read_log(two / "distilled" / "log.jsonl")
    for ra, rb in zip(log_a, log_b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["fgd"] == pytest.approx(ra["fgd"], rel=1e-5)
    report = json.loads((two / "report.json").read_text())
    assert report["world_size"] == 2
    assert report["distilled"]["num_images"] == 4  # evaluation gathered from both ranks
