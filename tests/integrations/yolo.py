"""Stand-ins for the Ultralytics tests and bench/ultralytics_steps.py: offline settings, a tiny
YOLO-format dataset, a teacher checkpoint built from YAML, and the training arguments.

Import this module before ultralytics: Ultralytics reads YOLO_OFFLINE and YOLO_CONFIG_DIR
when it is imported (its online check, its settings file).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")   # no update, hub or asset checks
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="fgdkern-yolo-config-"))
os.environ.setdefault("YOLO_VERBOSE", "False")


def _font_in_place() -> None:
    """Ultralytics' dataset check looks for Arial.ttf in its config directory and downloads it
    when missing, plots or not: any TrueType font under that name keeps it offline."""
    import matplotlib
    font = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)


_font_in_place()

NAMES = ("square", "bar")


def write_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: int = 64,
                  seed: int = 0) -> Path:
    """Images with bright boxes of two classes on noise, their labels, and data.yaml."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
            lines = []
            for cls in range(len(NAMES)):
                w, h = rng.uniform(0.15, 0.4, 2)
                cx, cy = rng.uniform(0.25, 0.75, 2)
                x0, y0 = int((cx - w / 2) * size), int((cy - h / 2) * size)
                img[y0:y0 + int(h * size), x0:x0 + int(w * size), cls] = 255
                lines.append(f"{cls} {cx:.5f} {cy:.5f} {w:.5f} {h:.5f}")
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {k}: {n}\n" for k, n in enumerate(NAMES))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data


def write_teacher(root: Path, cfg: str = "yolov8s.yaml") -> Path:
    """A teacher checkpoint as Ultralytics saves one, from the model's YAML (random weights)."""
    from ultralytics import YOLO
    path = root / f"teacher-{Path(cfg).stem}.pt"
    YOLO(cfg).save(path)
    return path


def train_args(data: Path, project: Path, name: str, **overrides) -> dict:
    """Small, fast and offline: CPU, no AMP check (it downloads a model), no plots (fonts)."""
    return {**dict(data=str(data), epochs=1, imgsz=64, batch=4, workers=0, device="cpu",
                   amp=False, plots=False, project=str(project), name=name, exist_ok=True,
                   seed=0, verbose=False), **overrides}


def without(package: str) -> str:
    """Python source that makes ``package`` unimportable in the process that runs it first:
    what an environment without that package sees."""
    return (f"import sys\n"
            f"class Without:\n"
            f"    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] == {package!r}:\n"
            f"            raise ImportError({package!r} + ' is not installed here')\n"
            f"sys.meta_path.insert(0, Without())\n")


@contextlib.contextmanager
def no_network():
    """Any attempt to reach the network raises, and is recorded: an attempt that the code
    under test catches and swallows still fails the test (the list is checked at the end)."""
    attempts: list = []

    def refuse(*args, **kwargs):
        caller = " <- ".join(f"{Path(f.filename).name}:{f.lineno}"
                             for f in reversed(traceback.extract_stack())
                             if "ultralytics" in f.filename)
        attempts.append((args[:2], caller))
        raise OSError(f"network access in an offline test: {args[:2]!r} from {caller}")

    saved = socket.getaddrinfo, socket.create_connection, socket.socket.connect
    socket.getaddrinfo, socket.create_connection = refuse, refuse
    socket.socket.connect = lambda self, *a: refuse(*a)
    try:
        yield attempts
    finally:
        socket.getaddrinfo, socket.create_connection, socket.socket.connect = saved


@contextlib.contextmanager
def torch_global_state():
    """Ultralytics' training sets torch's deterministic-algorithm flags and, on a CPU, its
    thread count (one less than the cores) for the process; the rest of the test session
    runs with the values it had before."""
    fill = torch.utils.deterministic.fill_uninitialized_memory
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.set_num_threads(threads)
