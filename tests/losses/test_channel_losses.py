"""What CWDLoss and PKDLoss share, on the shared harness, for each loss and each of its
fused backends: mixed dtypes, the gradient's output scale, determinism, a fullgraph
compile, autocast, the no-grad forward, levels as lists or one tensor, float64."""
import pytest
import torch

from fgdkern.ops import dispatch
from tests import harness
from tests.harness import assert_exact, backend_device, elements, float64_run
from tests.losses.channel_cases import BUILD, FUSED, loss_and_grads, runner

LOSSES = sorted(BUILD)


def each_fused(extra=()):
    """(loss, backend) for every fused backend of each loss (marks kept), plus extra."""
    return [pytest.param(loss, *p.values, marks=p.marks, id=f"{loss}-{p.values[0]}")
            for loss in LOSSES for p in FUSED[loss]] + [
            pytest.param(loss, b, id=f"{loss}-{b}") for loss in LOSSES for b in extra]


@pytest.mark.parametrize("loss,backend", each_fused())
def test_mixed_dtypes_are_upcast(loss, backend):
    module, S, T = BUILD[loss](2, [6, 3], [(6, 9), (3, 5)], device=backend_device(backend))
    harness.assert_matches_reference(runner(module, [s.half() for s in S], T), backend,
                                     torch.float16)


@pytest.mark.parametrize("loss,backend", each_fused())
def test_grad_output_is_honoured(loss, backend):
    module, S, T = BUILD[loss](2, [6, 3], [(6, 8), (3, 4)], device=backend_device(backend))
    _, _, g1 = loss_and_grads(module, S, T, backend)
    S2 = [s.detach().clone().requires_grad_() for s in S]
    g2 = torch.autograd.grad(1024.0 * module(S2, T), S2)
    for a, b in zip(g1.values(), g2):
        torch.testing.assert_close(1024.0 * a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("loss,backend", each_fused())
def test_deterministic(loss, backend):
    case = BUILD[loss](2, [10, 5], [(8, 12), (4, 6)], device=backend_device(backend))
    harness.assert_deterministic(runner(*case), backend)


@pytest.mark.parametrize("loss,backend", each_fused(["auto", "reference"]))
def test_compile_fullgraph(loss, backend):
    module, S, T = BUILD[loss](2, [4, 6], [(4, 6), (2, 3)], device=backend_device(backend))
    module.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    harness.assert_compiles_fullgraph(module, (S, T), S)


@pytest.mark.parametrize("loss,backend", each_fused())
def test_autocast_gives_the_float32_values(loss, backend):
    module, S, T = BUILD[loss](2, [6, 3], [(6, 8), (3, 4)], device=backend_device(backend))
    plain = runner(module, S, T)

    def run(b, float64):
        with torch.autocast(backend_device(backend), dtype=torch.bfloat16,
                            enabled=b != "reference"):
            return plain(b, float64)
    harness.assert_matches_reference(run, backend)


@pytest.mark.parametrize("loss", LOSSES)
def test_no_grad_forward(loss):
    module, S, T = BUILD[loss](1, [4], [(4, 4)])
    module.backend = "torch"
    with torch.no_grad():
        got = module(S, T)
    module.backend = "reference"
    assert_exact("loss", got, module(S, T).detach(), float64_run(module, S, T), elements(S, T))


@pytest.mark.parametrize("loss", LOSSES)
def test_one_level_lists_tuples_and_weight(loss):
    module, S, T = BUILD[loss](2, [6, 3, 5], [(8, 12), (4, 6), (2, 3)])
    total = module(S, T)
    torch.testing.assert_close(module(tuple(S), tuple(T)), total, rtol=0, atol=0)
    terms = module.terms(S, T)
    assert terms.level_losses.shape == (3,)
    torch.testing.assert_close(total, 3.0 * terms.level_losses.sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(module(S[1], T[1]), 3.0 * terms.level_losses[1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("loss", LOSSES)
def test_float64_runs_on_the_reference(loss):
    module, S, T = BUILD[loss](1, [4], [(3, 4)], dtype=torch.float64)
    assert module(S, T).dtype == torch.float64
    module.backend = "torch"
    assert module(S, T).dtype == torch.float64
    if dispatch.available(loss, "cpp"):
        module.backend = "cpp"
        with pytest.raises(TypeError, match="float64"):
            module(S, T)
