"""The gradient buffers the C++ passes recycle (docs/cpu.md, "Recycled gradient buffers").

The CPU gradient passes write dS / dX into buffers they keep and reuse once
the caller has released them. ``kept_bytes()`` says how much memory they hold
(free or still in use by the caller); ``release()`` lets go of the free ones,
e.g. before evaluation on a memory-tight machine. ``FGDKERN_RECYCLE=0`` in the
environment switches recycling off (read at every call).
"""
import torch

from fgdkern._ext import HAS_EXT


def kept_bytes() -> int:
    """Bytes of the gradient buffers the C++ passes keep; 0 without the extension."""
    return int(torch.ops.fgdkern.recycle_kept_bytes_cpp()) if HAS_EXT else 0


def release() -> None:
    """Release every kept buffer that nothing else refers to."""
    if HAS_EXT:
        torch.ops.fgdkern.recycle_release_cpp()
