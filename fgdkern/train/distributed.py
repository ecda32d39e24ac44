"""torch.distributed set-up for ``torchrun`` (gloo on CPU, nccl on GPU) and small helpers.

Under torchrun every process runs the whole script; ``-b`` is the batch per
process, the data is sharded by rank, gradients are averaged by
DistributedDataParallel, and only rank 0 writes files (docs/training-runs.md,
"Several processes").
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fgdkern.train.errors import UsageError


@dataclass(frozen=True)
class Context:
    """This process's place in the run."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    """--device: "cpu", "cuda", "cuda:1"...; None means CUDA when available, else CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device name at all
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda[:index], got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init(device_name: str | None) -> Context:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, local_rank, device)


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The mean over processes of a small float tensor (every rank gets it)."""
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world
    return values


def max_over_ranks(value: int, ctx: Context) -> int:
    """The largest of every process's ``value`` (every rank gets it)."""
    if not ctx.distributed:
        return value
    box = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def broadcast(obj, ctx: Context):
    """Rank 0's ``obj`` on every rank (a picklable python object)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
