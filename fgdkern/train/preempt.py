"""SIGTERM and SIGINT during a run: stop at a step boundary with a checkpoint, lose nothing
(docs/training-runs.md, "Checkpoints and resuming").

SLURM, Kubernetes and torchrun's elastic agent preempt a job with SIGTERM (and
SIGKILL after a grace period, 30 s by default for SLURM and torchrun); Ctrl-C
sends SIGINT. ``Signals`` is installed by the command line entry point for the
length of the run and puts the previous handlers back afterwards:

- inside a role's training (``deferred``) a signal is only noted; the trainer
  reads it at the next step boundary (every rank agreeing on it), writes the
  checkpoint of that step and raises Stopped;
- anywhere else (data, model building, evaluation, report) it raises Stopped at
  once: no training step is under way, and the checkpoints on disk are complete;
- a signal after the first is only noted, wherever it comes: the run is stopping
  already, and nothing may interrupt the checkpoint being written.

The exit code is 128 + the signal number (143 for SIGTERM, 130 for SIGINT), what a
shell reports for a process the signal ended.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run stopped on a signal; ``line`` says where, ``show`` whether this process says it."""

    def __init__(self, signum: int, line: str, show: bool = True):
        super().__init__(line)
        self.signum, self.line, self.show = signum, line, show

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def name(signum: int) -> str:
    return signal.Signals(signum).name


class Signals:
    """SIGTERM/SIGINT handlers for the length of a ``with`` block (main thread only).

    ``received`` lists the signal numbers in arrival order; ``signum`` is the first (0: none).
    """

    def __init__(self):
        self.received: list[int] = []
        self._deferring = 0
        self._previous: dict = {}
        self._pid = None

    @property
    def signum(self) -> int:
        return self.received[0] if self.received else 0

    def __enter__(self) -> "Signals":
        # signal.signal works in the main thread only; elsewhere the run keeps the defaults.
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def deferred(self):
        """Signals are noted, not raised, inside this block (training and its checkpoints).

        One noted but not yet acted on when the block ends normally stops the run there.
        """
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1
        if self.received and not self._deferring:
            raise Stopped(self.signum, outside_training(self.signum))

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loading worker: the main process decides for it
        self.received.append(signum)
        if len(self.received) > 1:
            # The run is stopping already: a later signal must not cut short the checkpoint
            # being written, nor replace the message saying where the run stopped.
            _say(f"{name(signum)} received again: already stopping, it is deferred")
        elif not self._deferring:
            raise Stopped(signum, outside_training(signum))
        else:
            _say(f"{name(signum)} received: stopping after the current step, with a "
                 "checkpoint")


def outside_training(signum: int) -> str:
    return (f"stopped by {name(signum)} while no role was training; the checkpoints are "
            "complete: run the same command with --resume to continue")


def _say(line: str) -> None:
    os.write(2, f"fgdkern.train: {line}\n".encode())
