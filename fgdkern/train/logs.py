"""What a run shows and keeps: tqdm progress bars, periodic log lines, ``log.jsonl``.

``<out>/<role>/log.jsonl`` has one json object per optimizer step (the step's
losses, lr and time); only rank 0 writes it. A resumed run first drops the
lines after its checkpoint's step, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys


def _json_value(v):
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


class JsonlLog:
    """Appends one line per step to ``path``; ``keep_until``: drop lines of later steps first."""

    def __init__(self, path, keep_until: int = 0, enabled: bool = True):
        self.path = pathlib.Path(path)
        self.enabled = enabled
        self.file = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= keep_until]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self.file = open(self.path, "a")

    def write(self, record: dict) -> None:
        if self.file is not None:
            clean = {k: _json_value(v) for k, v in record.items()}
            self.file.write(json.dumps(clean) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None


def read_jsonl(path) -> list[dict]:
    """Every complete json line of ``path`` (a torn last line of a killed run is skipped)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def summary(values: dict, keys=None) -> str:
    """``loss=1.234 fgd=0.05 ...`` from a step record (floats only)."""
    keys = keys or [k for k, v in values.items() if isinstance(v, float)]
    return " ".join(f"{k}={values[k]:.4g}" for k in keys if k in values)


class Progress:
    """A tqdm bar (rank 0, on a terminal) plus a plain log line every ``print_freq`` steps."""

    def __init__(self, desc: str, total: int, initial: int, print_freq: int, enabled: bool):
        self.desc, self.total, self.print_freq, self.enabled = desc, total, print_freq, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from fgdkern.train import require
            tqdm = require("tqdm")
            self.bar = tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                                 unit="step")

    def update(self, step: int, shown: dict) -> None:
        """After ``step``: move the bar, show ``shown`` (name -> float), log every print_freq."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        if self.print_freq > 0 and (step % self.print_freq == 0 or step == self.total):
            self.write(f"{self.desc} step {step}/{self.total} {summary(shown)}")

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def say(line: str, enabled: bool = True) -> None:
    """One line of progress on stdout (rank 0)."""
    if enabled:
        print(line, flush=True)


def warn(line: str, enabled: bool = True) -> None:
    """``fgdkern.train: warning: <line>`` on stderr (rank 0): something the run worked around."""
    if enabled:
        print(f"fgdkern.train: warning: {line}", file=sys.stderr, flush=True)
