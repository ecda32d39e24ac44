"""fgdkern.rasterize_boxes (docs/fgd.md, "Masks from boxes"): every backend against a literal per-cell reading
of the spec, bit for bit; the C++ op against the PyTorch form; op registration;
torch.compile; the CUDA op's launches (bad input: test_rasterize_inputs.py)."""
import math

import numpy as np
import pytest
import torch

import fgdkern.reference.masks as masks
from fgdkern.ops import dispatch
from fgdkern.ops import rasterize as ops
from fgdkern.ops.rasterize import rasterize_boxes
from tests.harness import DEVICES

F32 = np.float32
HAS_CPU_OP = dispatch.available("rasterize", "cpp")
needs_op = pytest.mark.skipif(not HAS_CPU_OP, reason="C++ extension not built")
BACKENDS = ["reference", pytest.param("cpp", marks=needs_op)]


def naive_extent(box, h, w, H, W):
    """Steps 1-3 of docs/fgd.md "Masks from boxes" in numpy float32: hmin, hmax, wmin, wmax, v."""
    x1, y1, x2, y2 = box
    wmin = math.floor(F32(x1) / F32(w) * F32(W))
    wmax = math.ceil(F32(x2) / F32(w) * F32(W))
    hmin = math.floor(F32(y1) / F32(h) * F32(H))
    hmax = math.ceil(F32(y2) / F32(h) * F32(H))
    return hmin, hmax, wmin, wmax, F32(1) / F32(hmax + 1 - hmin) / F32(wmax + 1 - wmin)


def naive_bg(fg):
    """Step 6: 1 / N_bg (float32) on each image's cells where fg == 0."""
    bg = np.zeros_like(fg)
    for n in range(fg.shape[0]):
        n_bg = int((fg[n] == 0).sum())
        if n_bg:
            bg[n][fg[n] == 0] = F32(1) / F32(n_bg)
    return bg


def naive_masks(gt_bboxes, img_shapes, level_sizes):
    """docs/fgd.md "Masks from boxes" read literally: a loop per level, image, box and cell, numpy float32 scalars."""
    out = []
    for H, W in level_sizes:
        fg = np.zeros((len(gt_bboxes), H, W), np.float32)
        for n, (boxes, (h, w)) in enumerate(zip(gt_bboxes, img_shapes)):
            for box in boxes.reshape(-1, 4).tolist():
                hmin, hmax, wmin, wmax, v = naive_extent(box, h, w, H, W)
                for i in range(max(hmin, 0), min(hmax, H - 1) + 1):
                    for j in range(max(wmin, 0), min(wmax, W - 1) + 1):
                        fg[n, i, j] = max(fg[n, i, j], v)
        out.append((torch.from_numpy(fg), torch.from_numpy(naive_bg(fg))))
    return out


def sliced_masks(gt_bboxes, img_shapes, level_sizes):
    """border="wrap" by definition: each box painted through the Python slice
    fg[hmin:hmax + 1, wmin:wmax + 1] of a torch tensor, on the unclipped extents."""
    out = []
    for H, W in level_sizes:
        fg = torch.zeros(len(gt_bboxes), H, W)
        for n, (boxes, (h, w)) in enumerate(zip(gt_bboxes, img_shapes)):
            for box in boxes.reshape(-1, 4).tolist():
                hmin, hmax, wmin, wmax, v = naive_extent(box, h, w, H, W)
                fg[n][hmin:hmax + 1, wmin:wmax + 1] = torch.maximum(
                    fg[n][hmin:hmax + 1, wmin:wmax + 1], torch.tensor(v))
        out.append((fg, torch.from_numpy(naive_bg(fg.numpy()))))
    return out


def random_case(N, seed, fractional=False):
    """Per-image sizes; boxes random, snapped to cell edges, degenerate, inverted, outside."""
    g = np.random.default_rng(seed)
    shapes = [(int(g.integers(20, 90)), int(g.integers(20, 90))) for _ in range(N)]
    if fractional:
        shapes = [(h + float(g.uniform()), w + float(g.uniform())) for h, w in shapes]
    gt = []
    for n, (h, w) in enumerate(shapes):
        k = 0 if n == 1 else int(g.integers(1, 9))  # image 1 has no box
        scale = np.array([w, h, w, h])
        xy = g.uniform(-0.3, 1.1, (k, 2))
        boxes = np.concatenate([xy, xy + g.uniform(-0.05, 0.7, (k, 2))], 1) * scale
        snap = g.random(k) < 0.4
        boxes[snap] = np.round(boxes[snap] / 8) * 8
        point = np.round(g.uniform(0, 1, 2) * [w, h])
        special = np.array([[*point, *point],                          # zero area
                            [0.3 * w, 0.3 * h, 0.29 * w, 0.29 * h],    # slightly inverted
                            [-w, -h, -1.0, -2.0],                      # wholly outside
                            [0.9 * w, -5.0, 2 * w, 0.2 * h]])          # partly outside
        gt.append(torch.tensor(np.concatenate([boxes, special[: n % 5]]), dtype=torch.float32))
    H = max(math.ceil(h) for h, _ in shapes)
    W = max(math.ceil(w) for _, w in shapes)
    sizes = [(math.ceil(H / s), math.ceil(W / s)) for s in (4, 8, 32)] + [(1, 1)]
    return gt, shapes, sizes


def assert_masks_equal(got, want):
    assert len(got) == len(want)
    for (fg, bg), (fg_w, bg_w) in zip(got, want):
        assert fg.dtype == bg.dtype == torch.float32
        assert torch.equal(fg.cpu(), fg_w) and torch.equal(bg.cpu(), bg_w)


def skip_without_kernel(backend, device):
    if backend == "cpp" and not dispatch.available("rasterize", "cpp" if device == "cpu" else device):
        pytest.skip(f"no compiled rasterize_boxes kernel for {device}")


# ------------------------------------------------------------------ hand cases of the rules
def _fg(H, W, *painted):
    fg = torch.zeros(H, W)
    for rows, cols, v in painted:
        fg[rows, cols] = float(v)
    return fg


THIRD = F32(1) / F32(3) / F32(3)
# (boxes, (h, w), (H, W), expected fg)
HAND_CASES = {
    "stride_cell_is_2x2": ([[8, 8, 16, 16]], (64, 64), (8, 8),
                           _fg(8, 8, (slice(1, 3), slice(1, 3), 0.25))),
    "zero_area_one_cell": ([[16, 16, 16, 16]], (64, 64), (8, 8), _fg(8, 8, (2, 2, 1.0))),
    "slightly_inverted": ([[17, 17, 16.5, 16.5]], (64, 64), (8, 8),
                          _fg(8, 8, (slice(2, 4), slice(2, 4), 0.25))),
    "inverted_empty": ([[40, 40, 8, 8]], (64, 64), (8, 8), _fg(8, 8)),
    "wholly_outside": ([[-50, -50, -10, -10], [70, 70, 100, 100]], (64, 64), (8, 8), _fg(8, 8)),
    "partly_outside_unclipped_area": ([[-10, -10, 0, 0]], (64, 64), (8, 8),
                                      _fg(8, 8, (0, 0, THIRD))),
    "touching_border": ([[56, 56, 64, 64]], (64, 64), (8, 8), _fg(8, 8, (7, 7, 0.25))),
    "overlap_smallest_wins": ([[8, 8, 16, 16], [0, 0, 64, 64]], (64, 64), (8, 8),
                              _fg(8, 8, (slice(None), slice(None), F32(1) / F32(81)),
                                  (slice(1, 3), slice(1, 3), 0.25))),
    "non_square": ([[8, 8, 16, 16]], (32, 64), (4, 8), _fg(4, 8, (slice(1, 3), slice(1, 3), 0.25))),
    "no_boxes": (torch.zeros(0, 4), (64, 48), (4, 3), _fg(4, 3)),
    "one_by_one": ([[8, 8, 16, 16]], (64, 64), (1, 1), _fg(1, 1, (0, 0, 0.25))),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", HAND_CASES)
def test_spec_cases(case, backend, device):
    skip_without_kernel(backend, device)
    boxes, img, size, fg_want = HAND_CASES[case]
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=device)
    [(fg, bg)] = rasterize_boxes([boxes], [img], [size], backend=backend)
    n_bg = int((fg_want == 0).sum())
    bg_want = torch.where(fg_want == 0, float(F32(1) / F32(max(n_bg, 1))), 0.0)
    assert fg.device.type == device
    assert torch.equal(fg[0].cpu(), fg_want) and torch.equal(bg[0].cpu(), bg_want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_cells_covered_gives_zero_bg(backend):
    [(fg, bg)] = rasterize_boxes([torch.tensor([[0.0, 0, 64, 64]])], [(64, 64)], [(4, 4)], backend)
    assert (fg > 0).all() and not bg.any()


# ------------------------------------------------------------------ random cases
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("border,painter", [("clip", naive_masks), ("wrap", sliced_masks)])
@pytest.mark.parametrize("N,seed,fractional", [(1, 0, False), (1, 1, True), (5, 2, False),
                                               (5, 3, True), (5, 4, False)])
def test_random_matches_naive(N, seed, fractional, border, painter, backend):
    gt, shapes, sizes = random_case(N, seed, fractional)
    got = rasterize_boxes(gt, shapes, sizes, backend, border)
    assert_masks_equal(got, painter(gt, shapes, sizes))


def test_reference_in_small_chunks(monkeypatch):
    """The dense comparison split into many chunks of boxes gives the same masks."""
    monkeypatch.setattr(masks, "CHUNK_CELLS", 50)
    gt, shapes, sizes = random_case(5, 5)
    got = rasterize_boxes(gt, shapes, sizes, "reference")
    assert_masks_equal(got, naive_masks(gt, shapes, sizes))


def packed_case(seed):
    """Op inputs with wide coordinate ranges, fractional sizes and random level sizes."""
    g = torch.Generator().manual_seed(seed)
    N = int(torch.randint(1, 7, (), generator=g))
    counts = torch.randint(0, 12, (N,), generator=g)
    shapes = torch.rand(N, 2, generator=g) * 300 + 1
    K = int(counts.sum())
    wh = shapes[torch.repeat_interleave(torch.arange(N), counts)][:, [1, 0, 1, 0]]
    boxes = (torch.rand(K, 4, generator=g) * 1.6 - 0.3) * wh
    snap = torch.rand(K, 1, generator=g) < 0.3
    boxes = torch.where(snap, boxes.round(), boxes)
    sizes = torch.randint(1, 40, (2 * int(torch.randint(1, 5, (), generator=g)),), generator=g)
    return boxes, counts, shapes, sizes.tolist()


@needs_op
@pytest.mark.parametrize("wrap", [False, True])
def test_op_equals_reference_bitwise(wrap):
    for seed in range(40):
        args = (*packed_case(seed), wrap)
        got, want = torch.ops.fgdkern.rasterize_boxes(*args), masks.rasterize_packed(*args)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), f"seed {seed}"


@needs_op
@pytest.mark.parametrize("wrap", [False, True])
def test_op_equals_reference_on_extreme_coordinates(wrap):
    """Huge, infinite and NaN coordinates (the wrapper rejects the last two) saturate alike."""
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor([[-1e30, 2.0, 3.0, 1e30], [1e20, 1e20, 3e38, 3e38], [nan, 0, 8, 8],
                          [-inf, 1, inf, 9], [0, 0, nan, 9], [3.0, 4.0, 5.0, 6.0]])
    args = (boxes, torch.tensor([3, 3]), torch.tensor([[10.0, 20.0], [16.0, 16.0]]), [5, 7, 1, 1],
            wrap)
    got, want = torch.ops.fgdkern.rasterize_boxes(*args), masks.rasterize_packed(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.cuda
@pytest.mark.parametrize("border", ["clip", "wrap"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_equals_cpu(backend, border):
    skip_without_kernel(backend, "cuda")
    for seed in range(10):
        gt, shapes, sizes = random_case(5, seed, fractional=seed % 2 == 1)
        want = rasterize_boxes(gt, shapes, sizes, backend, border)
        on_cuda = "fused" if backend == "cpp" else backend   # the compiled kernel of each device
        got = rasterize_boxes([b.cuda() for b in gt], shapes, sizes, on_cuda, border)
        assert_masks_equal(got, want)
    packed = torch.ops.fgdkern.rasterize_boxes if backend == "cpp" else masks.rasterize_packed
    for seed in range(20):
        args = (*packed_case(seed), border == "wrap")
        want = packed(*args)
        got = packed(*[a.cuda() if torch.is_tensor(a) else a for a in args])
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want)), f"seed {seed}"


# ------------------------------------------------------------------ border="wrap"
# Boxes as fractions of (w, h): across each border and two corners; the whole map (from
# one cell before it, exactly, beyond it); wholly outside on each side (above and left:
# ending on the map's first cell or before it); zero-size; inverted.
BORDER_BOXES = torch.tensor([
    [.2, -.1, .5, .3], [-.1, .2, .3, .5], [.2, .8, .5, 1.2], [.8, .2, 1.3, .5],
    [-.2, -.2, .4, .4], [.7, .7, 1.1, 1.1], [-.01, -.01, 1, 1], [0, 0, 1, 1],
    [-.5, -.5, 1.5, 1.5], [.2, -.5, .5, -.2], [-.5, .2, -.2, .5], [.2, -.6, .5, -.01],
    [-.6, -.6, -.01, -.01], [.2, 1.2, .5, 1.5], [1.2, .2, 1.5, .5], [1.01, 1.01, 2, 2],
    [.5, .5, .5, .5], [0, 0, 0, 0], [1, 1, 1, 1], [.5, .5, .3, .3], [.1, .1, -.2, -.2]])
WRAP_SIZES = [(1, 1), (2, 3), (5, 7), (8, 8), (13, 10)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("img", [(64, 64), (50.5, 37.0), (33, 80)])
@pytest.mark.parametrize("per_image", [True, False])
def test_wrap_border_boxes_match_slices(per_image, img, backend, device):
    skip_without_kernel(backend, device)
    boxes = BORDER_BOXES * torch.tensor([img[1], img[0], img[1], img[0]])
    gt = list(boxes[:, None]) if per_image else [boxes]  # one image per box, or one for all
    shapes = [img] * len(gt)
    on_device = "fused" if backend == "cpp" and device != "cpu" else backend
    got = rasterize_boxes([b.to(device) for b in gt], shapes, WRAP_SIZES, on_device, "wrap")
    assert_masks_equal(got, sliced_masks(gt, shapes, WRAP_SIZES))


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrap_whole_map_from_minus_one_paints_last_cell(backend):
    """Rows and columns -1..8 of an 8 x 8 map: the slice [-1:9] is row (column) 7 only."""
    box, v = [torch.tensor([[-1.0, -1.0, 64.0, 64.0]])], F32(1) / F32(10) / F32(10)
    [(fg, _)] = rasterize_boxes(box, [(64, 64)], [(8, 8)], backend, border="wrap")
    assert torch.equal(fg[0], _fg(8, 8, (7, 7, v)))


# ------------------------------------------------------------------ input forms
@pytest.mark.parametrize("backend", BACKENDS)
def test_input_forms(backend):
    """Integer and float64 boxes, a (0,) tensor for no box, and every form of img_shapes."""
    boxes = [torch.tensor([[4, 6, 30, 20]]), torch.zeros(0), torch.tensor([[1.5, 2.5, 9.0, 33.0]],
                                                                          dtype=torch.float64)]
    sizes = [(8, 6), (2, 3)]
    want = naive_masks([b.float() for b in boxes], [(40, 30), (32, 32), (40.5, 24)], sizes)
    forms = [[(40, 30), (32, 32), (40.5, 24)],
             torch.tensor([[40, 30], [32, 32], [40.5, 24]], dtype=torch.float64),
             [torch.tensor([40, 30]), (torch.tensor(32), 32.0), (torch.tensor(40.5), 24)],
             ((np.int64(40), np.float32(30)), torch.Size([32, 32]), (40.5, 24))]
    for shapes in forms:
        assert_masks_equal(rasterize_boxes(boxes, shapes, sizes, backend), want)


def test_auto_uses_the_op_when_built(monkeypatch):
    calls = []

    def reference(*args):
        calls.append(args)
        return masks.rasterize_packed(*args)

    monkeypatch.setattr(ops, "rasterize_packed", reference)
    rasterize_boxes([torch.zeros(1, 4)], [(8, 8)], [(2, 2)])
    assert len(calls) == (0 if HAS_CPU_OP else 1)


def test_cpp_without_kernel_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "AVAILABLE", {})
    with pytest.raises(RuntimeError, match="backend='cpp'"):
        rasterize_boxes([torch.zeros(1, 4)], [(8, 8)], [(2, 2)], backend="cpp")


# ------------------------------------------------------------------ registration, compile
@needs_op
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed,wrap", [(0, False), (1, True), (2, False), (3, True)])
def test_opcheck(seed, wrap, device):
    skip_without_kernel("cpp", device)
    args = [a.to(device) if torch.is_tensor(a) else a for a in packed_case(seed)] + [wrap]
    torch.library.opcheck(torch.ops.fgdkern.rasterize_boxes.default, args)


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile unavailable")
@pytest.mark.parametrize("backend,border", [("auto", "clip"), ("reference", "clip"),
                                            ("auto", "wrap"), ("reference", "wrap")])
def test_compile_fullgraph(backend, border):
    def masks_of(b0, b1):
        return rasterize_boxes([b0, b1], [(64, 48), (40, 64)], [(4, 3), (2, 2)], backend, border)

    gt, _, _ = random_case(2, 6)
    compiled = torch.compile(masks_of, fullgraph=True, backend="aot_eager")
    assert_masks_equal(compiled(*gt), masks_of(*gt))


@pytest.mark.cuda
def test_cuda_op_launches_its_four_passes():
    """What tests/launches.py counts for the op where it cannot run it: COMPILED_OPS."""
    from torch.profiler import ProfilerActivity, profile

    from tests.launches import COMPILED_OPS

    skip_without_kernel("cpp", "cuda")
    args = [a.cuda() if torch.is_tensor(a) else a for a in packed_case(0)]
    torch.ops.fgdkern.rasterize_boxes(*args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.ops.fgdkern.rasterize_boxes(*args)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "Memcpy" not in e.name and "Memset" not in e.name]
    assert len(kernels) == COMPILED_OPS["fgdkern::rasterize_boxes"], kernels
