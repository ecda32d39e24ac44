"""SIGTERM and SIGINT stop a run at a step boundary with a checkpoint of that step.

The signals are real ones, sent to a subprocess (tests.train.signal_child) while it
waits at a known point: inside a step, or in the middle of writing a checkpoint.
The references are the smoke run's student: its checkpoint of step 2 (the
periodic one, kept as checkpoint.prev.pth) and of step 3. Every wait is bounded.
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

from fgdkern.train import preempt  # noqa: E402
from tests.train.helpers import (  # noqa: E402
    assert_same_state, load_checkpoint, losses_of, read_log, run_cli, smoke_args,
    torchrun_command)

TIMEOUT_S = 120


class Child:
    """A training subprocess that waits at FGDKERN_PAUSE_AT; its output goes to files."""

    def __init__(self, cmd, folder: pathlib.Path, pause_at: str, rank: int = 0, threads=None):
        # The threads of this process by default: the same float sums as the references.
        threads = threads or torch.get_num_threads()
        self.folder = folder
        folder.mkdir(parents=True)
        env = {**os.environ, "FGDKERN_PAUSE_AT": pause_at, "FGDKERN_PAUSE_DIR": str(folder),
               "FGDKERN_PAUSE_RANK": str(rank), "OMP_NUM_THREADS": str(threads)}
        self.err = open(folder / "stderr", "w+")
        # A session of its own: a test that fails can kill torchrun's workers with it.
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.err,
                                     start_new_session=True)

    def paused_pid(self, point: str) -> int:
        """The pid of the process waiting at ``point`` (fails when it does not get there)."""
        marker = self.folder / f"{point}.paused"
        deadline = time.monotonic() + TIMEOUT_S
        while not marker.exists() or not marker.read_text():
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"never paused at {point}"
            time.sleep(0.05)
        return int(marker.read_text())

    def go(self, point: str) -> None:
        (self.folder / f"{point}.go").touch()

    def finish(self) -> int:
        try:
            return self.proc.wait(timeout=TIMEOUT_S)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the child's session (torchrun and its workers), if it still runs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()


@pytest.fixture
def spawn():
    """Child(...) that is killed at the end of the test whatever happens."""
    children = []

    def start(*args, **kwargs) -> Child:
        children.append(Child(*args, **kwargs))
        return children[-1]

    yield start
    for child in children:
        child.kill()


def child_command(argv) -> list[str]:
    return [sys.executable, "-W", "ignore", "-m", "tests.train.signal_child",
            *[str(a) for a in argv]]


def stopped_line(role: str, signame: str, step: int, out) -> str:
    return (f"fgdkern.train: {role}: stopped by {signame} after step {step} of 3; saved "
            f"{out / role / 'checkpoint.pth'}; to continue, run the same command with --resume")


def test_sigterm_saves_the_step_and_resume_repeats_the_run(smoke_run, data_cache, tmp_path,
                                                           spawn):
    """SIGTERM inside step 2 with no periodic checkpoint due: step 2 is finished and saved,
    exit 143; --resume then ends bitwise where the uninterrupted run did."""
    out = tmp_path / "out"
    argv = smoke_args(out, data_cache, "--role", "student", "--ckpt-every", 100)
    child = spawn(child_command(argv), tmp_path / "pause", "step:2")
    os.kill(child.paused_pid("step:2"), signal.SIGTERM)
    child.go("step:2")
    assert child.finish() == 143, child.stderr()
    err = child.stderr().splitlines()
    assert err[-2:] == ["fgdkern.train: SIGTERM received: stopping after the current step, "
                        "with a checkpoint", stopped_line("student", "SIGTERM", 2, out)]
    saved = load_checkpoint(out / "student" / "checkpoint.pth")
    assert saved["step"] == 2 and not saved["finished"]
    reference = smoke_run / "student"
    assert_same_state(saved["model"], load_checkpoint(reference / "checkpoint.prev.pth")["model"])
    assert not (out / "report.json").exists()

    assert run_cli(argv + ["--resume"]) == 0
    assert losses_of(read_log(out / "student" / "log.jsonl")) == \
        losses_of(read_log(reference / "log.jsonl"))
    assert_same_state(load_checkpoint(out / "student" / "checkpoint.pth")["model"],
                      load_checkpoint(reference / "checkpoint.pth")["model"])


def test_sigint_then_sigterm_during_the_save(smoke_run, data_cache, tmp_path, spawn):
    """SIGINT inside step 2, then SIGTERM while its checkpoint is being written: the second
    is deferred, the checkpoint is complete, the exit code is SIGINT's (130)."""
    out = tmp_path / "out"
    argv = smoke_args(out, data_cache, "--role", "student", "--ckpt-every", 100)
    child = spawn(child_command(argv), tmp_path / "pause", "step:2 save:2")
    os.kill(child.paused_pid("step:2"), signal.SIGINT)
    child.go("step:2")
    os.kill(child.paused_pid("save:2"), signal.SIGTERM)
    child.go("save:2")
    assert child.finish() == 130, child.stderr()
    assert child.stderr().splitlines()[-3:] == [
        "fgdkern.train: SIGINT received: stopping after the current step, with a checkpoint",
        "fgdkern.train: SIGTERM received again: already stopping, it is deferred",
        stopped_line("student", "SIGINT", 2, out)]
    saved = load_checkpoint(out / "student" / "checkpoint.pth")
    assert saved["step"] == 2 and not saved["finished"]
    assert_same_state(saved["model"],
                      load_checkpoint(smoke_run / "student" / "checkpoint.prev.pth")["model"])
    assert sorted(os.listdir(out / "student")) == ["checkpoint.pth", "log.jsonl"]


def test_ranks_agree_on_the_step(data_cache, tmp_path, spawn):
    """Under torchrun only rank 1 gets SIGTERM, inside step 1: both ranks stop after step 1,
    and rank 0 saves that step."""
    out = tmp_path / "out"
    argv = smoke_args(out, data_cache, "--role", "student", "--device", "cpu",
                      "--ckpt-every", 100)
    cmd = torchrun_command(argv, nproc=2, module="tests.train.signal_child")
    child = spawn(cmd, tmp_path / "pause", "step:1", rank=1, threads=1)
    os.kill(child.paused_pid("step:1"), signal.SIGTERM)
    child.go("step:1")
    assert child.finish() != 0
    assert stopped_line("student", "SIGTERM", 1, out) in child.stderr().splitlines()
    assert load_checkpoint(out / "student" / "checkpoint.pth")["step"] == 1
    assert [r["step"] for r in read_log(out / "student" / "log.jsonl")] == [1]


def test_handlers_are_installed_for_the_run_only():
    before = {s: signal.getsignal(s) for s in preempt.SIGNALS}
    with preempt.Signals() as signals:
        assert signal.getsignal(signal.SIGTERM) == signals._handle
        with pytest.raises(preempt.Stopped) as stopped:  # no training step under way: at once
            os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.value.exit_code == 143
    with preempt.Signals() as signals:
        with pytest.raises(preempt.Stopped) as stopped:
            with signals.deferred():   # in training: noted, acted on by the block's end
                os.kill(os.getpid(), signal.SIGINT)
                assert signals.signum == signal.SIGINT
        assert stopped.value.exit_code == 130
    assert {s: signal.getsignal(s) for s in preempt.SIGNALS} == before
