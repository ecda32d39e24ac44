"""fgdkern.rasterize_boxes on bad input (docs/fgd.md, "Masks from boxes"): a TypeError or
ValueError naming the argument, from every backend; the compiled op's own checks, on CPU
and on the device."""
import subprocess
import sys

import pytest
import torch

from fgdkern.ops.rasterize import rasterize_boxes
from tests.ops.test_rasterize import BACKENDS, needs_op, skip_without_kernel

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
    (dict(border="Wrap"), ValueError, r"border must be one of \('clip', 'wrap'\), got 'Wrap'"),
    (dict(border=None), ValueError, "border must be one of"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_bad_input(kwargs, exc, match, backend):
    args = dict(gt_bboxes=[BOX], img_shapes=[(8, 8)], level_sizes=[(4, 4)], backend=backend)
    with pytest.raises(exc, match=match):
        rasterize_boxes(**{**args, **kwargs})


@needs_op
def test_op_checks_its_inputs():
    op, shapes = torch.ops.fgdkern.rasterize_boxes, torch.tensor([[8.0, 8.0]])
    for boxes, counts, sizes, match in [
            (BOX.double(), [1], [4, 4], "boxes must be"), (BOX, [1], [4, 4, 4], "level_sizes must"),
            (BOX, [2], [4, 4], "sum to more than the 1 rows"), (BOX, [0], [4, 4], "sum to 0 but"),
            (BOX, [-1, 2], [4, 4], "counts must be non-negative, got -1"),
            (BOX, [2**62] * 3 + [2**62 + 1], [4, 4], "sum to more than")]:  # 2^64 + 1 wraps to 1
        with pytest.raises(RuntimeError, match=match):
            op(boxes, torch.tensor(counts), shapes.expand(len(counts), 2), sizes)
    with pytest.raises(RuntimeError, match="img_shapes must be"):
        op(BOX, torch.tensor([1]), shapes.repeat(2, 1), [4, 4])


@pytest.mark.cuda
def test_cuda_op_checks_counts_on_the_device():
    """Negative counts stop the CUDA kernel with a device-side assertion, in a child process
    (the assertion leaves the CUDA context of its process unusable)."""
    skip_without_kernel("cpp", "cuda")
    code = ("import torch, fgdkern; o = dict(device='cuda'); torch.ops.fgdkern.rasterize_boxes("
            "torch.ones(3, 4, **o), torch.tensor([5, -2], **o), torch.full((2, 2), 8.0, **o), "
            "[4, 4]); torch.cuda.synchronize()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0 and "counts must be non-negative" in run.stdout + run.stderr
