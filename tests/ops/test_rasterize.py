"""fgdkern.rasterize_boxes (docs/fgd.md, "Masks from boxes"): every backend against a literal per-cell reading
of the spec, bit for bit; the C++ op against the PyTorch form; op registration;
torch.compile; bad input."""
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


def naive_masks(gt_bboxes, img_shapes, level_sizes):
    """docs/fgd.md "Masks from boxes" read literally: a loop per level, image, box and cell, numpy float32 scalars."""
    out = []
    for H, W in level_sizes:
        fg = np.zeros((len(gt_bboxes), H, W), np.float32)
        bg = np.zeros_like(fg)
        for n, (boxes, (h, w)) in enumerate(zip(gt_bboxes, img_shapes)):
            for x1, y1, x2, y2 in boxes.reshape(-1, 4).tolist():
                wmin = math.floor(F32(x1) / F32(w) * F32(W))
                wmax = math.ceil(F32(x2) / F32(w) * F32(W))
                hmin = math.floor(F32(y1) / F32(h) * F32(H))
                hmax = math.ceil(F32(y2) / F32(h) * F32(H))
                v = F32(1) / F32(hmax + 1 - hmin) / F32(wmax + 1 - wmin)
                for i in range(max(hmin, 0), min(hmax, H - 1) + 1):
                    for j in range(max(wmin, 0), min(wmax, W - 1) + 1):
                        fg[n, i, j] = max(fg[n, i, j], v)
            n_bg = int((fg[n] == 0).sum())
            if n_bg:
                bg[n][fg[n] == 0] = F32(1) / F32(n_bg)
        out.append((torch.from_numpy(fg), torch.from_numpy(bg)))
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
@pytest.mark.parametrize("N,seed,fractional", [(1, 0, False), (1, 1, True), (5, 2, False),
                                               (5, 3, True), (5, 4, False)])
def test_random_matches_naive(N, seed, fractional, backend):
    gt, shapes, sizes = random_case(N, seed, fractional)
    assert_masks_equal(rasterize_boxes(gt, shapes, sizes, backend), naive_masks(gt, shapes, sizes))


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
def test_op_equals_reference_bitwise():
    for seed in range(40):
        args = packed_case(seed)
        got, want = torch.ops.fgdkern.rasterize_boxes(*args), masks.rasterize_packed(*args)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), f"seed {seed}"


@needs_op
def test_op_equals_reference_on_extreme_coordinates():
    """Huge, infinite and NaN coordinates (the wrapper rejects the last two) saturate alike."""
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor([[-1e30, 2.0, 3.0, 1e30], [1e20, 1e20, 3e38, 3e38], [nan, 0, 8, 8],
                          [-inf, 1, inf, 9], [0, 0, nan, 9], [3.0, 4.0, 5.0, 6.0]])
    args = (boxes, torch.tensor([3, 3]), torch.tensor([[10.0, 20.0], [16.0, 16.0]]), [5, 7, 1, 1])
    got, want = torch.ops.fgdkern.rasterize_boxes(*args), masks.rasterize_packed(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_equals_cpu(backend):
    skip_without_kernel(backend, "cuda")
    for seed in range(10):
        gt, shapes, sizes = random_case(5, seed, fractional=seed % 2 == 1)
        want = rasterize_boxes(gt, shapes, sizes, backend)
        on_cuda = "fused" if backend == "cpp" else backend   # the compiled kernel of each device
        got = rasterize_boxes([b.cuda() for b in gt], shapes, sizes, on_cuda)
        assert_masks_equal(got, want)
    packed = torch.ops.fgdkern.rasterize_boxes if backend == "cpp" else masks.rasterize_packed
    for seed in range(20):
        args = packed_case(seed)
        want = packed(*args)
        got = packed(*[a.cuda() if torch.is_tensor(a) else a for a in args])
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want)), f"seed {seed}"


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
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opcheck(seed, device):
    skip_without_kernel("cpp", device)
    args = [a.to(device) if torch.is_tensor(a) else a for a in packed_case(seed)]
    torch.library.opcheck(torch.ops.fgdkern.rasterize_boxes.default, args)


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile unavailable")
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_compile_fullgraph(backend):
    def masks_of(b0, b1):
        return rasterize_boxes([b0, b1], [(64, 48), (40, 64)], [(4, 3), (2, 2)], backend)

    gt, _, _ = random_case(2, 6)
    compiled = torch.compile(masks_of, fullgraph=True, backend="aot_eager")
    assert_masks_equal(compiled(*gt), masks_of(*gt))


# ------------------------------------------------------------------ bad input
BOX = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
BAD = [
    (dict(gt_bboxes=BOX), TypeError, "gt_bboxes must be a list"),
    (dict(gt_bboxes=[[1, 2, 3, 4]]), TypeError, r"gt_bboxes\[0\] must be a torch.Tensor"),
    (dict(gt_bboxes=[BOX.bool()]), TypeError, r"gt_bboxes\[0\] must have a real dtype"),
    (dict(gt_bboxes=[BOX.cfloat()]), TypeError, r"gt_bboxes\[0\] must have a real dtype"),
    (dict(gt_bboxes=[BOX[:, :3]]), ValueError, r"gt_bboxes\[0\] must be \(K, 4\)"),
    (dict(gt_bboxes=[BOX[0]]), ValueError, r"gt_bboxes\[0\] must be \(K, 4\)"),
    (dict(gt_bboxes=[torch.zeros(0, 3)]), ValueError, r"gt_bboxes\[0\] must be \(K, 4\)"),
    (dict(gt_bboxes=[BOX * float("nan")]), ValueError, "gt_bboxes contains non-finite"),
    (dict(gt_bboxes=[BOX * float("inf")]), ValueError, "gt_bboxes contains non-finite"),
    (dict(gt_bboxes=[], img_shapes=[]), ValueError, r"gt_bboxes is an empty batch"),
    (dict(gt_bboxes=[BOX, BOX.to("meta")], img_shapes=[(8, 8)] * 2), ValueError,
     r"gt_bboxes\[1\] is on meta but gt_bboxes\[0\] is on cpu"),
    (dict(gt_bboxes=[BOX, BOX]), ValueError, "gt_bboxes has 2 images but img_shapes has 1"),
    (dict(img_shapes=[(8, 8), (8, 8)]), ValueError, "gt_bboxes has 1 images but img_shapes has 2"),
    (dict(img_shapes=8), TypeError, "img_shapes must be a list"),
    (dict(img_shapes=[(8, 8, 3)]), ValueError, r"img_shapes\[0\] must be a pair"),
    (dict(img_shapes=[8]), ValueError, r"img_shapes\[0\] must be a pair"),
    (dict(img_shapes=[("8", "8")]), TypeError, r"img_shapes\[0\] must hold real numbers"),
    (dict(img_shapes=[(True, 8)]), TypeError, r"img_shapes\[0\] must hold real numbers"),
    (dict(img_shapes=torch.ones(1, 3)), ValueError, r"img_shapes must be \(N, 2\)"),
    (dict(img_shapes=torch.ones(1, 2, dtype=torch.bool)), TypeError, "img_shapes must have a real"),
    (dict(img_shapes=[(0, 8)]), ValueError, "img_shapes must be positive and finite"),
    (dict(img_shapes=[(8, -8)]), ValueError, "img_shapes must be positive and finite"),
    (dict(img_shapes=[(8, float("inf"))]), ValueError, "img_shapes must be positive and finite"),
    (dict(img_shapes=[(float("nan"), 8)]), ValueError, "img_shapes must be positive and finite"),
    (dict(img_shapes=torch.tensor([[8.0, 0.0]])), ValueError, "img_shapes must be positive"),
    (dict(level_sizes=(4, 4)), ValueError, r"level_sizes\[0\] must be a pair"),
    (dict(level_sizes=4), TypeError, "level_sizes must be a list"),
    (dict(level_sizes=[(0, 4)]), ValueError, r"level_sizes\[0\] must be a pair \(H, W\) of pos"),
    (dict(level_sizes=[(4, 4), (4.0, 4)]), ValueError, r"level_sizes\[1\] must be a pair"),
    (dict(level_sizes=[(4, True)]), ValueError, r"level_sizes\[0\] must be a pair"),
    (dict(level_sizes=[(4, 4, 4)]), ValueError, r"level_sizes\[0\] must be a pair"),
    (dict(backend="triton"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_bad_input(kwargs, exc, match, backend):
    args = dict(gt_bboxes=[BOX], img_shapes=[(8, 8)], level_sizes=[(4, 4)], backend=backend)
    with pytest.raises(exc, match=match):
        rasterize_boxes(**{**args, **kwargs})


@needs_op
def test_op_checks_its_inputs():
    counts, shapes = torch.tensor([1]), torch.tensor([[8.0, 8.0]])
    with pytest.raises(RuntimeError, match="boxes must be"):
        torch.ops.fgdkern.rasterize_boxes(BOX.double(), counts, shapes, [4, 4])
    with pytest.raises(RuntimeError, match="counts sum to 2"):
        torch.ops.fgdkern.rasterize_boxes(BOX, torch.tensor([2]), shapes, [4, 4])
    with pytest.raises(RuntimeError, match="level_sizes must be"):
        torch.ops.fgdkern.rasterize_boxes(BOX, counts, shapes, [4, 4, 4])
    with pytest.raises(RuntimeError, match="img_shapes must be"):
        torch.ops.fgdkern.rasterize_boxes(BOX, counts, shapes.repeat(2, 1), [4, 4])
