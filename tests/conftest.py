"""Shared test set-up (helpers live in tests/harness.py and tests/helpers.py).

Without a GPU the Triton kernels run under the interpreter; it must be switched
on before any kernel module is imported, so it happens here, first.

Tests of the C++ kernels skip without the extension, and those of the Triton
kernels without triton. CI sets FGDKERN_REQUIRE_EXT=1 and FGDKERN_REQUIRE_TRITON=1
(.ci/run) so that a failed build or a missing package stops the session at its
start instead of skipping those tests silently.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _required_parts_missing() -> str | None:
    """Why a part that the environment requires cannot be loaded (None when all load)."""
    if os.environ.get("FGDKERN_REQUIRE_EXT") == "1":
        try:
            import fgdkern._ext  # noqa: F401  (raises under FGDKERN_REQUIRE_EXT=1)
        except ImportError as exc:
            return str(exc)
    if os.environ.get("FGDKERN_REQUIRE_TRITON") == "1":
        from fgdkern.ops import dispatch
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return (f"FGDKERN_REQUIRE_TRITON=1 but triton cannot be imported ({exc!r}); "
                    "install it (pip install 'fgdkern[triton]') or unset the variable")
        if not dispatch.HAS_TRITON:
            return (f"FGDKERN_REQUIRE_TRITON=1 but triton {triton.__version__} is older than "
                    f"{dispatch.MIN_TRITON}, the oldest the kernels are checked with")
    return None


def pytest_sessionstart(session):
    reason = _required_parts_missing()
    if reason is not None:
        pytest.exit(reason, returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_report_header(config):
    """Where the numbers come from: the CPU kernels' variant and torch's threads."""
    import fgdkern

    return (f"fgdkern: C++ extension {'loaded' if fgdkern.HAS_EXT else 'missing'}, CPU variant "
            f"{fgdkern.cpu_isa()}, {torch.get_num_threads()} torch threads")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


try:  # PIL's own opener, taken before any test module imports ultralytics
    from PIL import Image as _PIL_IMAGE
    _PIL_OPEN = _PIL_IMAGE.open
except ImportError:
    _PIL_IMAGE = None


@pytest.fixture(autouse=True)
def _pil_open():
    """Importing ultralytics (tests/integrations, at collection) replaces PIL.Image.open for
    the whole process with one that meets a file PIL cannot identify by trying to install
    and load a HEIF plugin; the training script's tests of such files need PIL's own."""
    if _PIL_IMAGE is not None:
        _PIL_IMAGE.open = _PIL_OPEN
