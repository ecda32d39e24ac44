"""The one place that loads the compiled extension ``fgdkern._C``.

``HAS_EXT`` tells whether its ops (``torch.ops.fgdkern.*``) are registered.
Without it the package works on its pure-PyTorch paths and says so once;
with ``FGDKERN_REQUIRE_EXT=1`` in the environment (CI, a deployment that
counts on the kernels) a missing extension is an ImportError instead, with
the original load error in its message.
"""
import os
import warnings

import torch  # noqa: F401  (loads libtorch before the extension)

REQUIRE_EXT = os.environ.get("FGDKERN_REQUIRE_EXT") == "1"

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
