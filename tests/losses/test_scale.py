"""fgdkern.check_loss_scale: one warning when the distillation loss dwarfs the task loss."""
import math
import warnings

import pytest
import torch

from fgdkern.losses import scale


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(scale, "_warned", set())


def test_warns_once_per_name():
    with pytest.warns(UserWarning, match=r"FGD loss \(500\) is 500 times the task loss"):
        assert scale.check_loss_scale(torch.tensor(500.0), torch.tensor(1.0), name="FGD") == 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scale.check_loss_scale(1e4, 1.0, name="FGD")        # said once already
    with pytest.warns(UserWarning, match="other loss"):
        scale.check_loss_scale(1e4, 1.0, name="other")


@pytest.mark.parametrize("d,t", [(1.0, 1.0), (99.0, 1.0), (0.0, 0.0), (float("nan"), 1.0),
                                 (1.0, float("inf"))])
def test_quiet_when_comparable_or_not_judgeable(d, t):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio = scale.check_loss_scale(d, t)
    assert math.isnan(ratio) or ratio <= 100 or t == 0


def test_bad_arguments():
    with pytest.raises(TypeError, match="distill_loss"):
        scale.check_loss_scale("1", 1.0)
    with pytest.raises(ValueError, match="task_loss must be a scalar"):
        scale.check_loss_scale(1.0, torch.ones(2))
    with pytest.raises(ValueError, match="factor"):
        scale.check_loss_scale(1.0, 1.0, factor=0)
