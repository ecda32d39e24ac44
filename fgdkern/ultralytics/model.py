"""NeckDistillationModel: Ultralytics' DistillationModel, an fgdkern loss as its distillation term.

Everything else is Ultralytics' wrapper, unchanged: the teacher loaded and
frozen, the forward hooks on the layers that feed Detect, validation, fuse(),
the teacher left out of the EMA and of the checkpoints. Pickled or deep-copied
(the EMA, every checkpoint) the wrapper becomes Ultralytics' own
DistillationModel with the fgdkern loss as plain data in the attribute
``fgdkern``: a checkpoint of a run loads without fgdkern (docs/trainers.md,
"Checkpoints and resume").
"""
from __future__ import annotations

import copyreg

import torch
from ultralytics.nn.distill_model import DistillationModel

from fgdkern.losses.scale import check_loss_scale
from fgdkern.ultralytics.losses import LOSSES, LossConfig, NeckStep, loss_config

RECORD = "fgdkern"   # the attribute of a saved DistillationModel that holds the loss
OWN = ("distill_config", "_scale_checked")   # attributes a saved wrapper leaves out


def saved_record(ckpt) -> dict | None:
    """The fgdkern loss saved in a checkpoint of a run (its "ema"), None if it holds none."""
    ema = ckpt.get("ema") if isinstance(ckpt, dict) else None
    return getattr(ema, RECORD, None)


def record_config(record: dict) -> LossConfig:
    """The loss, preset and options a record was made with."""
    return loss_config(record["loss"], record["preset"], **record["options"])


class NeckDistillationModel(DistillationModel):
    """A student distilled from a teacher by the fgdkern loss ``config`` on the maps that
    feed their Detect heads (docs/trainers.md, "Ultralytics trainer").

    ``distill_loss`` is the loss module, sized from the widths of those maps; it is
    trained with the student. Its weighted terms, summed, are the ``dis_loss`` column.
    """

    def __init__(self, teacher_model, student_model, config: LossConfig):
        super().__init__(teacher_model=teacher_model, student_model=student_model)
        levels = range(len(self.feats_idx) - 1)   # the last index is the Detect head itself
        # the hooks still hold the maps of the constructor's dummy forward: their widths
        widths_S = [self.decouple_outputs(self._student_feats[i]).shape[1] for i in levels]
        widths_T = [self.decouple_outputs(self._teacher_feats[i]).shape[1] for i in levels]
        self._student_feats.clear()
        self._teacher_feats.clear()
        self.distill_config, self._scale_checked = config, False
        device = next(student_model.parameters()).device
        self.distill_loss = config.build(widths_S, widths_T).to(device)

    def loss(self, batch, preds=None):
        """Training: (detection losses and the distillation term, times the batch size, as
        Ultralytics scales its losses; the loss items with ``dis_loss``). Validation:
        Ultralytics' own, where ``dis_loss`` is 0."""
        if not self.training:
            return super().loss(batch, preds)
        self._teacher_feats.clear()
        self._student_feats.clear()
        with torch.no_grad():
            self.teacher_model(batch["img"])     # the hooks capture the teacher's maps
        task, items = self.student_model.loss(batch, self.student_model(batch["img"]))
        terms = LOSSES[self.distill_config.name].terms(self.distill_loss, self.step(batch))
        distill = sum(terms.values()).float().reshape(1)
        items["dis_loss"] = distill.detach()
        self._check_scale(items)
        return torch.cat([task, distill * batch["img"].shape[0]]), items

    def step(self, batch) -> NeckStep:
        """What the loss reads: the maps the hooks captured in this step, and the batch."""
        n = len(self.feats_idx) - 1
        return NeckStep([self.decouple_outputs(self._student_feats[i]) for i in range(n)],
                        [self.decouple_outputs(self._teacher_feats[i]) for i in range(n)],
                        batch, self._teacher_feats[n])

    def _check_scale(self, items: dict) -> None:
        """Warn once when the distillation term dwarfs the detection losses (one host sync,
        on the first step only; docs/fgd.md, "Loss scale")."""
        if self._scale_checked:
            return
        self._scale_checked = True
        task = sum(v for k, v in items.items() if k != "dis_loss")
        check_loss_scale(items["dis_loss"], task, name=f"{self.distill_config.name} distillation")

    def distill_record(self) -> dict:
        """The loss as plain data (its choice and its state as tensors), for a checkpoint."""
        state = {k: v.detach().clone() for k, v in self.distill_loss.state_dict().items()}
        return {**self.distill_config.as_record(), "state_dict": state}

    def load_distill_record(self, record: dict) -> None:
        """Restore the loss saved by distill_record; ValueError if it is another loss."""
        saved = record_config(record)
        if saved != self.distill_config:
            raise ValueError(f"the checkpoint holds the loss {saved}, this model "
                             f"{self.distill_config}")
        self.distill_loss.load_state_dict(record["state_dict"])

    def __reduce_ex__(self, protocol):
        # Saved as Ultralytics' own class: the loss module travels as a record of plain data,
        # so checkpoints and the EMA hold no fgdkern class.
        state = self.__getstate__()   # Ultralytics': without captured maps and hook handles
        state["_modules"] = {k: m for k, m in state["_modules"].items() if k != "distill_loss"}
        for key in OWN:
            state.pop(key, None)
        state[RECORD] = self.distill_record()
        return copyreg.__newobj__, (DistillationModel,), state
