"""PFILoss: bad inputs raise clear errors naming the argument and the level; check_finite."""
from collections import OrderedDict

import pytest
import torch

from fgdkern import PFILoss


def pyramids(N=2, C=4, K=3, sizes=((6, 8), (3, 4), (2, 2))):
    S = [torch.randn(N, C, h, w) for h, w in sizes]
    T = [torch.randn(N, C, h, w) for h, w in sizes]
    PS = [torch.rand(N, K, h, w) for h, w in sizes]
    PT = [torch.rand(N, K, h, w) for h, w in sizes]
    return S, T, PS, PT


def replaced(args, which, level, value):
    args = [list(a) for a in args]
    args[which][level] = value
    return args


BAD_LEVELS = [
    # (argument index, level, value, error, message)
    (2, 2, torch.rand(2, 2, 2, 2), ValueError,
     r"probs_S\[2\] has 2 classes but probs_T\[2\] has 3"),
    (3, 1, torch.rand(2, 3, 3, 5), ValueError,
     r"probs_T\[1\] is \(3, 5\) but feats_S\[1\] is \(3, 4\)"),
    (1, 0, torch.randn(3, 4, 6, 8), ValueError, r"feats_T\[0\] has batch size 3"),
    (0, 2, torch.randn(2, 5, 2, 2), ValueError, r"feats_S\[2\] has 5 channels"),
    (2, 0, [[0.5]], TypeError, r"probs_S\[0\] must be a torch.Tensor"),
    (3, 0, torch.ones(2, 3, 6, 8, dtype=torch.long), TypeError, r"probs_T\[0\] must be float16"),
    (1, 1, torch.randn(2, 4, 12), ValueError, r"feats_T\[1\] must be 4-D"),
    (0, 0, torch.randn(2, 4, 0, 8), ValueError, r"feats_S\[0\] is empty"),
    (2, 1, torch.rand(2, 0, 3, 4), ValueError, r"probs_S\[1\] is empty"),
]


@pytest.mark.parametrize("which,level,value,error,message", BAD_LEVELS)
def test_bad_level_names_the_argument(which, level, value, error, message):
    with pytest.raises(error, match=message):
        PFILoss(4, 4)(*replaced(pyramids(), which, level, value))


def test_level_counts_and_keys():
    S, T, PS, PT = pyramids()
    with pytest.raises(ValueError, match="probs_T has 2 levels but feats_S has 3"):
        PFILoss()(S, T, PS, PT[:2])
    d = lambda xs, keys: OrderedDict(zip(keys, xs))  # noqa: E731
    with pytest.raises(ValueError, match="feats_T has the levels"):
        PFILoss()(d(S, "abc"), d(T, "abd"), PS, PT)
    with pytest.raises(ValueError, match="feats_S has no level"):
        PFILoss()([], [], [], [])
    with pytest.raises(TypeError, match="feats_S must be a list or dict of per-level tensors, "
                                        "got a single Tensor"):
        PFILoss()(S[0], T, PS, PT)
    with pytest.raises(TypeError, match="probs_S must be a list or dict"):
        PFILoss()(S, T, 3, PT)


def test_channels_without_align():
    S, T, PS, PT = pyramids()
    T[1] = torch.randn(2, 6, 3, 4)
    with pytest.raises(ValueError, match=r"feats_S\[1\] has 4 channels but feats_T\[1\] has 6"):
        PFILoss()(S, T, PS, PT)


def test_constructor_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        PFILoss(backend="cuda")
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        PFILoss(check_finite=1)
    with pytest.raises(ValueError, match="student_channels must be a positive int"):
        PFILoss(0, 4)
    with pytest.raises(ValueError, match="teacher_channels must be a positive int"):
        PFILoss(4, 2.5)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_non_finite_inputs(backend):
    S, T, PS, PT = pyramids()
    PT[2] = PT[2].clone()
    PT[2][0, 1, 0, 0] = float("nan")
    assert not torch.isfinite(PFILoss(backend=backend)(S, T, PS, PT))  # propagates by default
    with pytest.raises(ValueError, match=r"probs_T\[2\] contains non-finite values"):
        PFILoss(backend=backend, check_finite=True)(S, T, PS, PT)
    assert torch.isfinite(PFILoss(backend=backend, check_finite=True)(*pyramids()))
