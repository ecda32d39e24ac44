"""The one place that loads the compiled extension ``fgdkern._C``.

``HAS_EXT`` tells whether its ops (``torch.ops.fgdkern.*``) are registered.
Without it the package works on its pure-PyTorch paths and says so once;
with ``FGDKERN_REQUIRE_EXT=1`` in the environment (CI, a deployment that
counts on the kernels) a missing extension is an ImportError instead, with
the original load error in its message.

The C++ kernels come in ISA variants (docs/cpu.md, "CPU variants"): the
best one the CPU runs, or the one ``FGDKERN_CPU_ISA`` names, chosen here when
the extension loads; ``cpu_isa()`` says which runs.
"""
from __future__ import annotations

import os
import warnings

import torch  # noqa: F401  (loads libtorch before the extension)

REQUIRE_EXT = os.environ.get("FGDKERN_REQUIRE_EXT") == "1"
CPU_ISAS = ("avx512", "avx2", "baseline")

try:
    from fgdkern import _C  # noqa: F401  (registers torch.ops.fgdkern.*)

    HAS_EXT = True
    LOAD_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    HAS_EXT = False
    LOAD_ERROR = exc
    if REQUIRE_EXT:
        raise ImportError(
            f"fgdkern: the C++ extension fgdkern._C could not be loaded ({exc!r}) and "
            "FGDKERN_REQUIRE_EXT=1 requires it. Rebuild it with `pip install "
            "--no-build-isolation -e .` (or `make ext`), or unset FGDKERN_REQUIRE_EXT to "
            "run on the pure-PyTorch paths.") from exc
    warnings.warn(
        f"fgdkern: the C++ extension is not available ({exc}); using the pure-PyTorch "
        "paths (box rasterizer and FGD reference). Reinstall with `pip install "
        "--no-build-isolation <checkout or sdist>` to build it (README, Install).",
        RuntimeWarning,
        stacklevel=2,
    )


def check_cpu_isa(name: str, runnable: list[str]) -> str:
    """``name`` (the value of FGDKERN_CPU_ISA) if the CPU runs that variant, else a
    ValueError that says what it may be."""
    if name not in CPU_ISAS:
        raise ValueError(f"FGDKERN_CPU_ISA={name!r} is not a variant of fgdkern's CPU kernels: "
                         f"use one of {', '.join(CPU_ISAS)}, or unset it for the best one")
    if name not in runnable:
        raise ValueError(f"FGDKERN_CPU_ISA={name!r}: this CPU cannot run that variant of "
                         f"fgdkern's CPU kernels; it runs {', '.join(runnable)}")
    return name


def cpu_isa() -> str | None:
    """The ISA variant of the C++ CPU kernels that runs ("avx512", "avx2" or
    "baseline"), None without the extension."""
    return torch.ops.fgdkern.cpu_isa_cpp() if HAS_EXT else None


if HAS_EXT and os.environ.get("FGDKERN_CPU_ISA"):
    torch.ops.fgdkern.set_cpu_isa_cpp(
        check_cpu_isa(os.environ["FGDKERN_CPU_ISA"], torch.ops.fgdkern.cpu_isas_cpp()))
