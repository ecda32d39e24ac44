"""MGDLoss: bad inputs and masks raise clear errors naming the argument and the level;
constructor arguments; check_finite."""
import pytest
import torch

from fgdkern import MGDLoss


def pyramids(N=2, sizes=((6, 8), (3, 4))):
    return ([torch.randn(N, 4, h, w) for h, w in sizes],
            [torch.randn(N, 6, h, w) for h, w in sizes])


BAD_LEVELS = [
    # (argument index, level, value, error, message)
    (0, 1, torch.randn(2, 5, 3, 4), ValueError, r"preds_S\[1\] has 5 channels, the loss was built for 4"),
    (1, 0, torch.randn(2, 4, 6, 8), ValueError, r"preds_T\[0\] has 4 channels, the loss was built for 6"),
    (1, 1, torch.randn(2, 6, 4, 4), ValueError, r"preds_T\[1\] is \(4, 4\) but preds_S\[1\] is \(3, 4\)"),
    (1, 1, torch.randn(1, 6, 3, 4), ValueError, r"preds_T\[1\] has batch size 1"),
    (0, 0, "x", TypeError, r"preds_S\[0\] must be a torch.Tensor"),
    (0, 1, torch.ones(2, 4, 3, 4, dtype=torch.int32), TypeError, r"preds_S\[1\] must be float16"),
    (1, 0, torch.randn(2, 6, 6, 8, 1), ValueError, r"preds_T\[0\] must be 4-D"),
    (0, 1, torch.randn(2, 4, 3, 0), ValueError, r"preds_S\[1\] is empty"),
]


@pytest.mark.parametrize("which,level,value,error,message", BAD_LEVELS)
def test_bad_level_names_the_argument(which, level, value, error, message):
    args = [list(a) for a in pyramids()]
    args[which][level] = value
    with pytest.raises(error, match=message):
        MGDLoss(4, 6)(*args)


BAD_MASKS = [
    (torch.ones(2, 1, 6, 8), TypeError, "mask must be a Tensor per level"),
    ([torch.ones(2, 1, 6, 8)], ValueError, "mask has 1 levels but preds_S has 2"),
    ([torch.ones(2, 1, 6, 8), torch.ones(2, 4, 3, 4)], ValueError,
     r"mask\[1\] must be \(N, 1, H, W\) = \(2, 1, 3, 4\)"),
    ([torch.ones(2, 1, 6, 8), torch.ones(2, 1, 3, 4, dtype=torch.long)], TypeError,
     r"mask\[1\] must be a bool or floating-point tensor"),
    ([None, torch.ones(2, 1, 3, 4)], TypeError, r"mask\[0\] must be a torch.Tensor"),
    ([torch.ones(2, 1, 6, 8, device="meta"), torch.ones(2, 1, 3, 4)], ValueError,
     r"mask\[0\] is on meta"),
]


@pytest.mark.parametrize("mask,error,message", BAD_MASKS)
def test_bad_mask_names_the_argument(mask, error, message):
    with pytest.raises(error, match=message):
        MGDLoss(4, 6)(*pyramids(), mask)


def test_boolean_masks_and_one_level():
    S, T = pyramids()
    keep = [torch.rand(2, 1, *s.shape[2:]) > 0.5 for s in S]
    m = MGDLoss(4, 6)
    torch.testing.assert_close(m(S, T, keep), m(S, T, [k.float() for k in keep]), rtol=0, atol=0)
    torch.testing.assert_close(m(S[0], T[0], keep[0]), m(S[:1], T[:1], keep[:1]), rtol=0, atol=0)


def test_level_counts():
    S, T = pyramids()
    with pytest.raises(ValueError, match="preds_T has 1 levels but preds_S has 2"):
        MGDLoss(4, 6)(S, T[:1])
    with pytest.raises(ValueError, match="preds_S has 2 levels but the loss was built for 3"):
        MGDLoss([4, 4, 4], [6, 6, 6])(S, T)
    with pytest.raises(TypeError, match="preds_S must be a Tensor or a list or tuple"):
        MGDLoss(4, 6)(3, T)


def test_constructor_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        MGDLoss(4, 6, backend="cuda")
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        MGDLoss(4, 6, check_finite="yes")
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"lambda_mgd must be >= 0.0 and < 1.0"):
            MGDLoss(4, 6, lambda_mgd=bad)
    with pytest.raises(TypeError, match="alpha_mgd must be a number"):
        MGDLoss(4, 6, alpha_mgd="2e-5")
    with pytest.raises(ValueError, match="student_channels must be a positive int"):
        MGDLoss(0, 6)
    with pytest.raises(ValueError, match="teacher_channels must be a positive int"):
        MGDLoss(4, [])
    with pytest.raises(ValueError, match="must both be ints or sequences of one length"):
        MGDLoss([4, 4], [6])


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_non_finite_propagates_or_is_named(backend):
    S, T = pyramids()
    S[1][1, 2, 0, 0] = float("inf")
    assert not torch.isfinite(MGDLoss(4, 6, backend=backend)(S, T))
    with pytest.raises(ValueError, match=r"preds_S\[1\] contains non-finite values"):
        MGDLoss(4, 6, backend=backend, check_finite=True)(S, T)
