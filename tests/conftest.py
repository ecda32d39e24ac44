"""Shared test set-up.

Without a GPU the Triton kernels run under the interpreter; it must be switched
on before any kernel module is imported, so it happens here, first.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _fused_backends():
    from fgdkern.losses.fgd import fused_backend_available

    interp_ok = HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1"
    return [
        pytest.param("cpp", marks=pytest.mark.skipif(
            not fused_backend_available("cpp"), reason="C++ kernels not built")),
        pytest.param("triton", marks=pytest.mark.skipif(
            not (fused_backend_available("triton") and interp_ok),
            reason="needs triton on CUDA or TRITON_INTERPRET=1")),
    ]


# The fused backends; "torch" is the PyTorch form of the same two passes.
FUSED_BACKENDS = _fused_backends()


def backend_device(backend: str) -> str:
    return "cuda" if backend == "triton" and HAS_CUDA else "cpu"
