"""MGDLoss on the shared harness: every fused backend of the imitation pass against the
reference (loss, per-level terms, dS and the align and generation gradients), masks, the API.

"torch" runs the fused wrapper on the PyTorch form of the imitation passes; "cpp" and
"triton" run the kernels (skipped where they are not built).
"""
import pytest
import torch

from fgdkern import MGDLoss
from fgdkern.losses.mgd import draw_masks
from fgdkern.ops import dispatch
from tests import harness
from tests.harness import assert_exact, backend_device, elements, float64_run

FUSED = harness.all_fused("imitation")
# (N, student widths, teacher widths, level sizes): ints for one block pair for every level
CASES = [
    (1, 4, 4, [(1, 1)]),
    (2, 6, 6, [(8, 12)]),
    (3, 5, 7, [(8, 12), (4, 6)]),                  # one align conv and generation block
    (2, [4, 6, 8], [8, 6, 4], [(8, 12), (4, 6), (2, 3)]),   # one of each per level
]


def masks_for(S, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(s.shape[0], 1, *s.shape[2:], generator=g) > 0.65).to(s.device, s.dtype)
            for s in S]


def build(N, Cs, Ct, sizes, dtype=torch.float32, device="cpu", seed=0):
    """A loss (its parameters randomised), the two pyramids and fixed masks."""
    g = torch.Generator().manual_seed(seed)
    module = MGDLoss(Cs, Ct, alpha_mgd=0.5)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    L = len(sizes)
    cs = Cs if isinstance(Cs, list) else [Cs] * L
    ct = Ct if isinstance(Ct, list) else [Ct] * L
    S = [torch.randn(N, c, h, w, generator=g) for c, (h, w) in zip(cs, sizes)]
    T = [torch.randn(N, c, h, w, generator=g) * 1.5 + 0.3 for c, (h, w) in zip(ct, sizes)]
    S, T = [s.to(device, dtype) for s in S], [t.to(device, dtype) for t in T]
    return module.to(device), S, T, masks_for(S)


def loss_and_grads(module, S, T, masks, backend):
    module.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    terms = module.terms(S, T, masks)
    loss = module.alpha_mgd * terms.mgd_loss
    names = [f"S[{k}]" for k in range(len(S))] + [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, S + list(module.parameters()))
    return list(terms.level_losses[:, None].unbind(0)), loss, dict(zip(names, grads))


def runner(module, S, T, masks):
    def run(backend, float64):
        if float64:
            d = lambda xs: [x.double() for x in xs]  # noqa: E731
            return loss_and_grads(harness.float64_copy(module), d(S), d(T), d(masks), backend)
        return loss_and_grads(module, S, T, masks, backend)
    return run


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("N,Cs,Ct,sizes", CASES)
def test_fused_matches_reference(backend, N, Cs, Ct, sizes):
    case = build(N, Cs, Ct, sizes, device=backend_device(backend))
    harness.assert_matches_reference(runner(*case), backend)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", harness.LOW_PRECISION)
def test_fused_low_precision(backend, dtype):
    case = build(2, 4, 6, [(6, 9), (3, 5)], dtype, backend_device(backend))
    harness.assert_matches_reference(runner(*case), backend, dtype)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_fused_memory_formats(backend, layout):
    module, S, T, masks = build(2, 6, 6, [(6, 9), (3, 5)], device=backend_device(backend))
    S, T = ([harness.with_layout(x, layout) for x in xs] for xs in (S, T))
    harness.assert_matches_reference(runner(module, S, T, masks), backend)


@pytest.mark.parametrize("backend", FUSED)
def test_deterministic(backend):
    case = build(2, 6, 6, [(8, 12), (4, 6)], device=backend_device(backend))
    harness.assert_deterministic(runner(*case), backend)


@pytest.mark.parametrize("backend", FUSED + ["auto", "reference"])
def test_compile_fullgraph(backend):
    module, S, T, masks = build(2, 4, 6, [(4, 6), (2, 3)], device=backend_device(backend))
    module.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    harness.assert_compiles_fullgraph(module, (S, T, masks), S)


def test_no_grad_forward():
    module, S, T, masks = build(1, 4, 4, [(4, 4)])
    module.backend = "torch"
    with torch.no_grad():
        got = module(S, T, masks)
    module.backend = "reference"
    assert_exact("loss", got, module(S, T, masks).detach(),
                 float64_run(module, S, T, masks), elements(S, T))


# ----------------------------------------------------------------- the masks
def test_drawn_masks_drop_lambda_of_the_pixels_and_follow_the_seed():
    module, S, T, _ = build(4, 4, 4, [(40, 50)])
    masks = draw_masks(S, 0.65)
    assert masks[0].shape == (4, 1, 40, 50) and masks[0].dtype == S[0].dtype
    assert set(masks[0].unique().tolist()) == {0.0, 1.0}
    assert abs(float((masks[0] == 0).float().mean()) - 0.65) < 0.02
    torch.manual_seed(3)
    first = module(S, T)
    torch.manual_seed(3)
    torch.testing.assert_close(module(S, T), first, rtol=0, atol=0)
    assert not torch.equal(module(S, T), first)
    torch.manual_seed(3)
    torch.testing.assert_close(module(S, T, draw_masks(S, module.lambda_mgd)), first,
                               rtol=0, atol=0)


def test_mask_of_ones_and_zeros():
    """All ones: G of the whole student map; all zeros: G of zeros (the biases alone)."""
    module, S, T, _ = build(2, 4, 4, [(3, 4)])
    ones = [torch.ones(2, 1, 3, 4)]
    gen = module.generation
    want = ((gen(S[0]) - T[0]) ** 2).sum() / 2 * module.alpha_mgd
    torch.testing.assert_close(module(S, T, ones), want, rtol=1e-5, atol=0)
    zeros = module(S, T, [torch.zeros(2, 1, 3, 4)])
    torch.testing.assert_close(zeros, module([torch.zeros_like(S[0])], T, ones), rtol=1e-6, atol=0)
    module.lambda_mgd = 0.0      # drop nothing: the masks drawn are all ones
    torch.testing.assert_close(module(S, T), module(S, T, ones), rtol=0, atol=0)


# ------------------------------------------------------------------- the API
def test_parameter_names_of_the_published_blocks():
    assert set(MGDLoss(256, 256).state_dict()) == {
        "generation.0.weight", "generation.0.bias", "generation.2.weight", "generation.2.bias"}
    m = MGDLoss(128, 256)
    assert m.align.weight.shape == (256, 128, 1, 1) and m.align.bias.shape == (256,)
    assert m.generation[0].weight.shape == (256, 256, 3, 3)
    m = MGDLoss([64, 128], [128, 128])
    assert {k for k in m.state_dict() if k.startswith("align")} == {"align.0.weight",
                                                                    "align.0.bias"}
    assert "generation.1.2.weight" in m.state_dict()
    d = MGDLoss(4, 4)
    assert (d.alpha_mgd, d.lambda_mgd, d.backend, d.check_finite) == (2e-5, 0.65, "auto", False)


def test_one_level_lists_and_alpha():
    module, S, T, masks = build(2, 5, 7, [(8, 12), (4, 6)])
    total = module(S, T, masks)
    terms = module.terms(tuple(S), tuple(T), masks)
    torch.testing.assert_close(total, 0.5 * terms.level_losses.sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(module(S[1], T[1], masks[1]), 0.5 * terms.level_losses[1],
                               rtol=1e-6, atol=0)


def test_gradient_reaches_the_student_and_parameters_not_the_teacher():
    module, S, T, masks = build(2, 4, 6, [(3, 4)])
    S, T = ([x.requires_grad_() for x in xs] for xs in (S, T))
    grads = torch.autograd.grad(module(S, T, masks), S + T + list(module.parameters()),
                                allow_unused=True)
    assert grads[0] is not None and grads[1] is None and all(g is not None for g in grads[2:])


def test_float64_runs_on_the_reference():
    module, S, T, masks = build(1, 4, 4, [(3, 4)], dtype=torch.float64)
    module = module.double()
    assert module(S, T, masks).dtype == torch.float64
    module.backend = "torch"
    assert module(S, T, masks).dtype == torch.float64
    if dispatch.available("imitation", "cpp"):
        module.backend = "cpp"
        with pytest.raises(TypeError, match="float64"):
            module(S, T, masks)
