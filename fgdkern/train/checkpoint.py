"""Checkpoints of one role: written atomically, restored exactly (docs/training-runs.md,
"Checkpoints and resuming").

A checkpoint is ``<out>/<role>/checkpoint.pth``: the detector, the distillation
losses' modules (FGD's under "fgd", FKD's and PFI's under "distill"),
optimizer, scheduler, AMP scaler, the RNG states (torch, CUDA, numpy, python),
the data position (epoch and batches already consumed in it), the step, and the
configs the role was built from. ``finished`` marks the end of the role's
training: a finished teacher is reused, a finished role is not retrained on
``--resume``. The checkpoint it replaces is kept as ``checkpoint.prev.pth``, and
``latest`` falls back to it when the newest file is damaged.
"""
from __future__ import annotations

import os
import pathlib
import random
import tempfile
from dataclasses import dataclass

import torch

from fgdkern.train.errors import UsageError, brief

FORMAT = 1
NAME = "checkpoint.pth"
PREVIOUS = "checkpoint.prev.pth"


@dataclass
class Position:
    """Where training stands: optimizer steps done, epoch, batches of that epoch consumed."""
    step: int = 0
    epoch: int = 0
    batch: int = 0


def path_of(role_dir) -> pathlib.Path:
    return pathlib.Path(role_dir) / NAME


def previous_path_of(role_dir) -> pathlib.Path:
    return pathlib.Path(role_dir) / PREVIOUS


def _write_temp(obj, path: pathlib.Path) -> str:
    """torch.save ``obj`` into a new temp file beside ``path``, on disk (fsync); its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(directory: pathlib.Path) -> None:
    """The renames in ``directory`` reach the disk."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write(state, role_dir, previous: str) -> None:
    """Write ``<role_dir>/checkpoint.pth`` atomically: torch.save into a temp file in the
    same directory, fsync, os.replace, so a reader (or a killed run) sees the old file or
    the new one, never half of one. ``previous`` says what becomes of the files already
    there, each step a rename or an unlink, so every moment leaves complete files:

    "rotate": the current checkpoint becomes checkpoint.prev.pth (the usual case);
    "keep": checkpoint.prev.pth stays (the file replaced is the damaged newest one);
    "drop": checkpoint.prev.pth is removed (both belong to a training started over).
    """
    path, prev = path_of(role_dir), previous_path_of(role_dir)
    for stale in path.parent.glob(f".{NAME}.*.tmp"):
        stale.unlink()  # left by a run killed while writing (kill -9): a checkpoint's size each
    tmp = _write_temp(state, path)
    try:
        if previous == "rotate" and path.exists():
            os.replace(path, prev)
        elif previous == "drop" and prev.exists():
            os.unlink(prev)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def load(path) -> dict:
    """A checkpoint dict (CPU tensors); ValueError when the file is not one of ours."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of fgdkern.train (format {FORMAT})")
    return state


class NoUsableCheckpoint(ValueError):
    """No checkpoint file of a role loads; the message names each file and why."""


@dataclass
class Found:
    """The newest usable checkpoint of a role: its state, its file, and why each newer file
    was passed over ("<path> is damaged (<why>)", "there is no <path>")."""
    state: dict
    path: pathlib.Path
    passed_over: list

    @property
    def is_newest(self) -> bool:
        return not self.passed_over


def latest(role_dir):
    """The newest checkpoint of ``role_dir`` that loads: checkpoint.pth, else (damaged or
    missing) checkpoint.prev.pth. None when neither file exists; NoUsableCheckpoint naming
    both when none loads."""
    paths = (path_of(role_dir), previous_path_of(role_dir))
    if not any(p.is_file() for p in paths):
        return None
    passed_over = []
    for path in paths:
        if not path.is_file():
            passed_over.append(f"there is no {path}")
            continue
        try:
            return Found(load(path), path, passed_over)
        except Exception as exc:  # whatever torch.load makes of a damaged file
            passed_over.append(f"{path} is damaged ({brief(exc)})")
    raise NoUsableCheckpoint("no usable checkpoint: " + "; ".join(passed_over))


def load_given(path, option: str):
    """torch.load of a file an option names (--teacher, --weights): UsageError when it is
    missing or cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{option}: no such file {str(path)!r}") from None
    except Exception as exc:  # whatever torch.load makes of a damaged or foreign file
        raise UsageError(f"{option} {str(path)!r} cannot be read ({brief(exc)})") \
            from None


def rng_state() -> dict:
    """Every random number generator the training step may draw from."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain python values, so the checkpoint loads with torch.load(weights_only=True)
        state["numpy"] = (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss))
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of rng_state."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random."""
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2 ** 32)
    except ImportError:
        pass


def training_state(step_module, optimizer, scheduler, scaler, pos: Position, *, role: str,
                   finished: bool, meta: dict) -> dict:
    """The dict saved at a checkpoint (tensors are the live ones; torch.save copies them)."""
    fgd = getattr(step_module, "fgd", None)
    losses = getattr(step_module, "distill", None)
    return {"format": FORMAT, "role": role, "step": pos.step, "epoch": pos.epoch,
            "batch": pos.batch, "finished": finished,
            "model": step_module.model.state_dict(),
            "fgd": None if fgd is None else fgd.state_dict(),
            "distill": None if not losses else losses.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), **meta}


def saved(state: dict, key: str):
    """``state[key]``; "distill_config" of a checkpoint written before ``--distill`` existed
    is what it trained with: FGD alone in a distilled role, nothing in another role."""
    if key == "distill_config" and key not in state:
        return {"losses": ["fgd"]} if state.get("fgd_config") is not None else None
    return state.get(key)


def check_compatible(state: dict, meta: dict, path) -> None:
    """A checkpoint is continued or reused only by the run it was written by: the same model
    and distillation configs (ValueError otherwise)."""
    for key in ("model_config", "distill_config", "fgd_config"):
        if key in meta and saved(state, key) != meta[key]:
            raise ValueError(f"{path} was written with another {key} ({saved(state, key)!r}, "
                             f"now {meta[key]!r}): give the same options, or a new --out")


def load_modules(state: dict, step_module) -> None:
    """The detector and the distillation losses' parameters of a checkpoint."""
    step_module.model.load_state_dict(state["model"])
    if state["fgd"] is not None:
        step_module.fgd.load_state_dict(state["fgd"])
    if state.get("distill") is not None:
        step_module.distill.load_state_dict(state["distill"])


def restore(state: dict, step_module, optimizer, scheduler, scaler) -> Position:
    """Load a training_state dict into the live objects; returns the data position."""
    load_modules(state, step_module)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return Position(state["step"], state["epoch"], state["batch"])
