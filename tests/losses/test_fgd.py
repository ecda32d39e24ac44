"""FGDLoss / MultiLevelFGDLoss on the shared harness: every backend against the reference,
the API. Bad inputs and non-finite values: test_fgd_inputs.py.

"torch" runs the fused wrapper on the PyTorch form of the two passes: it tests
the decomposition itself; "cpp" and "triton" run the kernels.
"""
import copy
from collections import OrderedDict

import pytest
import torch

from fgdkern import FGDLoss, MultiLevelFGDLoss
from fgdkern.losses.fgd import fgd_pyramid_terms
from fgdkern.ops import dispatch
from tests import harness
from tests.harness import (ALL_FUSED, FUSED_BACKENDS, assert_exact, backend_device, elements,
                           float64_run)
from tests.helpers import random_boxes, random_features, randomize

IMG = (64, 96)
# (N, Cs, Ct, level sizes)
CASES = [
    (1, 4, 4, [(1, 1)]),
    (2, 6, 6, [(8, 12)]),
    (3, 5, 7, [(8, 12), (4, 6), (2, 3)]),  # align layer, odd channel counts
    (2, 34, 34, [(16, 24), (8, 12)]),      # C larger than one channel block
]


def build(N, Cs, Ct, sizes, dtype=torch.float32, device="cpu", seed=0, temps=None):
    ms = randomize(MultiLevelFGDLoss(len(sizes), Cs, Ct, backend="reference"), seed).to(device)
    for m, temp in zip(ms.levels, temps or []):
        m.temp = temp
    S, T = random_features(N, Cs, Ct, sizes, dtype, seed)
    boxes = random_boxes(N, IMG, seed=seed)
    shapes = [IMG] * N
    return ms, [s.to(device) for s in S], [t.to(device) for t in T], boxes, shapes


def build_mixed(device="cpu", seed=0):
    """Three levels whose widths grow with the stride, as a YOLO neck's: an align conv on
    two of them (odd and even widths), none on the middle one."""
    N, Cs, Ct, sizes = 2, [5, 8, 12], [8, 8, 16], [(8, 12), (4, 6), (2, 3)]
    ms = randomize(MultiLevelFGDLoss(len(sizes), Cs, Ct, backend="reference"), seed).to(device)
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(N, c, H, W, generator=g).to(device) for c, (H, W) in zip(Cs, sizes)]
    T = [(torch.randn(N, c, H, W, generator=g) * 1.5 + 0.3).to(device)
         for c, (H, W) in zip(Ct, sizes)]
    return ms, S, T, random_boxes(N, IMG, seed=seed), [IMG] * N


def loss_and_grads(ms, S, T, boxes, shapes, backend, autocast=None):
    """autocast: a dtype to run the forward in a CPU autocast region of (the backward runs
    outside it, as torch.autocast recommends)."""
    S = [s.detach().clone().requires_grad_() for s in S]
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        terms = fgd_pyramid_terms(list(ms.levels), S, T, boxes, shapes, backend)
        loss = sum(m.weighted(t) for m, t in zip(ms.levels, terms))
    names = [f"S[{k}]" for k in range(len(S))] + [n for n, _ in ms.named_parameters()]
    grads = torch.autograd.grad(loss, S + list(ms.parameters()), allow_unused=True)
    return [torch.stack(list(t)) for t in terms], loss, dict(zip(names, grads))


def runner(ms, S, T, boxes, shapes):
    """The harness's run(backend, float64) for one FGD case."""
    def run(backend, float64):
        if float64:
            return loss_and_grads(copy.deepcopy(ms).double(), [s.double() for s in S],
                                  [t.double() for t in T], boxes, shapes, backend)
        return loss_and_grads(ms, S, T, boxes, shapes, backend)
    return run


def assert_matches_reference(ms, S, T, boxes, shapes, backend, dtype=torch.float32):
    harness.assert_matches_reference(runner(ms, S, T, boxes, shapes), backend, dtype)


@pytest.mark.parametrize("backend", ALL_FUSED)
@pytest.mark.parametrize("N,Cs,Ct,sizes", CASES)
def test_fused_matches_reference(backend, N, Cs, Ct, sizes):
    assert_matches_reference(*build(N, Cs, Ct, sizes, device=backend_device(backend)), backend)


@pytest.mark.parametrize("backend", ALL_FUSED)
@pytest.mark.parametrize("dtype", harness.LOW_PRECISION)
def test_fused_low_precision(backend, dtype):
    """float16 / bfloat16 features: the same values, accumulated in float32."""
    ms, S, T, boxes, shapes = build(2, 6, 6, [(6, 9), (3, 5)], dtype, backend_device(backend))
    assert_matches_reference(ms, S, T, boxes, shapes, backend, dtype)


@pytest.mark.parametrize("backend", ALL_FUSED)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_fused_memory_formats(backend, layout):
    ms, S, T, boxes, shapes = build(2, 8, 8, [(6, 9), (3, 5)], device=backend_device(backend))
    S = [harness.with_layout(s, layout) for s in S]
    if layout == "channels_last":
        T = [harness.with_layout(t, layout) for t in T]
    else:
        T = [t.transpose(2, 3).contiguous().transpose(2, 3) for t in T]
    assert_matches_reference(ms, S, T, boxes, shapes, backend)


@pytest.mark.parametrize("backend", ALL_FUSED)
def test_fused_matches_reference_with_a_width_per_level(backend):
    """docs/fgd.md, "Every level has its own width": loss and every gradient, one call."""
    assert_matches_reference(*build_mixed(device=backend_device(backend)), backend)


@pytest.mark.parametrize("backend", ["reference"] + ALL_FUSED)
def test_a_width_per_level_is_the_sum_of_its_levels(backend):
    ms, S, T, boxes, shapes = build_mixed(device=backend_device(backend))
    for m in [ms, *ms.levels]:
        m.backend = backend
    per_level = sum(m(s, t, boxes, shapes) for m, s, t in zip(ms.levels, S, T))
    assert_exact("pyramid", ms(S, T, boxes, shapes), per_level,
                 float64_run(ms, S, T, boxes, shapes), elements(S, T))


@pytest.mark.parametrize("backend", ["reference"] + ALL_FUSED)
def test_every_level_uses_its_own_temperature(backend):
    """docs/fgd.md, "Multi-level and temperatures": a pyramid is the sum of its levels."""
    ms, S, T, boxes, shapes = build(2, 6, 6, [(8, 12), (4, 6)], device=backend_device(backend),
                                    temps=[0.5, 0.9])
    for m in [ms, *ms.levels]:
        m.backend = backend
    per_level = sum(m(s, t, boxes, shapes) for m, s, t in zip(ms.levels, S, T))
    assert_exact("pyramid", ms(S, T, boxes, shapes), per_level,
                 float64_run(ms, S, T, boxes, shapes), elements(S, T))
    ms.levels[1].temp = 0.5
    assert not torch.allclose(ms(S, T, boxes, shapes), per_level, rtol=1e-4)
    if backend != "reference":
        assert_matches_reference(*build(2, 6, 6, [(8, 12), (4, 6)], temps=[0.3, 1.7],
                                        device=backend_device(backend)), backend)


@pytest.mark.parametrize("backend", ALL_FUSED)
def test_boxes_none_many_and_everywhere(backend):
    dev = backend_device(backend)
    ms, S, T, _, shapes = build(3, 6, 6, [(8, 12), (4, 6)], device=dev)
    many = random_boxes(1, IMG, max_boxes=60, seed=5)[0]
    full = torch.tensor([[0.0, 0.0, IMG[1], IMG[0]]])  # covers every cell: bg is all zero
    boxes = [torch.zeros(0, 4), many, full]
    assert_matches_reference(ms, S, T, boxes, shapes, backend)


@pytest.mark.parametrize("backend", ALL_FUSED)
def test_grad_output_is_honoured(backend):
    """A scaled loss (GradScaler, loss weights) scales every gradient."""
    ms, S, T, boxes, shapes = build(2, 6, 6, [(6, 8)], device=backend_device(backend))
    ms = copy.deepcopy(ms)
    _, loss, g1 = loss_and_grads(ms, S, T, boxes, shapes, backend)
    S2 = [s.detach().clone().requires_grad_() for s in S]
    terms = fgd_pyramid_terms(list(ms.levels), S2, T, boxes, shapes, backend)
    scaled = 1024.0 * sum(m.weighted(t) for m, t in zip(ms.levels, terms))
    g2 = torch.autograd.grad(scaled, S2 + list(ms.parameters()), allow_unused=True)
    for a, b in zip(g1.values(), g2):
        if a is not None:
            torch.testing.assert_close(1024.0 * a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(backend):
    ms, S, T, boxes, shapes = build(2, 10, 10, [(8, 12), (4, 6)], device=backend_device(backend))
    harness.assert_deterministic(runner(ms, S, T, boxes, shapes), backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_no_grad_forward(backend):
    ms, S, T, boxes, shapes = build(1, 4, 4, [(4, 4)], device=backend_device(backend))
    ms.backend = ms.levels[0].backend = backend
    with torch.no_grad():
        got = ms(S, T, boxes, shapes)
    ms.backend = ms.levels[0].backend = "reference"
    assert_exact("loss", got, ms(S, T, boxes, shapes).detach(),
                 float64_run(ms, S, T, boxes, shapes), elements(S, T))


@pytest.mark.parametrize("backend", FUSED_BACKENDS + ["auto", "reference"])
def test_compile_fullgraph(backend):
    """A model whose forward calls the loss compiles without graph breaks, to the same numbers."""
    dev = backend_device(backend)
    ms, S, T, boxes, shapes = build(2, 4, 4, [(4, 6), (2, 3)], device=dev)
    for m in [ms, *ms.levels]:
        m.backend = backend
    S = [s.detach().clone().requires_grad_() for s in S]
    harness.assert_compiles_fullgraph(ms, (S, T, boxes, shapes), S)


def _autocast_runner(ms, S, T, boxes, shapes, dtype):
    """run(backend, float64) with a fused backend inside a CPU autocast region of dtype
    (the features as given: autocast changes ops, not inputs), the reference outside
    it. The align conv is part of the model under autocast: the reference gets its
    output as autocast computes it."""
    def run(backend, float64):
        if backend == "reference":
            aligned = []
            for m, s in zip(ms.levels, S):
                with torch.autocast("cpu", dtype=dtype):
                    aligned.append(s if m.align is None else m.align(s).float().detach())
            plain = copy.deepcopy(ms)
            for m in plain.levels:
                m.align, m.student_channels = None, m.teacher_channels
            if float64:
                out = loss_and_grads(plain.double(), [a.double() for a in aligned],
                                     [t.double() for t in T], boxes, shapes, backend)
            else:
                out = loss_and_grads(plain, aligned, T, boxes, shapes, backend)
            if aligned[0] is not S[0]:  # gradients of the aligned features, not of S
                for k in [k for k in out[2] if k.startswith("S[")]:
                    del out[2][k]
            return out
        return loss_and_grads(ms, S, T, boxes, shapes, backend, autocast=dtype)
    return run


# "auto" is "cpp" on CPU tensors
AUTOCAST_CASES = [("auto", torch.bfloat16), ("auto", torch.float16)] + [
    pytest.param(b.values[0] if hasattr(b, "values") else b, torch.bfloat16,
                 marks=getattr(b, "marks", ())) for b in ALL_FUSED if b != FUSED_BACKENDS[0]]


@pytest.mark.parametrize("backend,dtype", AUTOCAST_CASES)
def test_autocast_gives_the_float32_values(backend, dtype):
    """Under autocast the fused paths compute in float32 (docs/fgd.md): the loss, terms and
    gradients equal the float32 reference outside autocast on the same inputs, to the
    float32 tolerance of every other fused test (1e-5 relative: the two differ only in
    the order of float32 sums). Running the GcBlock layers in bfloat16 / float16
    (epsilon 7.8e-3 / 9.8e-4) moves rela_loss by 1e-4 and more: well outside it."""
    ms, S, T, boxes, shapes = build(2, 6, 6, [(6, 8), (3, 4)], device=backend_device(backend))
    for m in [ms, *ms.levels]:
        m.backend = backend
    harness.assert_matches_reference(_autocast_runner(ms, S, T, boxes, shapes, dtype), backend)


@pytest.mark.parametrize("backend", ["auto"] + FUSED_BACKENDS[1:])
def test_autocast_with_low_precision_inputs_and_align(backend):
    """float16 features, an align layer run by autocast in bfloat16: the float32 reference
    on the same rounded inputs and aligned features (1e-5, as above); the gradients of
    every parameter after the align layer."""
    ms, S, T, boxes, shapes = build(2, 4, 6, [(6, 8), (3, 4)], torch.float16,
                                    backend_device(backend))
    for m in [ms, *ms.levels]:
        m.backend = backend
    S = [s.float() for s in S]  # the align conv takes float32 S; autocast rounds it
    harness.assert_matches_reference(_autocast_runner(ms, S, T, boxes, shapes, torch.bfloat16),
                                     backend, torch.float16)


# ------------------------------------------------------------------- the API
def test_single_level_equals_multi_level_of_one():
    ms, S, T, boxes, shapes = build(2, 6, 6, [(6, 8)])
    single = ms.levels[0]
    assert torch.equal(single(S[0], T[0], boxes, shapes), ms(S, T, boxes, shapes))


def test_multi_level_accepts_dicts_and_sums_levels():
    ms, S, T, boxes, shapes = build(2, 6, 6, [(8, 12), (4, 6), (2, 3)])
    fpn_S = OrderedDict((k, s) for k, s in zip(["0", "1", "pool"], S))
    fpn_T = OrderedDict((k, t) for k, t in zip(["0", "1", "pool"], T))
    total = ms(fpn_S, fpn_T, boxes, shapes)
    per_level = sum(m(s, t, boxes, shapes) for m, s, t in zip(ms.levels, S, T))
    assert_exact("pyramid", total, per_level, float64_run(ms, S, T, boxes, shapes),
                 elements(S, T))


def test_state_dict_names():
    keys = set(FGDLoss(256, 256).state_dict())
    mlp = {f"channel_add_conv_{w}.{i}.{p}" for w in "st" for i in (0, 1, 3) for p in ("weight", "bias")}
    masks = {f"conv_mask_{w}.{p}" for w in "st" for p in ("weight", "bias")}
    assert keys == mlp | masks
    assert set(FGDLoss(128, 256).state_dict()) == mlp | masks | {"align.weight", "align.bias"}
    ms = MultiLevelFGDLoss(2, 256, 256)
    assert set(ms.state_dict()) == {f"levels.{k}.{n}" for k in range(2) for n in keys}
    mixed = MultiLevelFGDLoss(2, [128, 256], 256).state_dict()   # a width per level: same names
    assert set(mixed) == set(ms.state_dict()) | {"levels.0.align.weight", "levels.0.align.bias"}
    assert mixed["levels.0.align.weight"].shape == (256, 128, 1, 1)


def test_initialisation():
    m = FGDLoss(64, 256)
    for conv in (m.conv_mask_s, m.conv_mask_t):
        assert conv.weight.shape == (1, 256, 1, 1) and not conv.bias.any()
        assert 0.5 < float(conv.weight.detach().std()) / (2 / 256) ** 0.5 < 1.5  # kaiming fan_in
    for mlp in (m.channel_add_conv_s, m.channel_add_conv_t):
        assert [type(x).__name__ for x in mlp] == ["Conv2d", "LayerNorm", "ReLU", "Conv2d"]
        assert mlp[0].weight.shape == (128, 256, 1, 1) and mlp[1].normalized_shape == (128, 1, 1)
        assert not mlp[3].weight.any() and not mlp[3].bias.any()
    assert m.align.weight.shape == (256, 64, 1, 1)


@pytest.mark.parametrize("name,temp,alpha,beta,gamma,lam,levels", [
    ("two_stage", 0.5, 5e-5, 2.5e-5, 5e-5, 5e-7, 4),
    ("faster_rcnn", 0.5, 5e-5, 2.5e-5, 5e-5, 5e-7, 4),
    ("retinanet", 0.5, 1e-3, 5e-4, 5e-4, 5e-6, 5),
    ("reppoints", 0.5, 1.6e-3, 8e-4, 8e-4, 8e-6, 5),
    ("anchor_free", 0.5, 1.6e-3, 8e-4, 8e-4, 8e-6, 5),
    ("fcos", 0.8, 1.6e-3, 8e-4, 8e-4, 8e-6, 5),
])
def test_presets(name, temp, alpha, beta, gamma, lam, levels):
    m = FGDLoss.for_detector(name, 256, 256)
    assert (m.temp, m.alpha_fgd, m.beta_fgd, m.gamma_fgd, m.lambda_fgd) == (temp, alpha, beta, gamma, lam)
    assert MultiLevelFGDLoss.for_detector(name, 256, 256).num_levels == levels
    assert FGDLoss.for_detector(name, 256, 256, temp=0.3).temp == 0.3


def test_class_defaults():
    m = FGDLoss(256, 256)
    assert (m.temp, m.alpha_fgd, m.beta_fgd, m.gamma_fgd, m.lambda_fgd) == (0.5, 1e-3, 5e-4, 1e-3, 5e-6)


# ------------------------------------------------------------------ backends
@pytest.fixture
def one_level():
    ms, S, T, boxes, shapes = build(2, 4, 4, [(4, 6)])
    return ms.levels[0], S[0], T[0], boxes, shapes


def test_triton_on_cpu_needs_the_interpreter(monkeypatch, one_level):
    m, S, T, boxes, shapes = one_level
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not dispatch.HAS_TRITON:
        pytest.skip("triton not installed")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        fgd_pyramid_terms([m], [S], [T], boxes, shapes, "triton")


def test_float64_runs_on_reference_under_auto(one_level):
    m, S, T, boxes, shapes = one_level
    m = m.double()
    m.backend = "auto"
    assert m(S.double(), T.double(), boxes, shapes).dtype == torch.float64
