"""PKDLoss on the shared harness: every fused backend of the channel-moment passes against
the reference (loss, per-level terms, dS), the API.

"torch" runs the fused wrapper on the PyTorch form of the passes
(fgdkern/reference/channel_passes.py); "cpp" and "triton" run the kernels (skipped where
they are not built).
"""
import pytest
import torch

from fgdkern import PKDLoss
from fgdkern.ops import dispatch
from tests import harness
from tests.harness import assert_exact, backend_device, elements, float64_run
from tests.helpers import channel_backends

FUSED = channel_backends("pkd", ("pkd_stats", "pkd_grad"))
# (N, widths per level, level sizes, student's sizes where they differ)
CASES = [
    (2, [4], [(1, 1)], None),
    (2, [6], [(8, 12)], None),
    (3, [5, 7, 3], [(8, 12), (4, 6), (2, 3)], None),   # widths differ between levels
    (2, [34, 66], [(16, 24), (8, 12)], [(8, 12), (8, 12)]),   # a student resized up
]


def build(N, widths, sizes, student_sizes=None, dtype=torch.float32, device="cpu", seed=0):
    """The teacher's maps of ``sizes``; the student's of ``student_sizes`` (else the same),
    correlated with the teacher's so that r is neither 0 nor 1."""
    g = torch.Generator().manual_seed(seed)
    T = [torch.randn(N, c, h, w, generator=g) * 3 + 0.5 for c, (h, w) in zip(widths, sizes)]
    S = [0.4 * t + torch.randn(t.shape, generator=g) for t in T]
    if student_sizes is not None:
        S = [torch.randn(N, c, h, w, generator=g) for c, (h, w) in zip(widths, student_sizes)]
    return PKDLoss(loss_weight=3.0), [s.to(device, dtype) for s in S], \
        [t.to(device, dtype) for t in T]


def loss_and_grads(module, S, T, backend):
    module.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    terms = module.terms(S, T)
    loss = module.loss_weight * terms.pkd_loss
    grads = torch.autograd.grad(loss, S)
    names = [f"S[{k}]" for k in range(len(S))]
    return list(terms.level_losses[:, None].unbind(0)), loss, dict(zip(names, grads))


def runner(module, S, T):
    def run(backend, float64):
        if float64:
            return loss_and_grads(module, [s.double() for s in S], [t.double() for t in T],
                                  backend)
        return loss_and_grads(module, S, T, backend)
    return run


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


@pytest.mark.parametrize("backend", FUSED)
def test_mixed_dtypes_are_upcast(backend):
    module, S, T = build(2, [6, 3], [(6, 9), (3, 5)], device=backend_device(backend))
    harness.assert_matches_reference(runner(module, [s.half() for s in S], T), backend,
                                     torch.float16)


@pytest.mark.parametrize("backend", FUSED)
def test_grad_output_is_honoured(backend):
    module, S, T = build(2, [6, 3], [(6, 8), (3, 4)], device=backend_device(backend))
    _, _, g1 = loss_and_grads(module, S, T, backend)
    S2 = [s.detach().clone().requires_grad_() for s in S]
    g2 = torch.autograd.grad(1024.0 * module(S2, T), S2)
    for a, b in zip(g1.values(), g2):
        torch.testing.assert_close(1024.0 * a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED)
def test_deterministic(backend):
    case = build(2, [10, 5], [(8, 12), (4, 6)], device=backend_device(backend))
    harness.assert_deterministic(runner(*case), backend)


@pytest.mark.parametrize("backend", FUSED + ["auto", "reference"])
def test_compile_fullgraph(backend):
    module, S, T = build(2, [4, 6], [(4, 6), (2, 3)], device=backend_device(backend))
    module.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    harness.assert_compiles_fullgraph(module, (S, T), S)


@pytest.mark.parametrize("backend", FUSED)
def test_autocast_gives_the_float32_values(backend):
    module, S, T = build(2, [6, 3], [(6, 8), (3, 4)], device=backend_device(backend))
    plain = runner(module, S, T)

    def run(b, float64):
        with torch.autocast(backend_device(backend), dtype=torch.bfloat16,
                            enabled=b != "reference"):
            return plain(b, float64)
    harness.assert_matches_reference(run, backend)


def test_no_grad_forward():
    module, S, T = build(1, [4], [(4, 4)])
    module.backend = "torch"
    with torch.no_grad():
        got = module(S, T)
    module.backend = "reference"
    assert_exact("loss", got, module(S, T).detach(), float64_run(module, S, T), elements(S, T))


# ------------------------------------------------------------------- the API
def test_one_level_lists_tuples_and_weight():
    module, S, T = build(2, [6, 3, 5], [(8, 12), (4, 6), (2, 3)])
    total = module(S, T)
    torch.testing.assert_close(module(tuple(S), tuple(T)), total, rtol=0, atol=0)
    terms = module.terms(S, T)
    assert terms.level_losses.shape == (3,)
    torch.testing.assert_close(total, 3.0 * terms.level_losses.sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(module(S[1], T[1]), 3.0 * terms.level_losses[1], rtol=1e-6, atol=0)


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


def test_float64_runs_on_the_reference():
    module, S, T = build(1, [4], [(3, 4)], dtype=torch.float64)
    assert module(S, T).dtype == torch.float64
    module.backend = "torch"
    assert module(S, T).dtype == torch.float64
    if dispatch.available("pkd", "cpp"):
        module.backend = "cpp"
        with pytest.raises(TypeError, match="float64"):
            module(S, T)
