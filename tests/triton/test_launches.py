"""Launches that behave on a GPU (fgdkern/triton/levels.py, docs/gpu.md "Launches on a GPU").

The level table and other small host values reach the GPU without blocking the
host and are reused when they repeat; LEVELS is one constexpr for pyramids of
up to MIN_LEVELS levels; launches go to the tensors' device. The CUDA cases
(no host sync in fwd+bwd, CUDA-graph capture, no recompilation for new sizes,
a second GPU) run where a GPU is; test_offline_compile checks without one
that no kernel specialises on its launch-time ints.
"""
import pytest
import torch

import fgdkern
from tests.helpers import make_inputs, random_boxes
from tests.triton.common import DEVICE, needs_kernels

pytestmark = needs_kernels


def test_device_values_on_cpu():
    from fgdkern.triton.levels import device_values

    t = device_values([[1, 2], [3, 4]], torch.int64, torch.device("cpu"))
    assert t.dtype == torch.int64 and t.tolist() == [[1, 2], [3, 4]]
    assert device_values([0.5, 0.25], torch.float32, torch.device("cpu")).tolist() == [0.5, 0.25]


@pytest.mark.parametrize("levels", [1, 2, 3, 5, 8])
def test_one_levels_constexpr_up_to_eight_levels(levels):
    from fgdkern.triton.levels import MIN_LEVELS, Launch

    S = make_inputs(1, 4, [(3, 2)] * levels, device=DEVICE)[0]
    assert Launch(S, S, [], None).levels == MIN_LEVELS == 8
    S = make_inputs(1, 4, [(2, 2)] * 9, device=DEVICE)[0]
    assert Launch(S, S, [], None).levels == 16


def test_main_launches_bound_registers_on_nvidia_gpus():
    """Main kernels run with maxnreg on CUDA (where Triton has the option), never elsewhere."""
    from fgdkern.triton import levels

    want = {"maxnreg": levels.MAX_REGISTERS} if levels._has_maxnreg() else {}
    assert levels._register_bound(torch.device("cuda")) == (
        want if torch.version.hip is None else {})
    assert levels._register_bound(torch.device("cpu")) == {}
    assert levels.MAX_REGISTERS == 255  # 65536 per SM over 2 programs of 4 warps, at most 255


# ------------------------------------------------------------------------------ CUDA
def _fgd_step(levels: int, hw: int, device="cuda", seed: int = 0):
    """A MultiLevelFGDLoss fwd+bwd call (backend triton) on device: a zero-argument call."""
    sizes = [(max(hw >> k, 1), max(hw >> k, 1)) for k in range(levels)]
    S, T = make_inputs(2, 16, sizes, device="cpu", seed=seed)[:2]
    S = [s.to(device).requires_grad_() for s in S]
    T = [t.to(device) for t in T]
    boxes = [b.to(device) for b in random_boxes(2, (8 * hw, 8 * hw), seed=seed)]
    torch.manual_seed(seed)
    loss = fgdkern.MultiLevelFGDLoss(levels, 16, 16, backend="triton").to(device)

    def step():
        value = loss(S, T, boxes, (8 * hw, 8 * hw))
        return [value, *torch.autograd.grad(value, S)]
    return step


def _compiled_variants(kernel) -> int:
    """How many variants of a JITFunction are compiled (Triton 3.0 .cache, later .device_caches)."""
    if hasattr(kernel, "device_caches"):
        return sum(len(entry[0]) for entry in kernel.device_caches.values())
    return sum(len(cache) for cache in kernel.cache.values())


@pytest.mark.cuda
def test_level_table_is_reused_without_a_copy():
    from fgdkern.triton.levels import device_values

    device = torch.device("cuda")
    first = device_values([[1, 2, 3]], torch.int64, device)
    assert device_values([[1, 2, 3]], torch.int64, device) is first
    assert device_values([[1, 2, 4]], torch.int64, device) is not first
    assert first.cpu().tolist() == [[1, 2, 3]]


@pytest.mark.cuda
def test_forward_backward_never_syncs_the_host():
    step = _fgd_step(3, 16)
    step()  # compile and warm the caches first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_cuda_graph_capture_replays_forward_backward():
    step = _fgd_step(3, 16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            eager = [x.clone() for x in step()]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, eager):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
def test_new_level_counts_and_sizes_do_not_recompile():
    import importlib

    kernels = [importlib.import_module(f"fgdkern.triton.{m}").__dict__[k] for m, k in (
        ("fgd_stats", "fgd_stats_fwd_kernel"), ("fgd_stats", "fgd_stats_combine_kernel"),
        ("fgd_grad", "fgd_grad_bwd_kernel"), ("fgd_grad", "fgd_grad_combine_kernel"))]
    _fgd_step(3, 16)()
    before = [_compiled_variants(k) for k in kernels]
    for levels, hw in ((1, 16), (2, 33), (5, 64), (4, 7)):
        _fgd_step(levels, hw)()
    assert [_compiled_variants(k) for k in kernels] == before


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_launches_follow_the_tensors_device():
    want = [x.cpu() for x in _fgd_step(2, 8, "cuda:0")()]
    with torch.cuda.device(0):  # current device 0, tensors on device 1
        got = [x.cpu() for x in _fgd_step(2, 8, "cuda:1")()]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.cuda
def test_cuda_convolution_launches():
    """What tests/launches.py counts for a 1x1 convolution with a bias (COMPILED_OPS), whose
    CPU form differs: the CUDA kernels of its forward, and of its backward with every
    gradient (FKD's adaptation and align layers)."""
    from torch.profiler import ProfilerActivity, profile

    from tests.launches import COMPILED_OPS

    conv = torch.nn.Conv2d(64, 32, kernel_size=1).cuda()
    x = torch.randn(2, 64, 20, 24, device="cuda", requires_grad=True)
    counts = []
    for _ in range(2):  # the first call picks the algorithms
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            y = conv(x)
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof_bwd:
            torch.autograd.grad(y, [x, conv.weight, conv.bias], torch.ones_like(y))
            torch.cuda.synchronize()
        counts = [len([e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA
                       and "Memcpy" not in e.name and "Memset" not in e.name
                       and "fill" not in e.name]) for p in (prof, prof_bwd)]
    assert counts[0] <= COMPILED_OPS["aten::convolution"], counts
    assert counts[1] <= COMPILED_OPS["aten::convolution_backward"], counts
