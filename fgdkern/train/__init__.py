"""fgdkern.train: train a teacher, a student and an FGD-distilled student; evaluate and report.

Run it as ``python -m fgdkern.train`` (docs/training.md). The heavy dependencies
(torchvision, pycocotools, matplotlib, tqdm) are imported inside the modules of
this package only, so ``import fgdkern`` never needs them; ``require`` turns a
missing one into one clear message.
"""
from __future__ import annotations

import importlib

EXTRA = "pip install 'fgdkern[train]'"
DEPENDENCIES = ("torchvision", "pycocotools", "matplotlib", "tqdm")


def require(name: str):
    """Import and return module ``name``; ImportError naming the extra when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        raise ImportError(f"fgdkern.train needs {top} ({EXTRA})") from exc


def require_all() -> None:
    """Import every dependency of the training script once, so a missing one fails first."""
    for name in DEPENDENCIES:
        require(name)


def main(argv=None) -> int:
    """The command line entry point (fgdkern.train.cli.main)."""
    from fgdkern.train.cli import main as cli_main
    return cli_main(argv)
