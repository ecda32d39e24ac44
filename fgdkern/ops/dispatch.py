"""Which implementation of an op runs: the one place that decides (docs/kernels.md, "Backends").

Every loss and op takes ``backend=`` from one vocabulary:

* ``"auto"``: the fused implementation for the tensors' device when it is
  available and reads their dtype, else ``"reference"`` (table below);
* ``"fused"``: the fused implementation for the device, or an error saying why
  it cannot run;
* ``"cpp"``: the compiled kernels of ``fgdkern._C`` on CPU tensors;
* ``"triton"``: Triton kernels on CUDA tensors (on CPU tensors only under
  ``TRITON_INTERPRET=1``, the interpreter the tests use);
* ``"reference"``: pure PyTorch, the ground truth of the tests;
* ``"torch"`` (fused ops only): the fused passes' contract in PyTorch, run through
  the same autograd wrapper as the kernels; it tests the decomposition.

What ``"auto"`` and ``"fused"`` pick:

=========  ==========================  ================================
op         CPU tensors                 CUDA tensors
=========  ==========================  ================================
fgd        ``cpp`` (float16/32, bf16)  ``triton`` (float16/32, bf16)
imitation  ``cpp`` (float16/32, bf16)  ``triton`` (float16/32, bf16)
rasterize  ``cpp``                     ``cuda`` (the extension's kernel)
rm         ``reference``               ``reference`` (no fused pass)
cwd        ``cpp`` (float16/32, bf16)  ``triton`` (float16/32, bf16)
pkd        ``cpp`` (float16/32, bf16)  ``triton`` (float16/32, bf16)
=========  ==========================  ================================

float64 features (gradcheck) run on the reference under ``"auto"``; a fused
backend asked for by name rejects them. Availability is looked up once, at
import, so that ``torch.compile`` sees constants.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re

import torch

from fgdkern._ext import HAS_EXT

BACKENDS = {
    "fgd": ("auto", "reference", "fused", "triton", "cpp", "torch"),
    "rasterize": ("auto", "reference", "fused", "cpp"),
    "imitation": ("auto", "reference", "fused", "triton", "cpp", "torch"),
    "rm": ("auto", "reference"),
    "cwd": ("auto", "reference", "fused", "triton", "cpp", "torch"),
    "pkd": ("auto", "reference", "fused", "triton", "cpp", "torch"),
}
# The fused implementation of each op per device type.
FUSED = {
    "fgd": {"cpu": "cpp", "cuda": "triton"},
    "rasterize": {"cpu": "cpp", "cuda": "cuda"},
    "imitation": {"cpu": "cpp", "cuda": "triton"},
    "rm": {},
    "cwd": {"cpu": "cpp", "cuda": "triton"},
    "pkd": {"cpu": "cpp", "cuda": "triton"},
}
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _has_kernel(op_name: str, dispatch_key: str) -> bool:
    if not HAS_EXT:
        return False
    try:  # an extension built from older sources lacks the op altogether
        return torch._C._dispatch_has_kernel_for_dispatch_key(op_name, dispatch_key)
    except RuntimeError:
        return False


# The oldest Triton whose interpreter runs every kernel test and whose compiler builds every
# kernel (docs/gpu.md, "Triton versions"); an older one is not used.
MIN_TRITON = (3, 2)


def _triton_version() -> tuple[int, int] | None:
    """(major, minor) of the installed triton from its package metadata (importing triton
    loads its compiler), or None when there is none."""
    if importlib.util.find_spec("triton") is None:
        return None
    for dist in ("triton", "pytorch-triton"):
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    else:
        import triton
        version = triton.__version__
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", version).groups())


TRITON_VERSION = _triton_version()
HAS_TRITON = TRITON_VERSION is not None and TRITON_VERSION >= MIN_TRITON
# (op, implementation) -> built and importable here; constants for torch.compile.
AVAILABLE = {
    ("fgd", "cpp"): _has_kernel("fgdkern::fgd_stats_cpp", "CPU"),
    ("fgd", "triton"): HAS_TRITON,
    ("imitation", "cpp"): _has_kernel("fgdkern::imitation_stats_cpp", "CPU"),
    ("imitation", "triton"): HAS_TRITON,
    ("cwd", "cpp"): _has_kernel("fgdkern::cwd_stats_cpp", "CPU"),
    ("cwd", "triton"): HAS_TRITON,
    ("pkd", "cpp"): _has_kernel("fgdkern::pkd_stats_cpp", "CPU"),
    ("pkd", "triton"): HAS_TRITON,
    ("rasterize", "cpp"): _has_kernel("fgdkern::rasterize_boxes", "CPU"),
    ("rasterize", "cuda"): _has_kernel("fgdkern::rasterize_boxes", "CUDA"),
}


def available(op: str, impl: str) -> bool:
    """True when implementation ``impl`` of ``op`` can run here (reference/torch always can)."""
    return impl in ("reference", "torch") or AVAILABLE.get((op, impl), False)


def check_backend(op: str, backend: str) -> None:
    """A clear error for a name outside the vocabulary of ``op``."""
    if backend not in BACKENDS[op]:
        raise ValueError(f"backend must be one of {BACKENDS[op]}, got {backend!r}")


def _why_not(op: str, impl: str, device: torch.device) -> str | None:
    """Why ``impl`` of ``op`` cannot run on ``device`` (None when it can)."""
    if impl == "cpp":
        if not available(op, "cpp"):
            return (f"backend='cpp' needs the compiled extension fgdkern._C with its {op} "
                    "kernel, which is not available (see fgdkern._ext.LOAD_ERROR)")
        if device.type != "cpu":
            return f"backend='cpp' runs on CPU tensors; the {op} inputs are on {device}"
    elif impl == "triton":
        if TRITON_VERSION is None:
            return "backend='triton' needs the triton package (pip install 'fgdkern[triton]')"
        if not HAS_TRITON:
            return (f"backend='triton' needs triton >= {'.'.join(map(str, MIN_TRITON))}, the "
                    f"oldest its kernels are checked with; this one is "
                    f"{'.'.join(map(str, TRITON_VERSION))}")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return ("backend='triton' got CPU tensors: Triton kernels run on a GPU, "
                    "or on CPU only under TRITON_INTERPRET=1 (set before import)")
        if device.type not in ("cpu", "cuda"):
            return f"backend='triton' runs on CUDA tensors; the {op} inputs are on {device}"
    elif impl == "cuda" and not available(op, "cuda"):
        return (f"backend='fused' on CUDA tensors needs fgdkern._C built with its CUDA kernels "
                f"(FORCE_CUDA=1 or a visible GPU at build time); the {op} inputs are on {device}")
    return None


def resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The implementation of ``op`` that runs for ``backend`` on ``device`` and ``dtype``.

    Raises RuntimeError when a backend asked for by name cannot run here,
    ValueError for a device it does not serve, TypeError for a dtype it does not read.
    """
    check_backend(op, backend)
    if backend in ("reference", "torch"):
        return backend
    fused = FUSED[op].get(device.type)
    reads_dtype = dtype is None or dtype in FUSED_DTYPES
    if backend == "auto":
        ok = fused is not None and reads_dtype and _why_not(op, fused, device) is None
        return fused if ok else "reference"
    impl = (fused or "cpp") if backend == "fused" else backend
    reason = _why_not(op, impl, device)
    if reason is not None:
        error = ValueError if "runs on" in reason else RuntimeError
        raise error(reason)
    if not reads_dtype:
        raise TypeError(f"backend={backend!r} reads float16, bfloat16 or float32 features, "
                        f"got {dtype} (use backend='reference')")
    return impl
