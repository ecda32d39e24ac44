"""fgdkern.ultralytics: distil a YOLO with an fgdkern loss in Ultralytics' own trainer.

    from fgdkern.ultralytics import DistillationTrainer
    YOLO("yolov8n.yaml").train(data=..., distill_model="yolov8s.pt", trainer=DistillationTrainer)

docs/trainers.md, "Ultralytics trainer". It needs the ultralytics package
(``pip install 'fgdkern[ultralytics]'``), imported here and only here:
``import fgdkern`` never imports it.
"""
from __future__ import annotations

import importlib

EXTRA = "pip install 'fgdkern[ultralytics]'"

try:
    importlib.import_module("ultralytics.nn.distill_model")
except ImportError as exc:
    raise ImportError("fgdkern.ultralytics needs ultralytics with its distillation "
                      f"(ultralytics.nn.distill_model; 8.4.190 is tested): {EXTRA}") from exc

from fgdkern.ultralytics.losses import (LOSSES, LossConfig, NeckLoss, NeckStep,  # noqa: E402
                                        register_loss, teacher_scores)
from fgdkern.ultralytics.model import NeckDistillationModel  # noqa: E402
from fgdkern.ultralytics.trainer import DistillationTrainer  # noqa: E402

__all__ = ["DistillationTrainer", "NeckDistillationModel", "LOSSES", "LossConfig", "NeckLoss",
           "NeckStep", "register_loss", "teacher_scores"]
