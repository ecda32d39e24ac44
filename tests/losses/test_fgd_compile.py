"""torch.compile of FGD as users run it: the default module (backend="auto") and a whole
training step (backbone + loss) under fullgraph=True with the default Inductor backend,
no graph break, and the eager loss and gradients."""
import functools

import pytest
import torch
from torch import nn

from fgdkern import MultiLevelFGDLoss
from tests.harness import assert_exact, elements, float64_copy
from tests.helpers import random_boxes, randomize

IMG = (32, 48)


class TinyFPN(nn.Module):
    """Two levels of features from an image, as a detector's neck gives them."""

    def __init__(self, channels: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, channels, 3, stride=4, padding=1)
        self.c2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        p3 = self.c1(x).relu()
        return {"p3": p3, "p4": self.c2(p3)}


def training_step(student, teacher, fgd):
    def step(images, boxes, shapes):
        feats_S = student(images)
        with torch.no_grad():
            feats_T = teacher(images)
        return fgd(feats_S, feats_T, boxes, shapes)
    return step


def setup(Cs=6, Ct=8, backend="auto"):
    student, teacher = TinyFPN(Cs, 0), TinyFPN(Ct, 1)
    fgd = randomize(MultiLevelFGDLoss(2, Cs, Ct, backend=backend))   # "auto": the default
    images = torch.randn(2, 3, *IMG)
    return student, teacher, fgd, (images, random_boxes(2, IMG, seed=3, empty_images=()),
                                   [IMG] * 2)


def test_default_module_has_no_graph_break():
    student, teacher, fgd, (images, boxes, shapes) = setup()
    feats_S, feats_T = student(images), teacher(images)
    explained = torch._dynamo.explain(fgd)(feats_S, feats_T, boxes, shapes)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def grads_of(loss, modules):
    params = [p for m in modules for p in m.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("backend,one_shape", [("auto", False), ("auto", True),
                                               ("torch", False)])
def test_training_step_compiles_to_the_eager_numbers(backend, one_shape):
    """Backbone + FGD compiled: one graph, eager loss and grads; with the default backend,
    and with "torch", whose small math's backward is a function transform of its terms."""
    student, teacher, fgd, (images, boxes, shapes) = setup(backend=backend)
    if one_shape:
        shapes = torch.Size(IMG)   # images.tensors.shape[-2:] of a padded batch
    step = training_step(student, teacher, fgd)
    explained = torch._dynamo.explain(step)(images, boxes, shapes)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    want = step(images, boxes, shapes)
    want_g = grads_of(want, [student, fgd])
    got = torch.compile(step, fullgraph=True)(images, boxes, shapes)
    got_g = grads_of(got, [student, fgd])
    # Inductor's kernels add in their own order (and vectorise for the CPU at hand): as
    # exact as eager, against the same step in float64 (docs/kernels.md, "How exactness
    # is tested"), the parameters' gradients on their common scale.
    truth = functools.cache(lambda: float64_step(student, teacher, fgd, images, boxes, shapes))
    n = images.numel() + elements(student(images))
    assert_exact("loss", got, want, lambda: truth()[0], n)
    scale = max(float(b.abs().max()) for b in want_g if b is not None)
    for k, (a, b) in enumerate(zip(got_g, want_g)):
        assert_exact(f"gradient {k}", a, b, lambda k=k: truth()[1][k], n, scale=scale)


def float64_step(student, teacher, fgd, images, boxes, shapes):
    """The step's loss and gradients in float64, eager, on the reference backend."""
    s, t, f = (float64_copy(m) for m in (student, teacher, fgd))
    loss = training_step(s, t, f)(images.double(), boxes, shapes)
    return loss, grads_of(loss, [s, f])
