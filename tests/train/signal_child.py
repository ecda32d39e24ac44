"""``python -m tests.train.signal_child ARGV``: ``python -m fgdkern.train ARGV`` that waits at
the points a signal test aims at, so that the signal lands where the test says.

FGDKERN_PAUSE_AT: points separated by spaces, "step:N" (as the trainer starts step N,
before its forward) or "save:N" (writing the checkpoint of step N: the temp file complete,
the renames not done). FGDKERN_PAUSE_RANK (default 0): the only rank that waits.
FGDKERN_PAUSE_DIR: the handshake. At a point the process writes its pid into
``<dir>/<point>.paused`` and goes on once ``<dir>/<point>.go`` exists; after
TIMEOUT_S without it, it exits with code 99, so a failing test cannot hang.
"""
import os
import pathlib
import sys
import time

from fgdkern.train import checkpoint, cli, engine

TIMEOUT_S = 120


def wait_at(point: str) -> None:
    points = os.environ.get("FGDKERN_PAUSE_AT", "").split()
    if point not in points or os.environ.get("RANK", "0") != os.environ.get(
            "FGDKERN_PAUSE_RANK", "0"):
        return
    folder = pathlib.Path(os.environ["FGDKERN_PAUSE_DIR"])
    (folder / f"{point}.paused").write_text(str(os.getpid()))
    deadline = time.monotonic() + TIMEOUT_S
    while not (folder / f"{point}.go").exists():
        if time.monotonic() > deadline:
            os._exit(99)
        time.sleep(0.02)


def patch() -> None:
    step, write_temp = engine.Trainer.step, checkpoint._write_temp

    def paused_step(self, *args, **kwargs):
        wait_at(f"step:{self.pos.step + 1}")
        return step(self, *args, **kwargs)

    def paused_write_temp(state, path):
        tmp = write_temp(state, path)
        wait_at(f"save:{state['step']}")
        return tmp

    engine.Trainer.step = paused_step
    checkpoint._write_temp = paused_write_temp


if __name__ == "__main__":
    patch()
    sys.exit(cli.main(sys.argv[1:]))
