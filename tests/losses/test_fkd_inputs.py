"""What FKDLoss does with bad and non-finite input (docs/fkd.md, "Validation"): clear
errors naming the argument, NaN/Inf propagated by default, raised with check_finite=True."""
import pytest
import torch

from fgdkern import FKDLoss, MultiLevelFKDLoss
from fgdkern.losses.fkd import fkd_pyramid_terms, preset
from tests.harness import all_fused
from tests.losses.test_fkd import build

BACKENDS = ["reference"] + all_fused("imitation")


@pytest.fixture(params=["code", "paper"])
def one_level(request):
    ms, S, T = build(2, 4, 6, [(4, 6)], request.param)
    return ms.levels[0], S[0], T[0]


# ------------------------------------------------------------ construction
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(variant="official"), ValueError, "variant must be one of"),
    (dict(temp=0.0), ValueError, "temp must be a positive number"),
    (dict(temp=-0.5), ValueError, "temp must be a positive number"),
    (dict(temp="0.5"), ValueError, "temp must be a positive number"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(non_local=1), TypeError, "non_local must be a bool"),
    (dict(check_finite="yes"), TypeError, "check_finite must be a bool"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        FKDLoss(4, 4, **kwargs)


@pytest.mark.parametrize("Cs,Ct,name", [(0, 4, "student_channels"), (4, 2.0, "teacher_channels"),
                                        (True, 4, "student_channels")])
def test_bad_channel_counts(Cs, Ct, name):
    with pytest.raises(ValueError, match=name):
        FKDLoss(Cs, Ct)


def test_multi_level_construction():
    with pytest.raises(ValueError, match="num_levels must be a positive int"):
        MultiLevelFKDLoss(0, 4, 4)
    with pytest.raises(ValueError, match="temp has 2 values, the loss has 3 levels"):
        MultiLevelFKDLoss(3, 4, 4, temp=[0.5, 0.5])
    with pytest.raises(ValueError, match="temp must be a positive number"):
        MultiLevelFKDLoss(2, 4, 4, temp=[0.5, 0.0])
    with pytest.raises(ValueError, match="student_channels has 3 widths for 2 levels"):
        MultiLevelFKDLoss(2, [4, 8, 8], 8)
    with pytest.raises(ValueError, match=r"teacher_channels\[0\] must be an int"):
        MultiLevelFKDLoss(2, 4, ["8", 8])
    with pytest.raises(ValueError, match="student_channels must be an int >= 1"):
        MultiLevelFKDLoss(2, [4, 0], 8)
    with pytest.raises(ValueError, match="detector must be one of"):
        preset("retinanet")


# ------------------------------------------------------------------ inputs
def test_wrong_channels(one_level):
    m, S, T = one_level
    with pytest.raises(ValueError, match="preds_S has 6 channels, the loss was built for 4"):
        m(T, T)
    with pytest.raises(ValueError, match="preds_T has 4 channels, the loss was built for 6"):
        m(S, S)


def test_mismatched_batch_or_spatial_size(one_level):
    m, S, T = one_level
    with pytest.raises(ValueError, match="same batch size and spatial size"):
        m(S, T[:1])
    with pytest.raises(ValueError, match="same batch size and spatial size"):
        m(S, T[..., :3])


def test_not_a_tensor_or_not_a_float(one_level):
    m, S, T = one_level
    with pytest.raises(TypeError, match="preds_S must be a torch.Tensor"):
        m(S.tolist(), T)
    with pytest.raises(TypeError, match="preds_T must be float16, bfloat16, float32 or float64"):
        m(S, T.to(torch.int32))
    with pytest.raises(ValueError, match=r"preds_S must be \(N, C, H, W\)"):
        m(S[0], T)


def test_multi_level_inputs():
    ms, S, T = build(2, 4, 6, [(4, 6), (2, 3)])
    with pytest.raises(ValueError, match="feats_T has 1 levels, the loss was built for 2"):
        ms(S, T[:1])
    with pytest.raises(TypeError, match="feats_S must be a list or dict"):
        ms(S[0], T)
    with pytest.raises(ValueError, match=r"preds_T\[1\] has 4 channels"):
        ms(S, [T[0], S[1]])
    with pytest.raises(ValueError, match=r"preds_S\[1\] .* same batch size"):
        ms(S, [T[0], T[1][:1]])


def test_mixed_dtypes_are_upcast(one_level):
    """S in bfloat16 and T in float32 give the loss of both in float32."""
    m, S, T = one_level
    m.eval()
    S16 = S.to(torch.bfloat16)
    torch.testing.assert_close(m(S16, T), m(S16.float(), T), rtol=1e-6, atol=0)


# --------------------------------------------------------------- non-finite
def poisoned(S, T, which, value):
    bad = (S if which == "preds_S" else T).clone()
    bad[1, 2, 3, 4] = value
    return (bad, T) if which == "preds_S" else (S, bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["preds_S", "preds_T"])
def test_check_finite_raises(backend, which, one_level):
    m, S, T = one_level
    S_, T_ = poisoned(S, T, which, float("nan"))
    with pytest.raises(ValueError, match=rf"{which}.*non-finite"):
        fkd_pyramid_terms([m], [S_], [T_], backend, check_finite=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["preds_S", "preds_T"])
def test_non_finite_propagates_by_default(backend, which, one_level):
    """As in torch.nn's losses: no exception, a non-finite loss."""
    m, S, T = one_level
    S_, T_ = poisoned(S, T, which, float("inf"))
    terms = fkd_pyramid_terms([m], [S_], [T_], backend)[0]
    assert not torch.isfinite(sum(m.weighted_parts(terms).values()))


def test_multi_level_names_the_bad_level():
    ms, S, T = build(1, 4, 4, [(4, 6), (2, 3)])
    for m in [ms, *ms.levels]:
        m.check_finite = True
    bad = T[1].clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"preds_T\[1\] contains non-finite"):
        ms(S, [T[0], bad])
