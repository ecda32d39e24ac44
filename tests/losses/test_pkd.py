"""PKDLoss on the shared harness: every fused backend of the channel-moment passes against
the reference (loss, per-level terms, dS), the API.

"torch" runs the fused wrapper on the PyTorch form of the passes
(fgdkern/reference/channel_passes.py); "cpp" and "triton" run the kernels (skipped where
they are not built).
"""
import pytest
import torch

from fgdkern import PKDLoss
from tests import harness
from tests.harness import backend_device
from tests.losses import channel_cases
from tests.losses.channel_cases import build_pkd as build, loss_and_grads, runner

FUSED = channel_cases.FUSED["pkd"]
# (N, widths per level, level sizes, student's sizes where they differ)
CASES = [
    (2, [4], [(1, 1)], None),
    (2, [6], [(8, 12)], None),
    (3, [5, 7, 3], [(8, 12), (4, 6), (2, 3)], None),   # widths differ between levels
    (2, [34, 66], [(16, 24), (8, 12)], [(8, 12), (8, 12)]),   # a student resized up
]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("N,widths,sizes,student_sizes", CASES)
def test_fused_matches_reference(backend, N, widths, sizes, student_sizes):
    case = build(N, widths, sizes, student_sizes, device=backend_device(backend))
    harness.assert_matches_reference(runner(*case), backend)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", harness.LOW_PRECISION)
def test_fused_low_precision(backend, dtype):
    case = build(2, [6, 4], [(6, 9), (3, 5)], None, dtype, backend_device(backend))
    harness.assert_matches_reference(runner(*case), backend, dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_fused_memory_formats(backend, layout):
    module, S, T = build(2, [8, 4], [(6, 9), (3, 5)], device=backend_device(backend))
    S, T = ([harness.with_layout(x, layout) for x in xs] for xs in (S, T))
    harness.assert_matches_reference(runner(module, S, T), backend)
    if layout == "channels_last":
        _, _, grads = loss_and_grads(module, S, T, backend)
        assert grads["S[0]"].is_contiguous(memory_format=torch.channels_last)


def test_defaults_and_no_parameters():
    m = PKDLoss()
    assert (m.loss_weight, m.resize_stu, m.backend, m.check_finite) == (1.0, True, "auto", False)
    assert list(m.parameters()) == []


@pytest.mark.parametrize("resize_stu", [True, False])
def test_resizing_is_bilinear_to_the_other_map(resize_stu):
    module, S, T = build(2, [4, 3], [(6, 8), (4, 4)], [(3, 4), (8, 8)])
    module.resize_stu = resize_stu
    resize = torch.nn.functional.interpolate
    if resize_stu:
        S2, T2 = [resize(s, t.shape[2:], mode="bilinear") for s, t in zip(S, T)], T
    else:
        S2, T2 = S, [resize(t, s.shape[2:], mode="bilinear") for s, t in zip(S, T)]
    torch.testing.assert_close(module(S, T), module(S2, T2), rtol=0, atol=0)


def test_identical_maps_give_zero_and_gradient_only_to_the_student():
    module, S, T = build(2, [4], [(3, 4)])
    assert float(module(T, T)) == pytest.approx(0.0, abs=1e-6)
    assert float(module(T, [2 * t + 1 for t in T])) == pytest.approx(0.0, abs=1e-5)
    S, T = ([x.requires_grad_() for x in xs] for xs in (S, T))
    grads = torch.autograd.grad(module(S, T), S + T, allow_unused=True)
    assert grads[0] is not None and grads[1] is None
