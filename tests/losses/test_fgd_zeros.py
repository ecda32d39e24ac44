"""FGD on every backend against the reference on features with exact zeros and subnormal
values (tests.helpers.KINDS): ReLU'd maps, zero channels, zero pixels, all-zero images
of the student and of the teacher.

The gradient of |S| (mask_loss) at S = 0 is sign(0) = 0 in the reference; only these
inputs show a backend that takes it as +1. Subnormal features are flushed to zero by
the C++ kernels (docs: csrc/cpu/vec.h), so the C++ backend is compared with the
reference on flushed features; Triton may read them either way (see
tests/ops/test_fgd_passes_zeros.py).
"""
import pytest
import torch

from fgdkern import MultiLevelFGDLoss
from tests import harness
from tests.harness import ALL_FUSED, backend_device
from tests.helpers import KINDS, flush_denormals, random_boxes, random_features, randomize
from tests.losses.test_fgd import IMG, runner


def build(kind, dtype=torch.float32, device="cpu", Cs=6, Ct=6):
    sizes = [(5, 7), (2, 3)]
    ms = randomize(MultiLevelFGDLoss(len(sizes), Cs, Ct, backend="reference"), 2).to(device)
    S, T = random_features(3, Cs, Ct, sizes, dtype, seed=2, kind=kind)
    boxes = random_boxes(3, IMG, seed=2, empty_images=(1,))
    return ms, [s.to(device) for s in S], [t.to(device) for t in T], boxes, [IMG] * 3


def check(backend, kind, ms, S, T, boxes, shapes, dtype=torch.float32):
    exact = runner(ms, S, T, boxes, shapes)
    flushed = runner(ms, [flush_denormals(s) for s in S], [flush_denormals(t) for t in T],
                     boxes, shapes)

    def against(reference_run):
        def run(b, float64):
            return (reference_run if b == "reference" else exact)(b, float64)
        harness.assert_matches_reference(run, backend, dtype)

    if kind != "denormal" or backend == "torch":
        against(exact)
    elif backend == "cpp":
        against(flushed)
    else:
        try:
            against(exact)
        except AssertionError:
            against(flushed)


@pytest.mark.parametrize("backend", ALL_FUSED)
@pytest.mark.parametrize("kind", KINDS[1:])
def test_fused_matches_reference_with_zeros(backend, kind):
    dev = backend_device(backend)
    check(backend, kind, *build(kind, device=dev))


@pytest.mark.parametrize("backend", ALL_FUSED)
@pytest.mark.parametrize("dtype,kind", [(torch.bfloat16, "relu"), (torch.float16, "zero_image"),
                                        (torch.bfloat16, "denormal")])
def test_low_precision_with_zeros(backend, dtype, kind):
    check(backend, kind, *build(kind, dtype, device=backend_device(backend)), dtype)


@pytest.mark.parametrize("backend", ALL_FUSED)
def test_align_layer_with_zero_student(backend):
    """A ReLU'd student through the align conv: the zeros are in the input, not in S."""
    check(backend, "relu", *build("relu", device=backend_device(backend), Cs=4, Ct=6))
