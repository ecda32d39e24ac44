"""The one place that loads the compiled extension ``fgdkern._C``.

``HAS_EXT`` tells whether its ops (``torch.ops.fgdkern.*``) are registered.
Without it the package works on its pure-PyTorch paths and says so once.
"""
import warnings

import torch  # noqa: F401  (loads libtorch before the extension)

try:
    from fgdkern import _C  # noqa: F401  (registers torch.ops.fgdkern.*)

    HAS_EXT = True
    LOAD_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    HAS_EXT = False
    LOAD_ERROR = exc
    warnings.warn(
        f"fgdkern: the C++ extension is not available ({exc}); using the pure-PyTorch "
        "paths (box rasterizer and FGD reference). Reinstall with `pip install "
        "--no-build-isolation <checkout or sdist>` to build it (README, Install).",
        RuntimeWarning,
        stacklevel=2,
    )

