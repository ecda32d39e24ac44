"""PFILoss on the shared harness: every fused backend of the imitation passes against the
reference (loss, per-level terms, dF_s and the align conv's gradients), the API, bad inputs.

"torch" runs the fused wrapper on the PyTorch form of the imitation passes; "cpp" and
"triton" run the kernels (skipped where they are not built).
"""
import copy
from collections import OrderedDict

import pytest
import torch

from fgdkern import PFILoss
from fgdkern.ops import dispatch
from tests import harness
from tests.harness import assert_exact, backend_device, elements, float64_run

IMIT_FUSED = harness.all_fused("imitation")
# (N, Cs, Ct, K, level sizes)
CASES = [
    (1, 4, 4, 1, [(1, 1)]),
    (2, 6, 6, 3, [(8, 12)]),
    (3, 5, 7, 4, [(8, 12), (4, 6), (2, 3)]),  # align conv, odd channel counts
    (2, 34, 34, 9, [(16, 24), (8, 12)]),      # C larger than one channel block
]


def build(N, Cs, Ct, K, sizes, dtype=torch.float32, device="cpu", seed=0):
    """A loss (its align conv randomised) and the four pyramids."""
    g = torch.Generator().manual_seed(seed)
    module = PFILoss(Cs, Ct)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    S = [torch.randn(N, Cs, h, w, generator=g) for h, w in sizes]
    T = [torch.randn(N, Ct, h, w, generator=g) * 1.5 + 0.3 for h, w in sizes]
    PS = [torch.randn(N, K, h, w, generator=g).sigmoid() for h, w in sizes]
    PT = [torch.randn(N, K, h, w, generator=g).sigmoid() for h, w in sizes]
    to = lambda xs: [x.to(device, dtype) for x in xs]  # noqa: E731
    return module.to(device), to(S), to(T), to(PS), to(PT)


def loss_and_grads(module, S, T, PS, PT, backend):
    module.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    terms = module.terms(S, T, PS, PT)
    loss = module.loss_weight * terms.pfi_loss
    names = [f"S[{k}]" for k in range(len(S))] + [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, S + list(module.parameters()), allow_unused=True)
    return list(terms.level_losses[:, None].unbind(0)), loss, dict(zip(names, grads))


def runner(module, S, T, PS, PT):
    """The harness's run(backend, float64) for one PFI case."""
    def run(backend, float64):
        if float64:
            d = lambda xs: [x.double() for x in xs]  # noqa: E731
            return loss_and_grads(copy.deepcopy(module).double(), d(S), d(T), d(PS), d(PT),
                                  backend)
        return loss_and_grads(module, S, T, PS, PT, backend)
    return run


@pytest.mark.parametrize("backend", IMIT_FUSED)
@pytest.mark.parametrize("N,Cs,Ct,K,sizes", CASES)
def test_fused_matches_reference(backend, N, Cs, Ct, K, sizes):
    case = build(N, Cs, Ct, K, sizes, device=backend_device(backend))
    harness.assert_matches_reference(runner(*case), backend)


@pytest.mark.parametrize("backend", IMIT_FUSED)
@pytest.mark.parametrize("dtype", harness.LOW_PRECISION)
def test_fused_low_precision(backend, dtype):
    """float16 / bfloat16 features and probabilities, accumulated in float32."""
    case = build(2, 6, 6, 3, [(6, 9), (3, 5)], dtype, backend_device(backend))
    harness.assert_matches_reference(runner(*case), backend, dtype)


@pytest.mark.parametrize("backend", IMIT_FUSED)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_fused_memory_formats(backend, layout):
    module, S, T, PS, PT = build(2, 8, 8, 4, [(6, 9), (3, 5)], device=backend_device(backend))
    S, T, PS, PT = ([harness.with_layout(x, layout) for x in xs] for xs in (S, T, PS, PT))
    harness.assert_matches_reference(runner(module, S, T, PS, PT), backend)


@pytest.mark.parametrize("backend", IMIT_FUSED)
def test_mixed_dtypes_are_upcast(backend):
    """A float16 student against a float32 teacher, bfloat16 against float32 probabilities."""
    module, S, T, PS, PT = build(2, 6, 6, 3, [(6, 9), (3, 5)], device=backend_device(backend))
    S = [s.half() for s in S]
    PS = [p.bfloat16() for p in PS]
    harness.assert_matches_reference(runner(module, S, T, PS, PT), backend, torch.float16)


@pytest.mark.parametrize("backend", IMIT_FUSED)
def test_grad_output_is_honoured(backend):
    """A scaled loss (GradScaler, loss weights) scales every gradient."""
    module, S, T, PS, PT = build(2, 6, 6, 2, [(6, 8), (3, 4)], device=backend_device(backend))
    _, loss, g1 = loss_and_grads(module, S, T, PS, PT, backend)
    S2 = [s.detach().clone().requires_grad_() for s in S]
    scaled = 1024.0 * module(S2, T, PS, PT)
    g2 = torch.autograd.grad(scaled, S2 + list(module.parameters()))
    for a, b in zip(g1.values(), g2):
        torch.testing.assert_close(1024.0 * a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", IMIT_FUSED)
def test_deterministic(backend):
    case = build(2, 10, 10, 3, [(8, 12), (4, 6)], device=backend_device(backend))
    harness.assert_deterministic(runner(*case), backend)


@pytest.mark.parametrize("backend", IMIT_FUSED + ["auto", "reference"])
def test_compile_fullgraph(backend):
    """A forward that calls the loss compiles without graph breaks, to the same numbers."""
    module, S, T, PS, PT = build(2, 4, 6, 3, [(4, 6), (2, 3)], device=backend_device(backend))
    module.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    harness.assert_compiles_fullgraph(module, (S, T, PS, PT), S)


@pytest.mark.parametrize("backend", IMIT_FUSED)
def test_autocast_gives_the_float32_values(backend):
    """Inside a bfloat16 autocast region (no align conv, so autocast has nothing of the
    model to run) the fused path computes in float32: the float32 reference's values."""
    module, S, T, PS, PT = build(2, 6, 6, 3, [(6, 8), (3, 4)], device=backend_device(backend))
    plain = runner(module, S, T, PS, PT)

    def run(b, float64):
        with torch.autocast(backend_device(backend), dtype=torch.bfloat16,
                            enabled=b != "reference"):
            return plain(b, float64)
    harness.assert_matches_reference(run, backend)


def test_no_grad_forward():
    module, S, T, PS, PT = build(1, 4, 4, 2, [(4, 4)])
    module.backend = "torch"
    with torch.no_grad():
        got = module(S, T, PS, PT)
    module.backend = "reference"
    assert_exact("loss", got, module(S, T, PS, PT).detach(), float64_run(module, S, T, PS, PT),
                 elements(S, T))


# ------------------------------------------------------------------- the API
def test_dicts_lists_and_weight():
    module, S, T, PS, PT = build(2, 6, 6, 3, [(8, 12), (4, 6), (2, 3)])
    keys = ["0", "1", "pool"]
    as_dict = lambda xs: OrderedDict(zip(keys, xs))  # noqa: E731
    total = module(as_dict(S), as_dict(T), as_dict(PS), as_dict(PT))
    torch.testing.assert_close(total, module(S, T, PS, PT), rtol=0, atol=0)
    terms = module.terms(tuple(S), T, PS, PT)
    assert terms.level_losses.shape == (3,)
    torch.testing.assert_close(total, 1.5 * terms.level_losses.mean(), rtol=1e-6, atol=0)


def test_defaults_and_align():
    m = PFILoss()
    assert (m.loss_weight, m.backend, m.check_finite, m.align) == (1.5, "auto", False, None)
    assert PFILoss(256, 256).align is None and PFILoss(teacher_channels=8).student_channels == 8
    m = PFILoss(128, 256)
    assert m.align.weight.shape == (256, 128, 1, 1)
    assert set(m.state_dict()) == {"align.weight", "align.bias"}


def test_gradient_reaches_only_the_student():
    module, S, T, PS, PT = build(2, 4, 4, 2, [(3, 4)])
    S, T, PS, PT = ([x.requires_grad_() for x in xs] for xs in (S, T, PS, PT))
    grads = torch.autograd.grad(module(S, T, PS, PT), S + T + PS + PT, allow_unused=True)
    assert grads[0] is not None and all(g is None for g in grads[1:])


def test_float64_runs_on_the_reference():
    """float64 anywhere: "auto" runs the reference; a fused backend named rejects it
    ("torch", the passes' PyTorch form, computes in float64 like the reference)."""
    module, S, T, PS, PT = build(1, 4, 4, 2, [(3, 4)], dtype=torch.float64)
    module = module.double()
    assert module(S, T, PS, PT).dtype == torch.float64
    module.backend = "torch"
    assert module(S, T, PS, PT).dtype == torch.float64
    if dispatch.available("imitation", "cpp"):
        module.backend = "cpp"
        with pytest.raises(TypeError, match="float64"):
            module(S, T, PS, PT)
