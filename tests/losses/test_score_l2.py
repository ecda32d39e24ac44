"""ScoreWeightedL2Loss: the projector per level, the weight, and bad input
(docs/score-l2.md). The reference it runs: tests/reference/test_score_l2.py."""
import pytest
import torch

from fgdkern import ScoreWeightedL2Loss
from fgdkern.reference.score_l2 import score_l2_reference

SIZES = [(8, 8), (4, 4), (2, 2)]


def pyramid(widths, N=2, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, c, h, w, generator=g).requires_grad_(requires_grad)
            for c, (h, w) in zip(widths, SIZES)]


def scores(N=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(N, h, w, generator=g) for h, w in SIZES]


def test_projector_layout_and_widths():
    """Ultralytics' DistillationModel.projector layout: <k>.0 and <k>.2, a ReLU between."""
    loss = ScoreWeightedL2Loss(3, [16, 32, 64], [32, 64, 128])
    keys = {f"projector.{k}.{i}.{p}" for k in range(3) for i in (0, 2) for p in ("weight", "bias")}
    assert set(loss.state_dict()) == keys
    assert loss.projector[2][0].weight.shape == (128, 64, 1, 1)
    assert loss.projector[2][2].weight.shape == (128, 128, 1, 1)


def test_forward_is_the_weighted_reference_of_the_projected_maps():
    loss = ScoreWeightedL2Loss(3, [16, 32, 64], [32, 64, 128], weight=2.5)
    S, T, w = pyramid([16, 32, 64], requires_grad=True), pyramid([32, 64, 128], seed=2), scores()
    want = score_l2_reference([p(s) for p, s in zip(loss.projector, S)], T, w)
    torch.testing.assert_close(loss.terms(S, T, w), want, rtol=0, atol=0)
    torch.testing.assert_close(loss(S, T, w), 2.5 * want.sum(), rtol=1e-6, atol=0)
    loss(S, T, [x[:, None] for x in w]).backward()   # (N, 1, H, W) scores work too
    assert all(s.grad is not None for s in S)
    assert all(p.grad is not None for p in loss.parameters())


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(num_levels=0), ValueError, "num_levels must be a positive int"),
    (dict(student_channels=[16, 32]), ValueError, "student_channels has 2 widths for 3 levels"),
    (dict(teacher_channels=[32, 0, 128]), ValueError, "teacher_channels must be ints >= 1"),
    (dict(weight="6"), TypeError, "weight must be a number"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    args = dict(num_levels=3, student_channels=[16, 32, 64], teacher_channels=[32, 64, 128])
    with pytest.raises(error, match=match):
        ScoreWeightedL2Loss(**{**args, **kwargs})


def test_bad_inputs_name_the_argument():
    loss = ScoreWeightedL2Loss(3, [16, 32, 64], [32, 64, 128])
    S, T, w = pyramid([16, 32, 64]), pyramid([32, 64, 128], seed=2), scores()
    with pytest.raises(ValueError, match=r"scores\[1\] must be \(N, H, W\)"):
        loss(S, T, [w[0], w[1][:, :2], w[2]])
    with pytest.raises(TypeError, match=r"scores\[0\] must be a torch.Tensor"):
        loss(S, T, [None, w[1], w[2]])
    with pytest.raises(ValueError, match=r"preds_S\[2\] has 32 channels"):
        loss(S[:2] + [S[1][..., :2, :2]], T, w)
    with pytest.raises(ValueError, match="scores has 2 levels"):
        loss(S, T, w[:2])
