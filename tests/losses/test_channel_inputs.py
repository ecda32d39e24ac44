"""CWDLoss and PKDLoss: bad inputs raise clear errors naming the argument and the level;
check_finite. What only one of them checks (tau; resize_stu, one value per channel) is
tested for that one."""
import pytest
import torch

from fgdkern import CWDLoss, PKDLoss

LOSSES = {"cwd": CWDLoss, "pkd": PKDLoss}


def pyramids(N=2, widths=(4, 6, 3), sizes=((6, 8), (3, 4), (2, 2))):
    S = [torch.randn(N, c, h, w) for c, (h, w) in zip(widths, sizes)]
    T = [torch.randn(N, c, h, w) for c, (h, w) in zip(widths, sizes)]
    return S, T


BAD_LEVELS = [
    # (argument index, level, value, error, message)
    (1, 1, torch.randn(2, 8, 3, 4), ValueError, r"preds_T\[1\] has 8 channels but preds_S\[1\] has 6"),
    (1, 0, torch.randn(3, 4, 6, 8), ValueError, r"preds_T\[0\] has batch size 3"),
    (0, 2, [[0.5]], TypeError, r"preds_S\[2\] must be a torch.Tensor"),
    (1, 0, torch.ones(2, 4, 6, 8, dtype=torch.long), TypeError, r"preds_T\[0\] must be float16"),
    (0, 1, torch.randn(2, 6, 12), ValueError, r"preds_S\[1\] must be 4-D"),
    (0, 0, torch.randn(2, 4, 0, 8), ValueError, r"preds_S\[0\] is empty"),
    (0, 0, torch.randn(0, 4, 6, 8), ValueError, r"preds_S\[0\] is empty"),
    (1, 1, torch.randn(2, 6, 3, 4, device="meta"), ValueError, r"preds_T\[1\] is on meta"),
]
# CWD compares the softmaxes of maps of one size; PKD resizes one map to the other.
CWD_BAD_LEVELS = [
    (1, 2, torch.randn(2, 3, 2, 3), ValueError, r"preds_T\[2\] is \(2, 3\) but preds_S\[2\] is \(2, 2\)"),
]


@pytest.mark.parametrize("loss,which,level,value,error,message",
                         [(loss, *case) for loss in LOSSES for case in BAD_LEVELS]
                         + [("cwd", *case) for case in CWD_BAD_LEVELS])
def test_bad_level_names_the_argument(loss, which, level, value, error, message):
    args = [list(a) for a in pyramids()]
    args[which][level] = value
    with pytest.raises(error, match=message):
        LOSSES[loss]()(*args)


@pytest.mark.parametrize("loss", LOSSES)
def test_single_tensors_and_level_counts(loss):
    S, T = pyramids()
    module = LOSSES[loss]()
    with pytest.raises(ValueError, match=r"preds_T has 8 channels but preds_S has 4"):
        module(S[0], torch.randn(2, 8, 6, 8))
    with pytest.raises(TypeError, match="preds_T must be a Tensor like the other argument"):
        module(S[0], T)
    with pytest.raises(ValueError, match="preds_T has 2 levels but preds_S has 3"):
        module(S, T[:2])
    with pytest.raises(ValueError, match="preds_S has no level"):
        module([], [])
    with pytest.raises(TypeError, match="preds_S must be a Tensor or a list or tuple"):
        module({"0": S[0]}, T)


@pytest.mark.parametrize("loss", LOSSES)
def test_constructor_arguments(loss):
    with pytest.raises(ValueError, match="backend must be one of"):
        LOSSES[loss](backend="cuda")
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        LOSSES[loss](check_finite=1)
    with pytest.raises(TypeError, match="loss_weight must be a number"):
        LOSSES[loss](loss_weight=None)


def test_tau():
    for tau in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tau must be > 0"):
            CWDLoss(tau=tau)
    with pytest.raises(TypeError, match="tau must be a number"):
        CWDLoss(tau="1")


def test_resize_stu():
    with pytest.raises(TypeError, match="resize_stu must be a bool"):
        PKDLoss(resize_stu="no")


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("loss", LOSSES)
def test_non_finite_propagates_or_is_named(loss, backend):
    S, T = pyramids()
    T[1][0, 0, 0, 0] = float("nan")
    assert torch.isnan(LOSSES[loss](backend=backend)(S, T))
    with pytest.raises(ValueError, match=r"preds_T\[1\] contains non-finite values"):
        LOSSES[loss](backend=backend, check_finite=True)(S, T)


def test_one_value_per_channel_has_no_standard_deviation():
    with pytest.raises(ValueError, match=r"preds_S has N\*H\*W = 1 value per channel"):
        PKDLoss()(torch.randn(1, 4, 1, 1), torch.randn(1, 4, 1, 1))
    with pytest.raises(ValueError, match=r"preds_S\[0\] has N\*H\*W = 1"):
        PKDLoss()([torch.randn(1, 4, 1, 1)], [torch.randn(1, 4, 1, 1)])
