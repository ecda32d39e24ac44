"""DistillationTrainer: Ultralytics' DetectionTrainer distilling with an fgdkern loss.

The trainer is Ultralytics' own; it changes three steps of a run
(docs/trainers.md, "Ultralytics trainer"): the model it builds is a
NeckDistillationModel (setup_model), the fgdkern loss is saved with every
checkpoint of the run (save_model) and restored with the optimizer state when
a run resumes or recovers from a NaN (_load_checkpoint_state).
"""
from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.torch_utils import unwrap_model

from fgdkern.ultralytics.losses import LossConfig, loss_config
from fgdkern.ultralytics.model import RECORD, NeckDistillationModel, record_config, saved_record


class DistillationTrainer(DetectionTrainer):
    """Train a YOLO student distilled from ``distill_model`` by an fgdkern loss.

    ``model.train(data=..., distill_model="teacher.pt", trainer=DistillationTrainer)``
    distils with FGD and its default YOLO preset; ``trainer=DistillationTrainer.with_loss(
    "fkd")`` with another loss, preset or options. A resumed run continues with the loss
    saved in its checkpoint.
    """

    distill: LossConfig | None = None   # set by with_loss; None: FGD, or the run's on resume

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        super().__init__(cfg, overrides, _callbacks)
        if not self.args.distill_model:
            raise ValueError("distill_model must name the teacher's checkpoint, "
                             "e.g. model.train(..., distill_model='yolov8s.pt')")

    @classmethod
    def with_loss(cls, loss: str = "fgd", preset: str | None = None, **options) -> type:
        """A trainer class that distils with ``loss`` (a name of fgdkern.ultralytics.LOSSES),
        its ``preset`` (None: the first) and ``options`` overriding the preset's values, e.g.
        ``with_loss("fgd", alpha_fgd=2e-3)``. Checked here, before any training starts."""
        config = loss_config(loss, preset, **options)
        # a class of its own, so that DDP workers (which unpickle the trainer's class by
        # value) distil with the same loss; plain pickle refuses it rather than lose it
        return type(cls.__name__, (cls,), {
            "distill": config, "__module__": cls.__module__,
            "__qualname__": f"{cls.__qualname__}.with_loss({loss!r})"})

    def setup_model(self):
        """Ultralytics' model set-up, then its student and teacher in a NeckDistillationModel."""
        ckpt = super().setup_model()
        if isinstance(self.model, NeckDistillationModel):
            return ckpt
        config = self._run_config(ckpt)
        if isinstance(self.model, DistillationModel):   # resume: Ultralytics rebuilt its wrapper
            student, teacher = self.model.student_model, self.model.teacher_model
        else:
            student, teacher = self.model, self.args.distill_model
        student.args = self.args   # the wrapper reads imgsz from it, as on Ultralytics' resume
        self.model = NeckDistillationModel(teacher, student, config)
        return ckpt

    def _run_config(self, ckpt) -> LossConfig:
        """The loss of this run: the one saved in its checkpoint on resume, else the class's."""
        if not self.resume:
            return self.distill or loss_config()
        record = saved_record(ckpt)
        if record is None:
            raise ValueError(f"{self.args.model} holds no fgdkern loss: the run was not started "
                             "by fgdkern's DistillationTrainer; resume it with its own trainer")
        saved = record_config(record)
        if self.distill is not None and self.distill != saved:
            raise ValueError(f"resume continues the run's loss {saved}, not {self.distill}: "
                             "resume with trainer=DistillationTrainer")
        return saved

    def save_model(self):
        """Ultralytics' checkpoints, with the live fgdkern loss in their EMA wrapper."""
        setattr(self.ema.ema, RECORD, unwrap_model(self.model).distill_record())
        return super().save_model()   # its bool gates the on_model_save callbacks

    def _load_checkpoint_state(self, ckpt):
        # Ultralytics restores the optimizer, the EMA and the stopper here, on resume and on
        # recovery from a NaN; the fgdkern loss is restored with them, in place, so the
        # optimizer's state stays attached to its parameters.
        super()._load_checkpoint_state(ckpt)
        record = saved_record(ckpt)
        if record is None:
            raise ValueError("the checkpoint holds no fgdkern loss to restore")
        unwrap_model(self.model).load_distill_record(record)
