"""The shared harness of the fused-loss tests: backends, devices, dtypes, layouts, checks.

A loss's test file describes how to build its module and inputs and how to run
it on a backend; the checks here do the rest (docs/adding-a-loss.md):

* ``assert_matches_reference``: loss, terms and every gradient of a fused
  backend against ``backend="reference"``, with per-dtype tolerances;
* ``assert_deterministic``, ``assert_grad_output_honoured``;
* ``assert_compiles_fullgraph``: eager and ``torch.compile(fullgraph=True)`` agree.
Kernel-level tests use ``LAYOUTS`` / ``with_layout`` and ``assert_close_list``.
"""
from __future__ import annotations

import os

import pytest
import torch

from fgdkern.ops import dispatch

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# The fused backends; "torch" is the PyTorch form of the same passes.
FUSED_BACKENDS = [
    pytest.param("cpp", marks=pytest.mark.skipif(
        not dispatch.available("fgd", "cpp"), reason="C++ kernels not built")),
    pytest.param("triton", marks=pytest.mark.skipif(
        not (dispatch.HAS_TRITON and (HAS_CUDA or INTERPRETED)),
        reason="needs triton on CUDA or TRITON_INTERPRET=1")),
]
ALL_FUSED = [pytest.param("torch")] + FUSED_BACKENDS
LOW_PRECISION = [torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]

# Loss / gradient tolerances per input dtype (relative; absolute floor for tiny values).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-7),
       torch.float16: dict(rtol=1e-5, atol=1e-7),
       torch.bfloat16: dict(rtol=1e-5, atol=1e-7)}
GRAD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-9),
            torch.float16: dict(rtol=2e-3, atol=1e-7),    # dS is rounded to float16
            torch.bfloat16: dict(rtol=1.6e-2, atol=1e-7)}  # ... or to bfloat16
# Kernel outputs (float32 statistics) against the PyTorch contract of the passes.
PASS_TOL = dict(rtol=2e-5, atol=1e-6)
PASS_TOLS = {torch.float32: PASS_TOL, torch.float16: PASS_TOL, torch.bfloat16: PASS_TOL}


def backend_device(backend: str) -> str:
    return "cuda" if backend == "triton" and HAS_CUDA else "cpu"


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` in another memory layout: dense, channels_last or a strided view."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other channel of a map twice as deep
        return torch.cat([x, x], 1)[:, ::2]
    return x


def assert_close_list(got, want, **tol):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert a.dtype == b.dtype, (i, a.dtype, b.dtype)
        torch.testing.assert_close(a.cpu(), b.cpu(), msg=lambda m: f"output {i}: {m}",
                                   **(tol or PASS_TOL))


def _assert_grad_close(name, a, b, dtype, is_input, truth):
    """One gradient: 1e-5 relative per element, or, where float32 itself cannot resolve
    that (sums that cancel), no further from the float64 truth than twice the float32
    reference's own error."""
    if b is None:
        assert a is None or not a.any(), name
        return
    assert a is not None, name
    assert a.dtype == b.dtype, name
    tol = GRAD_TOL[dtype] if is_input else GRAD_TOL[torch.float32]
    scale = b.abs().max().clamp(min=1e-30)  # e.g. conv_mask bias: exactly 0 vs rounding noise
    atol = max(tol["atol"], 1e-6 * float(scale))
    if torch.allclose(a, b, rtol=tol["rtol"], atol=atol) or dtype != torch.float32:
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=atol,
                                   msg=lambda m: f"gradient of {name}: {m}")
        return
    exact = truth()[name]
    err_ref = (b.double() - exact).abs().max()
    err_got = (a.double() - exact).abs().max()
    assert err_got <= 2 * err_ref, (f"gradient of {name}: error {err_got:.3g} vs float64, "
                                    f"the float32 reference's own is {err_ref:.3g}")


def assert_matches_reference(run, backend: str, dtype=torch.float32):
    """``run(backend, float64: bool) -> (terms, loss, grads)``: terms a list of 1-d tensors
    (per level), loss a scalar, grads a dict name -> gradient (inputs named ``S[...]``)."""
    want_terms, want, want_g = run("reference", False)
    got_terms, got, got_g = run(backend, False)
    assert got.dtype == torch.float32
    for a, b in zip(got_terms, want_terms, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    torch.testing.assert_close(got, want, **TOL[dtype])
    cache = {}

    def truth():
        if "g" not in cache:
            cache["g"] = {k: v for k, v in run("reference", True)[2].items()}
        return cache["g"]

    for name in want_g:
        _assert_grad_close(name, got_g[name], want_g[name], dtype, name.startswith("S["), truth)


def assert_deterministic(run, backend: str):
    _, l1, g1 = run(backend, False)
    _, l2, g2 = run(backend, False)
    assert torch.equal(l1, l2)
    for name in g1:
        a, b = g1[name], g2[name]
        assert (a is None and b is None) or torch.equal(a, b), name


def assert_compiles_fullgraph(module, args, grad_inputs):
    """``module(*args)`` compiled with fullgraph=True gives the eager loss and input gradients."""
    want = module(*args)
    want_g = torch.autograd.grad(want, grad_inputs)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = compiled(*args)
    got_g = torch.autograd.grad(got, grad_inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
