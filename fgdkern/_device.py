"""Small host values on a GPU without a host sync, constant tables made once, and launches
on the tensors' GPU.

Level tables, temperatures, box counts and image sizes are built on the host
and copied to the GPU from pinned memory without blocking the host
(docs/gpu.md, "Launches on a GPU"). Under CUDA-graph capture such a copy
is recorded in the graph, which replays it from the same pinned buffer: those
buffers are kept for the life of the process (CAPTURED) so that no later
allocation can reuse them. Imports only torch, so every layer may use it.
"""
from __future__ import annotations

import collections
import contextlib

import torch
from torch import Tensor

# Values copied outside capture: the last TABLE_CACHE are kept and reused when the same
# values come again (a launch with the same level table makes no copy at all).
TABLE_CACHE = 64
_VALUES: "collections.OrderedDict[tuple, Tensor]" = collections.OrderedDict()
CAPTURED: list = []


def capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def on_device(device: torch.device):
    """Launches go to the tensors' GPU whatever the current device (Triton and raw CUDA
    launches use the current one); a no-op on CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def host_to(t: Tensor, device: torch.device) -> Tensor:
    """t on device; a host tensor goes to a GPU from pinned memory, without blocking the host."""
    if t.device == device:
        return t
    if t.device.type != "cpu" or device.type != "cuda" or torch.compiler.is_compiling():
        return t.to(device)
    host = t.pin_memory()
    out = host.to(device, non_blocking=True)
    if capturing():
        CAPTURED.append((host, out))
    return out


def device_values(rows, dtype: torch.dtype, device: torch.device) -> Tensor:
    """rows (a list, or a list of equal-length lists, of numbers) as a tensor on device (a
    constant of the graph under torch.compile)."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        return torch.tensor(rows, dtype=dtype, device=device)
    if capturing():  # a device copy made in capture holds nothing until the graph runs
        return host_to(torch.tensor(rows, dtype=dtype), device)
    key = (device.index, dtype, repr(rows))
    out = _VALUES.get(key)
    if out is None:
        out = _VALUES[key] = host_to(torch.tensor(rows, dtype=dtype), device)
        if len(_VALUES) > TABLE_CACHE:
            _VALUES.popitem(last=False)
    _VALUES.move_to_end(key)
    return out


_ROWS: "collections.OrderedDict[tuple, Tensor]" = collections.OrderedDict()


def _rows(lead: tuple, values: tuple, width: int, device: torch.device) -> Tensor:
    rows = torch.tensor(values, dtype=torch.float32, device=device)[:, None]
    return rows.expand(*lead, len(values), width).contiguous()


def constant_rows(lead: tuple, values: tuple, width: int, device: torch.device) -> Tensor:
    """A float32 (*lead, len(values), width) tensor whose row r holds values[r]: made once
    per shape and device and reused, read-only (a fill per call would be a launch per
    call). Made afresh under capture or compilation, where a kept tensor would be wrong."""
    if capturing() or torch.compiler.is_compiling():
        return _rows(lead, values, width, device)
    key = (device.type, device.index, lead, values, width)
    out = _ROWS.get(key)
    if out is None:
        out = _ROWS[key] = _rows(lead, values, width, device)
        if len(_ROWS) > TABLE_CACHE:
            _ROWS.popitem(last=False)
    _ROWS.move_to_end(key)
    return out
