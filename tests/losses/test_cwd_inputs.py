"""CWDLoss: bad inputs raise clear errors naming the argument and the level; check_finite."""
import pytest
import torch

from fgdkern import CWDLoss


def pyramids(N=2, widths=(4, 6, 3), sizes=((6, 8), (3, 4), (2, 2))):
    S = [torch.randn(N, c, h, w) for c, (h, w) in zip(widths, sizes)]
    T = [torch.randn(N, c, h, w) for c, (h, w) in zip(widths, sizes)]
    return S, T


BAD_LEVELS = [
    # (argument index, level, value, error, message)
    (1, 1, torch.randn(2, 8, 3, 4), ValueError, r"preds_T\[1\] has 8 channels but preds_S\[1\] has 6"),
    (1, 2, torch.randn(2, 3, 2, 3), ValueError, r"preds_T\[2\] is \(2, 3\) but preds_S\[2\] is \(2, 2\)"),
    (1, 0, torch.randn(3, 4, 6, 8), ValueError, r"preds_T\[0\] has batch size 3"),
    (0, 2, [[0.5]], TypeError, r"preds_S\[2\] must be a torch.Tensor"),
    (1, 0, torch.ones(2, 4, 6, 8, dtype=torch.long), TypeError, r"preds_T\[0\] must be float16"),
    (0, 1, torch.randn(2, 6, 12), ValueError, r"preds_S\[1\] must be 4-D"),
    (0, 0, torch.randn(2, 4, 0, 8), ValueError, r"preds_S\[0\] is empty"),
    (0, 0, torch.randn(0, 4, 6, 8), ValueError, r"preds_S\[0\] is empty"),
    (1, 1, torch.randn(2, 6, 3, 4, device="meta"), ValueError, r"preds_T\[1\] is on meta"),
]


@pytest.mark.parametrize("which,level,value,error,message", BAD_LEVELS)
def test_bad_level_names_the_argument(which, level, value, error, message):
    args = [list(a) for a in pyramids()]
    args[which][level] = value
    with pytest.raises(error, match=message):
        CWDLoss()(*args)


def test_single_tensors_and_level_counts():
    S, T = pyramids()
    with pytest.raises(ValueError, match=r"preds_T has 8 channels but preds_S has 4"):
        CWDLoss()(S[0], torch.randn(2, 8, 6, 8))
    with pytest.raises(TypeError, match="preds_T must be a Tensor like the other argument"):
        CWDLoss()(S[0], T)
    with pytest.raises(ValueError, match="preds_T has 2 levels but preds_S has 3"):
        CWDLoss()(S, T[:2])
    with pytest.raises(ValueError, match="preds_S has no level"):
        CWDLoss()([], [])
    with pytest.raises(TypeError, match="preds_S must be a Tensor or a list or tuple"):
        CWDLoss()({"0": S[0]}, T)


def test_constructor_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        CWDLoss(backend="cuda")
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        CWDLoss(check_finite=1)
    for tau in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tau must be > 0"):
            CWDLoss(tau=tau)
    with pytest.raises(TypeError, match="tau must be a number"):
        CWDLoss(tau="1")
    with pytest.raises(TypeError, match="loss_weight must be a number"):
        CWDLoss(loss_weight=None)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_non_finite_propagates_or_is_named(backend):
    S, T = pyramids()
    T[1][0, 0, 0, 0] = float("nan")
    assert torch.isnan(CWDLoss(backend=backend)(S, T))
    with pytest.raises(ValueError, match=r"preds_T\[1\] contains non-finite values"):
        CWDLoss(backend=backend, check_finite=True)(S, T)
