"""What a call launches on a GPU, counted on the GPU code path under the Triton interpreter
(docs/gpu.md, "Launches on a GPU"): every Triton kernel launch, and every leaf
PyTorch op that does work (on a GPU each is a kernel or a copy), from the profiler's
events. Ops that only allocate, alias or describe a tensor are not counted; ops that wait
for the device (item(), a copy to the host) are counted apart, as host syncs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile, record_function

LAUNCH_RANGE = "fgdkern.tests.triton_launch"
# Leaf ops that launch nothing: allocation, views, metadata.
NO_WORK = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
    "aten::new_empty_strided", "aten::view", "aten::_unsafe_view", "aten::reshape",
    "aten::_reshape_alias", "aten::as_strided", "aten::t", "aten::transpose", "aten::permute",
    "aten::expand", "aten::expand_as", "aten::unsqueeze", "aten::squeeze", "aten::select",
    "aten::slice", "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::chunk",
    "aten::narrow", "aten::detach", "aten::detach_", "aten::alias", "aten::resolve_conj",
    "aten::resolve_neg", "aten::lift_fresh", "aten::set_", "aten::unflatten", "aten::flatten",
    "aten::view_as", "aten::contiguous", "aten::to", "aten::result_type", "aten::size",
    "aten::stride", "aten::numel", "aten::dim", "aten::is_pinned", "aten::pin_memory",
    "aten::_pin_memory", "aten::record_stream", "aten::_has_compatible_shallow_copy_type",
    "aten::is_nonzero", "aten::movedim", "aten::numpy_T", "aten::matrix_H", "aten::mT",
    "aten::promote_types", "aten::resize_", "aten::as_strided_",
}
SYNCS = {"aten::_local_scalar_dense", "aten::item"}
# Compiled ops whose GPU form cannot run here, and the kernels that form launches: the
# CUDA rasterizer's four passes (csrc/cuda/rasterize.cu; on a GPU,
# tests/ops/test_rasterize.py::test_cuda_op_launches_its_four_passes checks the count);
# a 1x1 convolution with a bias, whose CPU form calls other ops by the thread count
# (on a GPU: the convolution and the bias's add; the input's and the weight's gradients
# and the bias's sum; tests/triton/test_launches.py::test_cuda_convolution_launches checks).
COMPILED_OPS = {"fgdkern::rasterize_boxes": 4, "aten::convolution": 2,
                "aten::convolution_backward": 3}


@dataclass
class Launches:
    triton: list[str] = field(default_factory=list)  # kernel names, in launch order
    torch: list[str] = field(default_factory=list)   # leaf ops that do work
    syncs: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.triton) + len(self.torch)

    def __str__(self) -> str:
        return (f"{self.total} launches: {len(self.triton)} Triton {self.triton}, "
                f"{len(self.torch)} torch ops {sorted(self.torch)}; host syncs {self.syncs}")


@contextlib.contextmanager
def _counting_triton(names: list[str]):
    """Every launch of an interpreted Triton kernel appended to names, its own torch ops (the
    interpreter's copies of the arguments) inside LAUNCH_RANGE."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def counted(self, *args, grid, warmup, **kwargs):
        if not warmup:
            names.append(self.fn.__name__)
        with record_function(LAUNCH_RANGE):
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = counted
    try:
        yield
    finally:
        InterpretedFunction.run = run


def _inside_launch(event) -> bool:
    """Whether event runs inside a counted Triton launch or compiled op."""
    event = event.cpu_parent
    while event is not None:
        if event.name == LAUNCH_RANGE or event.name in COMPILED_OPS:
            return True
        event = event.cpu_parent
    return False


def _works(event) -> bool:
    """Whether an aten op, or one it calls, launches work (a CPU convolution, say, is one
    op whose children only allocate and describe its output)."""
    return event.name.startswith("aten::") and (
        event.name not in NO_WORK or any(_works(child) for child in event.cpu_children))


def count_launches(fn) -> Launches:
    """The launches of fn() (run it once before, so that one-time uploads are not counted)."""
    out = Launches()
    with _counting_triton(out.triton), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    for event in prof.events():
        if _inside_launch(event):
            continue
        if event.name in COMPILED_OPS:
            out.torch += [event.name] * COMPILED_OPS[event.name]
            continue
        if not event.name.startswith("aten::"):
            continue
        if any(_works(child) for child in event.cpu_children):
            continue  # its children are counted
        if event.name in SYNCS:
            out.syncs.append(event.name)
        elif event.name not in NO_WORK:
            out.torch.append(event.name)
    return out


def fwd_bwd(loss, S: list[torch.Tensor], *args):
    """A zero-argument fwd+bwd of loss(S, *args) w.r.t. the leaves S."""
    def step():
        value = loss(S, *args)
        return torch.autograd.grad(value, S)
    return step
