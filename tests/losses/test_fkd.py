"""FKDLoss / MultiLevelFKDLoss on the shared harness: every backend against the reference,
both variants, and the API. Bad inputs and non-finite values: test_fkd_inputs.py.

"torch" runs the op on the PyTorch form of the imitation passes through the
same autograd wrapper as the kernels: it tests the decomposition of docs/fkd.md,
"How it is computed"; "cpp" and "triton" run the kernels.
"""
import copy
from collections import OrderedDict

import pytest
import torch

from fgdkern import FKDLoss, MultiLevelFKDLoss
from fgdkern.losses.fkd import fkd_pyramid_terms, preset
from tests import harness
from tests.harness import assert_exact, backend_device, elements, float64_run

BACKENDS = harness.all_fused("imitation")
KERNELS = harness.fused_backends("imitation")
VARIANTS = ["code", "paper"]
# (N, Cs, Ct, level sizes)
CASES = [
    (1, 4, 4, [(1, 1)]),
    (2, 6, 6, [(8, 12)]),
    (3, 5, 7, [(8, 12), (4, 6), (2, 3)]),  # adaptation / align Cs -> Ct, odd channel counts
    (2, 34, 34, [(9, 12), (3, 5)]),        # C larger than one channel block
]


def randomize(module, seed=0):
    """Non-zero values everywhere (the zero-initialised BatchNorms hide the non-local layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def build(N, Cs, Ct, sizes, variant="code", dtype=torch.float32, device="cpu", seed=0,
          temps=0.5, training=True):
    """Cs, Ct: one width for every level or a list of one per level."""
    ms = MultiLevelFKDLoss(len(sizes), Cs, Ct, variant=variant, temp=temps,
                           backend="reference")
    ms = randomize(ms, seed).to(device).train(training)
    Cs, Ct = ([C] * len(sizes) if isinstance(C, int) else C for C in (Cs, Ct))
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, c, H, W, generator=g).to(dtype).to(device) for c, (H, W) in zip(Cs, sizes)]
    T = [(torch.randn(N, c, H, W, generator=g) * 1.5 + 0.3).to(dtype).to(device)
         for c, (H, W) in zip(Ct, sizes)]
    return ms, S, T


def loss_and_grads(ms, S, T, backend):
    S = [s.detach().clone().requires_grad_() for s in S]
    terms = fkd_pyramid_terms(list(ms.levels), S, T, backend)
    loss = sum(sum(m.weighted_parts(t).values()) for m, t in zip(ms.levels, terms))
    names = [f"S[{k}]" for k in range(len(S))] + [n for n, _ in ms.named_parameters()]
    grads = torch.autograd.grad(loss, S + list(ms.parameters()), allow_unused=True)
    return [torch.stack(list(t)) for t in terms], loss, dict(zip(names, grads))


def runner(ms, S, T):
    """The harness's run(backend, float64) for one FKD case."""
    def run(backend, float64):
        if float64:
            return loss_and_grads(copy.deepcopy(ms).double(), [s.double() for s in S],
                                  [t.double() for t in T], backend)
        return loss_and_grads(ms, S, T, backend)
    return run


def assert_matches_reference(ms, S, T, backend, dtype=torch.float32):
    harness.assert_matches_reference(runner(ms, S, T), backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("N,Cs,Ct,sizes", CASES)
def test_fused_matches_reference(backend, variant, N, Cs, Ct, sizes):
    dev = backend_device(backend)
    assert_matches_reference(*build(N, Cs, Ct, sizes, variant, device=dev), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_matches_reference_with_a_width_per_level(backend, variant):
    """docs/fkd.md, "Multi-level": widths growing with the stride, as a YOLO neck's; one call."""
    ms, S, T = build(2, [5, 8, 12], [8, 8, 16], [(8, 12), (4, 6), (2, 3)], variant,
                     device=backend_device(backend))
    assert_matches_reference(ms, S, T, backend)
    for m in [ms, *ms.levels]:
        m.backend = backend
    per_level = sum(m(s, t) for m, s, t in zip(ms.levels, S, T))
    assert_exact("pyramid", ms(S, T), per_level, float64_run(ms, S, T), elements(S, T))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_matches_reference_in_eval_mode(backend, variant):
    """The non-local BatchNorms on their running statistics."""
    ms, S, T = build(2, 4, 6, [(6, 8), (3, 4)], variant, device=backend_device(backend),
                     training=False)
    assert_matches_reference(ms, S, T, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", harness.LOW_PRECISION)
def test_fused_low_precision(backend, variant, dtype):
    """float16 / bfloat16 features: the same values, accumulated in float32."""
    for Cs in (6, 4):  # without and with an align / adaptation of other channels
        ms, S, T = build(2, Cs, 6, [(6, 9), (3, 5)], variant, dtype, backend_device(backend))
        assert_matches_reference(ms, S, T, backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_fused_memory_formats(backend, variant, layout):
    ms, S, T = build(2, 8, 8, [(6, 9), (3, 5)], variant, device=backend_device(backend))
    S = [harness.with_layout(s, layout) for s in S]
    if layout == "channels_last":
        T = [harness.with_layout(t, layout) for t in T]
    else:
        T = [t.transpose(2, 3).contiguous().transpose(2, 3) for t in T]
    assert_matches_reference(ms, S, T, backend)


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_level_uses_its_own_temperature(backend, variant):
    """docs/fkd.md, "Multi-level": a pyramid is the sum of its levels, each at its temp."""
    ms, S, T = build(2, 6, 6, [(8, 12), (4, 6)], variant, device=backend_device(backend),
                     temps=[0.5, 0.9], training=False)
    for m in [ms, *ms.levels]:
        m.backend = backend
    per_level = sum(m(s, t) for m, s, t in zip(ms.levels, S, T))
    assert_exact("pyramid", ms(S, T), per_level, float64_run(ms, S, T), elements(S, T))
    ms.levels[1].temp = 0.5
    assert not torch.allclose(ms(S, T), per_level, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_grad_output_is_honoured(backend, variant):
    """A scaled loss (GradScaler, loss weights) scales every gradient."""
    ms, S, T = build(2, 6, 6, [(6, 8)], variant, device=backend_device(backend), training=False)
    _, loss, g1 = loss_and_grads(ms, S, T, backend)
    S2 = [s.detach().clone().requires_grad_() for s in S]
    terms = fkd_pyramid_terms(list(ms.levels), S2, T, backend)
    scaled = 1024.0 * sum(sum(m.weighted_parts(t).values()) for m, t in zip(ms.levels, terms))
    g2 = torch.autograd.grad(scaled, S2 + list(ms.parameters()), allow_unused=True)
    for a, b in zip(g1.values(), g2):
        if a is not None:
            torch.testing.assert_close(1024.0 * a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic(backend, variant):
    ms, S, T = build(2, 10, 10, [(8, 12), (4, 6)], variant, device=backend_device(backend))
    harness.assert_deterministic(runner(ms, S, T), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_forward(backend):
    ms, S, T = build(1, 4, 4, [(4, 4)], device=backend_device(backend), training=False)
    ms.backend = backend
    with torch.no_grad():
        got = ms(S, T)
    ms.backend = "reference"
    assert_exact("loss", got, ms(S, T).detach(), float64_run(ms, S, T), elements(S, T))


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_computes_in_float32(backend):
    """Under autocast the op and the reference compute in float32: the same loss."""
    ms, S, T = build(2, 4, 6, [(6, 8), (3, 4)], device=backend_device(backend), training=False)
    ms.backend = backend
    want = ms(S, T)
    with torch.autocast(S[0].device.type, dtype=torch.bfloat16):
        got = ms(S, T)
    assert got.dtype == torch.float32
    assert_exact("loss", got, want, float64_run(ms, S, T), elements(S, T))


@pytest.mark.parametrize("backend", KERNELS + ["torch", "auto", "reference"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_compile_fullgraph(backend, variant):
    """A model whose forward calls the loss compiles without graph breaks, to the same numbers."""
    ms, S, T = build(2, 4, 6, [(4, 6), (2, 3)], variant, device=backend_device(backend))
    for m in [ms, *ms.levels]:
        m.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    harness.assert_compiles_fullgraph(ms, (S, T), S)


# ------------------------------------------------------------------- the API
@pytest.mark.parametrize("variant", VARIANTS)
def test_weighted_terms_sum_to_forward(variant):
    ms, S, T = build(2, 4, 6, [(6, 8), (3, 4)], variant, training=False)
    parts = ms.weighted_terms(S, T)
    assert list(parts) == (["feat", "channel", "spatial", "nonlocal"] if variant == "code"
                           else ["at", "am", "nonlocal"])
    assert torch.equal(sum(parts.values()), ms(S, T))
    terms = ms.terms(S, T)
    m = ms.levels[0]
    weights = ((m.beta, m.alpha, m.alpha, m.gamma) if variant == "code"
               else (m.alpha, m.beta, m.gamma))
    for (key, value), w, k in zip(parts.items(), weights, range(len(weights))):
        torch.testing.assert_close(value, w * sum(t[k] for t in terms), rtol=1e-6, atol=0)
    one = ms.levels[0]
    assert torch.equal(sum(one.weighted_terms(S[0], T[0]).values()), one(S[0], T[0]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_without_non_local(variant):
    m = FKDLoss(4, 6, variant=variant, non_local=False)
    assert not any("non_local" in n for n, _ in m.named_parameters())
    S, T = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 5, 5)
    assert "nonlocal" not in m.weighted_terms(S, T)
    assert float(m.terms(S, T).nonlocal_loss) == 0.0


def test_single_level_equals_multi_level_of_one():
    ms, S, T = build(2, 6, 6, [(6, 8)], training=False)
    assert torch.equal(ms.levels[0](S[0], T[0]), ms(S, T))


def test_multi_level_accepts_dicts_and_sums_levels():
    ms, S, T = build(2, 6, 6, [(8, 12), (4, 6), (2, 3)], training=False)
    fpn_S = OrderedDict((k, s) for k, s in zip(["0", "1", "pool"], S))
    fpn_T = OrderedDict((k, t) for k, t in zip(["0", "1", "pool"], T))
    per_level = sum(m(s, t) for m, s, t in zip(ms.levels, S, T))
    assert_exact("pyramid", ms(fpn_S, fpn_T), per_level, float64_run(ms, S, T), elements(S, T))


NL = {f"{side}.{p}" for side in ("student_non_local", "teacher_non_local")
      for p in ("g.0.weight", "g.0.bias", "theta.weight", "theta.bias", "phi.0.weight",
                "phi.0.bias", "W.0.weight", "W.0.bias", "W.1.weight", "W.1.bias",
                "W.1.running_mean", "W.1.running_var", "W.1.num_batches_tracked")}
NL |= {"non_local_adaptation.weight", "non_local_adaptation.bias"}


def test_state_dict_names():
    code = {f"{layer}.{p}" for layer in ("adaptation", "channel_adaptation", "spatial_adaptation")
            for p in ("weight", "bias")}
    assert set(FKDLoss(128, 256).state_dict()) == code | NL
    assert set(FKDLoss(256, 256, variant="paper").state_dict()) == NL
    assert set(FKDLoss(128, 256, variant="paper").state_dict()) == NL | {"align.weight",
                                                                         "align.bias"}
    ms = MultiLevelFKDLoss(2, 128, 256)
    assert set(ms.state_dict()) == {f"levels.{k}.{n}" for k in range(2) for n in code | NL}
    mixed = MultiLevelFKDLoss(2, [64, 128], [128, 256]).state_dict()   # a width per level
    assert set(mixed) == set(ms.state_dict())
    assert mixed["levels.0.adaptation.weight"].shape == (128, 64, 1, 1)


def test_shapes_and_initialisation():
    m = FKDLoss(64, 256)
    assert m.adaptation.weight.shape == (256, 64, 1, 1) and m.adaptation.bias is not None
    assert m.channel_adaptation.weight.shape == (256, 64)
    assert m.spatial_adaptation.weight.shape == (1, 1, 3, 3)
    assert m.spatial_adaptation.padding == (1, 1)
    assert m.non_local_adaptation.weight.shape == (256, 64, 1, 1)
    for block, C in ((m.student_non_local, 64), (m.teacher_non_local, 256)):
        assert block.theta.weight.shape == (C // 2, C, 1, 1)
        assert block.W[0].weight.shape == (C, C // 2, 1, 1)
        assert not block.W[1].weight.any() and not block.W[1].bias.any()
    assert FKDLoss(256, 256, variant="paper").align is None


@pytest.mark.parametrize("name,temp,alpha,beta,gamma", [
    ("one_stage", 0.5, 4e-4, 2e-2, 4e-4),
    ("two_stage", 0.1, 7e-5, 4e-3, 7e-5),
])
def test_presets(name, temp, alpha, beta, gamma):
    assert preset(name) == dict(temp=temp, alpha=alpha, beta=beta, gamma=gamma)
    m = FKDLoss.for_detector(name, 256, 256)
    assert (m.temp, m.alpha, m.beta, m.gamma, m.variant) == (temp, alpha, beta, gamma, "code")
    ms = MultiLevelFKDLoss.for_detector(name, 3, 256, 256, variant="paper")
    assert ms.num_levels == 3 and all(lv.temp == temp and lv.variant == "paper"
                                      for lv in ms.levels)
    assert FKDLoss.for_detector(name, 256, 256, temp=0.3).temp == 0.3


def test_class_defaults():
    m = FKDLoss(256, 256)
    assert (m.variant, m.temp, m.alpha, m.beta, m.gamma, m.non_local) == (
        "code", 0.5, 4e-4, 2e-2, 4e-4, True)


def test_per_level_temperatures():
    ms = MultiLevelFKDLoss(3, 8, 8, temp=[0.5, 0.3, 0.1])
    assert [m.temp for m in ms.levels] == [0.5, 0.3, 0.1]


def test_float64_runs_on_reference_under_auto():
    ms, S, T = build(1, 4, 4, [(4, 4)])
    ms = ms.double()
    ms.backend = "auto"
    assert ms([s.double() for s in S], [t.double() for t in T]).dtype == torch.float64
