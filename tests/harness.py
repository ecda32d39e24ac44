"""The shared harness of the fused-loss tests: backends, devices, dtypes, layouts, checks.

A loss's test file describes how to build its module and inputs and how to run
it on a backend; the checks here do the rest (docs/adding-a-loss.md):

* ``assert_matches_reference``: loss, terms and every gradient of a fused
  backend against ``backend="reference"``, by one rule (``assert_exact``: as
  exact as the float32 reference against float64, up to ``noise_floor``);
* ``assert_deterministic``, ``assert_grad_output_honoured``;
* ``assert_compiles_fullgraph``: eager and ``torch.compile(fullgraph=True)`` agree.
Kernel-level tests use ``LAYOUTS`` / ``with_layout`` and ``assert_matches_contract``.
No test compares two float32 (or float16/bfloat16) computations with tolerances of its
own: rounding depends on the order of sums, the thread count and the CPU's ISA variant,
so every such comparison goes through ``assert_exact`` against a float64 truth.
"""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from fgdkern.ops import dispatch

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def fused_backends(op: str) -> list:
    """The fused backends of ``op`` (a row of fgdkern.ops.dispatch.BACKENDS), skipped where
    they cannot run; "torch" is the PyTorch form of the same passes."""
    return [
        pytest.param("cpp", marks=pytest.mark.skipif(
            not dispatch.available(op, "cpp"), reason=f"C++ {op} kernels not built")),
        pytest.param("triton", marks=pytest.mark.skipif(
            not (dispatch.HAS_TRITON and (HAS_CUDA or INTERPRETED)),
            reason="needs triton on CUDA or TRITON_INTERPRET=1")),
    ]


def all_fused(op: str) -> list:
    return [pytest.param("torch")] + fused_backends(op)


FUSED_BACKENDS = fused_backends("fgd")
ALL_FUSED = all_fused("fgd")
LOW_PRECISION = [torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def backend_device(backend: str) -> str:
    return "cuda" if backend == "triton" and HAS_CUDA else "cpu"


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` in another memory layout: dense, channels_last or a strided view."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other channel of a map twice as deep
        return torch.cat([x, x], 1)[:, ::2]
    return x


def to_float64(x):
    """``x`` with every floating tensor in it (in lists and tuples too) as float64."""
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(to_float64(v) for v in x)
    return x


EPS32 = torch.finfo(torch.float32).eps
# How many random-walk standard deviations of float32 rounding the floor allows.
FLOOR_C = 4.0


def noise_floor(scale: float, sum_length: int, dtype=torch.float32) -> float:
    """The float32 noise floor of a quantity of magnitude ``scale`` (docs/kernels.md,
    "How exactness is tested").

    Every value a fused backend computes (a term, the loss, a gradient element)
    is built from float32 sums of at most ``sum_length`` products, the number of
    feature elements the loss reads: a term sums over N*C*H*W elements, a
    parameter gradient over N*H*W pixels and C channels, dS over the pixels or
    channels its statistics came from. Each addition rounds by at most
    eps/2 = 2**-24 of the running sum; two correct implementations that add in
    different orders (blocks, threads, online-softmax merges) make independent
    rounding errors, and summed over n additions those behave like a random walk
    of size eps * sqrt(n) * |value| (the worst case, linear in n, is neither
    reached nor useful to test against). So

        floor = FLOOR_C * eps_fp32 * sqrt(sum_length) * scale

    with ``scale`` the magnitude of the quantity (``assert_matches_reference``
    says which). FLOOR_C = 4 is four standard deviations of that walk; over
    seeds and loss weights (gamma=5e-6, lambda=1e-3 among them), every backend
    and case of tests/losses/test_fgd.py, the worst correct run needed 0.4 of
    them on top of twice the reference's error. An output stored in
    float16/bfloat16 (dS of such features) is also rounded once to that type:
    up to eps_dtype/2 * scale more, allowed as eps_dtype * scale.
    """
    floor = FLOOR_C * EPS32 * math.sqrt(max(sum_length, 1)) * scale
    if dtype in LOW_PRECISION:
        floor += torch.finfo(dtype).eps * scale
    return floor


def conditioned_sum_length(S, T, temps) -> int:
    """noise_floor's sum length for FGD on the maps S, T, widened by the conditioning of
    its attention softmaxes.

    softmax(x / temp) of a float32 statistic x (gs, gc: means of |F|) shifts by the
    rounding of x: half an ulp of x is eps/2 * |x| / temp in the logit, so every
    attention weight, and every output, carries a relative error up to kappa * eps,
    kappa = max|F| / temp. The float32 reference rounds the same statistics and is as
    far off, unless a short sum rounds luckily: for features of mean 1e3 (kappa ~ 4e3) a
    correct fused path was 3x off where the reference was within its floor, and which
    of the two is luckier depends on the machine (PyTorch's CPU kernels of another ISA
    turned it around). So the floor gains eps * kappa * scale, counted as that many
    more roundings: FLOOR_C * eps * sqrt(n') = FLOOR_C * eps * sqrt(n) + eps * kappa.
    """
    kappa = max(float(x.abs().max()) / temp for xs in (S, T) for x, temp in zip(xs, temps))
    n = sum(s.numel() for s in S)
    widen = 1 + kappa / (FLOOR_C * math.sqrt(n))
    return math.ceil(n * widen ** 2)


def assert_exact(name: str, got, want, truth, sum_length: int, dtype=torch.float32,
                 scale: float | None = None):
    """``got`` (a fused backend) is as exact as ``want`` (the float32 reference):

        max|got - x| <= 2 * max|want - x| + noise_floor(max|want|, sum_length, dtype)

    with x the float64 evaluation ``truth()`` of the same reference on the same inputs,
    and ``scale`` max|want| unless given.
    When ``got`` is within the floor of ``want`` the rule holds without x (|got - x|
    <= |got - want| + |want - x|), so the float64 run is made only when needed.
    ``want`` None (no gradient) allows ``got`` None or all zeros.
    """
    if want is None:
        assert got is None or not got.any(), f"{name}: expected no gradient, got non-zero values"
        return
    assert got is not None, f"{name}: no value"
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    a, b = got.detach().double().cpu(), want.detach().double().cpu()
    if scale is None:
        scale = float(b.abs().max()) if b.numel() else 0.0
    floor = noise_floor(scale, sum_length, dtype)
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    if diff <= floor:  # also NaN-safe: NaN fails this and the comparison below
        return
    x = truth().detach().double().cpu()
    err_ref = float((b - x).abs().max())
    err_got = float((a - x).abs().max())
    assert err_got <= 2 * err_ref + floor, (
        f"{name}: error {err_got:.3g} vs float64, the float32 reference's own is {err_ref:.3g}, "
        f"floor {floor:.3g} (scale {scale:.3g}, sums of up to {sum_length})")


def assert_exact_list(got, want, truth, sum_length: int, scale: float | None = None):
    """``assert_exact`` output by output: ``got`` and ``want`` lists of tensors, ``truth()``
    the float64 list. The rows of a table (N, rows, X) are held each to its own scale
    (rows of one table hold quantities of different sizes) unless ``scale`` gives one for
    all (parameter gradients: see assert_matches_reference); an output stored in
    float16/bfloat16 (dS, dX) is allowed its one rounding to that type."""
    assert len(got) == len(want), (len(got), len(want))
    cache = {}

    def truth_of(i):
        if "x" not in cache:
            cache["x"] = [t.detach().cpu() for t in truth()]
        return cache["x"][i]

    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert a.dtype == b.dtype, (i, a.dtype, b.dtype)
        dtype = a.dtype if a.dtype in LOW_PRECISION else torch.float32
        rows = [(f"output {i}", ...)] if b.dim() != 3 or scale is not None else [
            (f"output {i} row {r}", (slice(None), r)) for r in range(b.shape[1])]
        for name, at in rows:
            assert_exact(name, a.detach().cpu()[at], b.detach().cpu()[at],
                         lambda i=i, at=at: truth_of(i)[at], sum_length, dtype, scale)


def assert_matches_contract(got, contract, *args, sum_length: int | None = None):
    """The outputs ``got`` of a kernel against ``contract(*args)``, the PyTorch form of its
    contract in float32, by ``assert_exact_list`` with ``contract`` on the same inputs in
    float64 as the truth (docs/kernels.md, "How exactness is tested"). ``sum_length``
    defaults to the elements of the largest map in ``args[0]``: no output sums over more
    (the kernels add per level). Returns the float32 contract's outputs."""
    if sum_length is None:
        sum_length = max(x.numel() for x in args[0])
    want = contract(*args)
    assert_exact_list(got, want, lambda: contract(*to_float64(args)), sum_length)
    return want


def assert_matches_a_reading(got, contract, readings, *rest):
    """``assert_matches_contract`` with the leading arguments of one of ``readings`` (the
    maps as read with and without subnormals flushed, where that is the hardware's
    choice); when none matches, the error of each."""
    errors = []
    for reading in readings:
        try:
            return assert_matches_contract(got, contract, *reading, *rest)
        except AssertionError as e:
            errors.append(str(e))
    raise AssertionError("\n".join(errors))


def float64_copy(module):
    """A copy of ``module`` in float64, every backend it has set to "reference": the truth
    of a check between two float32 evaluations of the same loss."""
    m = copy.deepcopy(module).double()
    for sub in m.modules():
        if hasattr(sub, "backend"):
            sub.backend = "reference"
    return m


def float64_run(module, *args):
    """A thunk: ``float64_copy(module)`` on ``args`` in float64, without gradients (a
    pyramid and the sum of its levels, fused and reference, ...)."""
    def run():
        with torch.no_grad():
            return float64_copy(module)(*to_float64(args))
    return run


def elements(*maps) -> int:
    """The feature elements in ``maps`` (tensors, or lists and dicts of them): the sum
    length of a loss that reads them (noise_floor)."""
    def count(x):
        if isinstance(x, torch.Tensor):
            return x.numel()
        values = x.values() if isinstance(x, dict) else x
        return sum(count(v) for v in values)
    return sum(count(m) for m in maps)


def assert_matches_reference(run, backend: str, dtype=torch.float32, sum_length=None):
    """``run(backend, float64: bool) -> (terms, loss, grads)``: terms a list of 1-d tensors
    (per level), loss a scalar, grads a dict name -> gradient (inputs named ``S[...]``).

    Every term, the loss and every gradient must satisfy ``assert_exact``. Scales: each
    term and the loss its own value, each input gradient its own largest element, and
    the parameter gradients the largest of them all: they are products of the same
    upstream gradients with features and parameters of order one, so rounding noise in
    one of them is relative to all, also where one cancels to nearly or exactly zero
    (conv_mask weights on a one-pixel map: zero in exact arithmetic, not in float32).
    ``sum_length`` defaults to the number of elements of the inputs ``S[...]``. Every
    gradient the reference gives is checked (a fused run may give more).
    """
    want_terms, want, want_g = run("reference", False)
    got_terms, got, got_g = run(backend, False)
    assert got.dtype == torch.float32
    if sum_length is None:  # the reference may leave input gradients out (an align layer)
        sum_length = max(sum(g.numel() for k, g in grads.items() if k.startswith("S["))
                         for grads in (want_g, got_g))
        assert sum_length, "no input gradient S[...] to count the elements read: pass sum_length"
    cache = {}

    def truth():
        if "x" not in cache:
            cache["x"] = run("reference", True)
        return cache["x"]

    assert len(got_terms) == len(want_terms)
    for k, (a, b) in enumerate(zip(got_terms, want_terms)):
        assert a.shape == b.shape, (k, a.shape, b.shape)
        for j in range(b.shape[0]):
            assert_exact(f"term {j} of level {k}", a[j], b[j], lambda k=k, j=j: truth()[0][k][j],
                         sum_length)
    assert_exact("loss", got, want, lambda: truth()[1], sum_length)
    assert set(want_g) <= set(got_g), sorted(set(want_g) - set(got_g))
    params = [float(g.detach().abs().max()) for k, g in want_g.items()
              if g is not None and g.numel() and not k.startswith("S[")]
    param_scale = max(params, default=0.0)
    for name in want_g:
        is_input = name.startswith("S[")
        assert_exact(f"gradient of {name}", got_g[name], want_g[name],
                     lambda name=name: truth()[2][name], sum_length,
                     dtype if is_input else torch.float32, None if is_input else param_scale)


def assert_deterministic(run, backend: str):
    _, l1, g1 = run(backend, False)
    _, l2, g2 = run(backend, False)
    assert torch.equal(l1, l2)
    for name in g1:
        a, b = g1[name], g2[name]
        assert (a is None and b is None) or torch.equal(a, b), name


def assert_compiles_fullgraph(module, args, grad_inputs):
    """``module(*args)`` compiled with fullgraph=True gives the eager loss and input gradients.

    Dynamo starts afresh: a parametrized test compiles the same module class for many
    backends and shapes, which would otherwise hit its recompile limit."""
    torch._dynamo.reset()
    want = module(*args)
    want_g = torch.autograd.grad(want, grad_inputs)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = compiled(*args)
    got_g = torch.autograd.grad(got, grad_inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
